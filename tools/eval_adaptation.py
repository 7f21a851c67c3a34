#!/usr/bin/env python
"""Choose few-shot adaptation settings without touching the test split: adapted pipelines scored on a laboratory's
labelled cells that were not used to adapt, and on what adaptation can make a network forget (val splits only).

  python tools/sample_labels.py runs/cells/bccd/labels.csv --per-class 20 --splits train val \\
      --out runs/fewshot/bccd/labels.csv
  python tools/adapt_classifier.py --labels runs/fewshot/bccd/labels.csv --seed 0 --out runs/fewshot/bccd/a_s0
  python tools/eval_adaptation.py --configs runs/fewshot/bccd/a_s0/pipeline.yaml ... \\
      --cells runs/cells/bccd/labels.csv --splits train val --exclude runs/fewshot/bccd/labels.csv \\
      --out out/eval/adaptation

Columns (every cell through the config's classifier cascade, as in a run; PBC and lmu_aml cells reframed as
``infer_field --cells`` frames them):
- ``lab right`` / ``lab mean class``: the laboratory's cells of ``--splits`` in ``--cells`` (a labels.csv with
  ``path,label,split``, as ``tools/prepare_cells.py`` writes it; rows without a label left out) that are not in
  ``--exclude`` (the adaptation CSV): right when the cell's verdict in the label's taxonomy (pbc8 for its class
  names, else wang11) is the label.
- ``pbc8 PBC val``: pbc8 accuracy on ``--pbc-cells`` PBC val cells (a fixed draw).
- ``LMU val blast recall`` / ``LMU val neut->blast``: lmu_aml val blasts called blast (wang11), other cells called
  blast: a laboratory that labels only normal cells can teach the network to forget blasts.
Writes OUT/adaptation.json and OUT/adaptation.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", required=True, help="pipeline configs to score (adapted pipeline.yaml)")
    ap.add_argument("--cells", required=True, help="the laboratory's labelled cells: labels.csv (path,label,split)")
    ap.add_argument("--splits", nargs="+", default=["train", "val"], help="rows of --cells to score (by split)")
    ap.add_argument("--exclude", nargs="*", default=[], help="labels.csv files of the cells used to adapt: left out")
    ap.add_argument("--pbc-cells", type=int, default=800, help="PBC val cells for pbc8 (a fixed draw; 0: none)")
    ap.add_argument("--out", required=True, help="folder for adaptation.json and adaptation.md")
    args = ap.parse_args(argv)

    try:
        lab = lab_cells(Path(args.cells), args.splits, [Path(p) for p in args.exclude])
    except (OSError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not lab:
        print(f"error: no labelled cells of splits {args.splits} left in {args.cells}", file=sys.stderr)
        return 2

    import random

    from classification.data import load_samples
    from core.io import read_image
    from pipelines.pipeline import Pipeline, load_pipeline_config

    pbc = load_samples("pbc8", "val")
    pbc = random.Random(0).sample(pbc, min(args.pbc_cells, len(pbc))) if args.pbc_cells else []
    lmu = load_samples("wang11", "val", ["lmu_aml"])
    sets = {"lab": lab, "pbc": pbc, "lmu": lmu}
    images = {k: [read_image(p) for p, _ in v] for k, v in sets.items()}
    print("cells: " + ", ".join(f"{k} {len(v)}" for k, v in sets.items()), flush=True)
    rows = {}
    for path in args.configs:
        pipe = Pipeline(load_pipeline_config(path), log=lambda m: None)
        out = {}
        for name, crops in images.items():
            if name != "lab" and pipe.cfg["cells_reframe"]:
                crops = [c for _, _, c in pipe.reframe_cells(crops)]
            res = []
            for i in range(0, len(crops), 256):
                res += pipe.classify(crops[i:i + 256])[0]
            out[name] = res
        rows[path] = score(sets, out)
        print(f"{path}: " + json.dumps(rows[path]), flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "adaptation.json").write_text(json.dumps({"cells": args.cells, "splits": args.splits,
                                                                "exclude": args.exclude,
                                                                "n": {k: len(v) for k, v in sets.items()},
                                                                "rows": rows}, indent=1))
    md = table(rows)
    (Path(args.out) / "adaptation.md").write_text(md + "\n")
    print(md)
    return 0


def lab_cells(labels_csv: Path, splits: list[str], exclude: list[Path]) -> list[tuple[Path, str]]:
    """``(image path, label)`` of the labelled rows of ``labels_csv`` in ``splits`` (in that order) whose image is
    not listed in any ``exclude`` CSV (paths compared resolved)."""
    from classification.data import load_label_csv

    used = {p.resolve() for ex in exclude for p, _ in load_label_csv(ex)}
    return [(p.resolve(), lab) for split in splits for p, lab in load_label_csv(labels_csv, split)
            if p.resolve() not in used]


def score(sets: dict, out: dict) -> dict:
    """The table's figures from ``Pipeline.classify`` results per set."""
    import numpy as np

    from classification.metrics import mean_class_of_labels
    from classification.taxonomies import TAXONOMIES

    def verdict(r, task):
        return r[2][task].label if task in r[2] else None

    truth = [t for _, t in sets["lab"]]
    task = {t: "pbc8" if t in TAXONOMIES["pbc8"] else "wang11" for t in truth}  # the label's taxonomy, pbc8 first
    right = [verdict(r, task[t]) == t for t, r in zip(truth, out["lab"])]
    res = {"lab_acc": round(float(np.mean(right)), 4),
           "lab_mca": mean_class_of_labels(truth, [t if ok else "" for t, ok in zip(truth, right)])}
    if sets["pbc"]:
        res["pbc8_pbc_val_acc"] = round(float(np.mean([verdict(r, "pbc8") == t for (_, t), r in
                                                       zip(sets["pbc"], out["pbc"])])), 4)
    lmu = [(t, verdict(r, "wang11")) for (_, t), r in zip(sets["lmu"], out["lmu"])]
    res["lmu_val_blast_recall"] = round(float(np.mean([p == "blast" for t, p in lmu if t == "blast"])), 4)
    res["lmu_val_other_called_blast"] = round(float(np.mean([p == "blast" for t, p in lmu if t != "blast"])), 4)
    return res


def table(rows: dict) -> str:
    head = "| config | lab right (mean class) | pbc8 PBC val | LMU val blast recall | LMU val neut->blast |"
    lines = [head, "|---|---|---|---|---|"]
    for path, r in rows.items():
        pbc = r.get("pbc8_pbc_val_acc", float("nan"))
        lines.append(f"| {path} | {r['lab_acc']:.3f} ({r['lab_mca']:.3f}) | {pbc:.4f} | "
                     f"{r['lmu_val_blast_recall']:.3f} | {r['lmu_val_other_called_blast']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
