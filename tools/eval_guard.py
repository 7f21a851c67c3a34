#!/usr/bin/env python
"""The domain-shift guard, measured per laboratory: how well the familiarity score (``ood``) and the smear-level
``domain_shift`` flag separate each laboratory's cells from the training laboratories' held-out cells, and whether
the rule "a smear's differential is right (>= 85% of its cells) or flagged" holds.

  python tools/prepare_cells.py --dataset bccd --out runs/cells/bccd                 # once (as for eval_labs)
  python tools/prepare_cells.py --dataset txl_pbc --out runs/cells/txl_pbc
  python tools/prepare_cells.py --dataset txl_pbc --out runs/cells/txl_pbc_weak --weak-label mature_leukocyte
  python tools/eval_guard.py --out out/eval/guard

Cell sets, every cell through the config's classifier cascade as in a run: PBC test and lmu_aml test (held-out
cells of the training laboratories: the reference, never fitted on), BCCD test and TXL-PBC test fields' detected
leukocytes, and the leukocytes of ``--synthetic`` rendered demo fields (cartoon cells: the guard must fire).
Pseudo-smears: ``--draws`` random draws of ``--smear-size`` cells of one set (without replacement), each judged by
the pipeline's own ``domain_shift`` rule (``pipelines.differential``: median familiarity, unfamiliar share, mean
top-class probability) with the config's thresholds.

Rows:
- ``shipped``: the score as shipped. BCCD and TXL-PBC train + val cells are among its fitted cells (and the
  network trained on them), so their test cells are familiar by design.
- ``without LAB``: the score refitted on the same cells minus that laboratory's (``--weights``: the PyTorch
  checkpoint of the config's classifier), as if LAB were a new user's laboratory. The network still learned from
  LAB's cells, so this is the score's half of an unseen laboratory, not the whole of it.

Columns: cells, share of cells above the unfamiliar threshold, cell AUROC against the reference cells (1 = every
cell of the set scores above every reference cell), share of pseudo-smears flagged, smear AUROC (median ``ood`` of
the set's pseudo-smears against the reference's), and for labelled sets the share of pseudo-smears whose counted
cells are >= 85% right and the share that keeps the rule (right or flagged). Writes OUT/guard.json and OUT/guard.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

REFERENCE = ("pbc_test", "lmu_test")
SWEEPS = {"domain_shift_median_ood": (1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.8, 2.0, 2.5, 3.0),
          "domain_shift_min_confidence": (0.0, 0.8, 0.82, 0.84, 0.85, 0.86, 0.88, 0.9)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "pipeline" / "default.yaml"), help="pipeline config")
    ap.add_argument("--weights", default=str(ROOT / "classification" / "weights" / "fine13_lite0_192.pt"),
                    help="PyTorch checkpoint of the config's classifier (features for the leave-one-lab-out refits)")
    ap.add_argument("--out", required=True, help="folder for guard.json and guard.md")
    ap.add_argument("--cells", default=str(ROOT / "runs" / "cells"), help="tools/prepare_cells.py outputs")
    ap.add_argument("--smear-size", type=int, default=20, help="cells per pseudo-smear (default 20)")
    ap.add_argument("--draws", type=int, default=500, help="pseudo-smears per set (default 500)")
    ap.add_argument("--synthetic", type=int, default=24, help="rendered demo fields (default 24)")
    ap.add_argument("--limit", type=int, default=0, help="at most N cells per set (smoke runs)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import numpy as np

    from classification.classifier import Classifier
    from classification.data import missing_cell_sets
    from classification.familiarity import fit_cells, fit_familiarity
    from classification.ood import ood_scores
    from pipelines.pipeline import Pipeline, load_pipeline_config

    cells = Path(args.cells)
    missing = missing_cell_sets(cells)
    if missing:
        print(f"error: {missing}", file=sys.stderr)
        return 2
    if args.smear_size < 2 or args.draws < 1:
        print("error: --smear-size must be >= 2 and --draws >= 1", file=sys.stderr)
        return 2
    cfg = load_pipeline_config(args.config)
    pipe = Pipeline(cfg, log=lambda m: None)
    stage = pipe.stages[0]
    if not stage.classifier.has_ood:
        print(f"error: {args.config}: its first classifier has no familiarity score (tools/fit_familiarity.py)",
              file=sys.stderr)
        return 2
    sets = cell_sets(cells, cfg, args.synthetic, args.limit)
    print("cells: " + ", ".join(f"{k} {len(v['crops'])}" for k, v in sets.items()), flush=True)
    for s in sets.values():
        s["verdicts"] = []
        for i in range(0, len(s["crops"]), 256):
            s["verdicts"] += pipe.classify(s["crops"][i:i + 256])[0]
        s["score"] = np.array([np.nan if v.score is None else v.score for v in s["verdicts"]], float)
    shipped = {k: {"ood": np.array([v.ood for v in s["verdicts"]], float),
                   "threshold": stage.ood_threshold} for k, s in sets.items()}
    rows = {"shipped": judge(sets, shipped, cfg["differential"], args)}
    print(json.dumps(rows["shipped"]), flush=True)

    clf = Classifier(args.weights)
    fit = fit_cells(clf)
    fit_feats, fit_probs = clf.features_prepared(fit["x"], with_probs=True)
    feats = {k: clf.features(s["crops"]) for k, s in sets.items()}
    for lab, name in (("bccd", "bccd_test"), ("txl_pbc", "txl_test")):
        keep = fit["groups"] != lab
        if keep.all():
            continue
        ood = fit_familiarity(clf, fit_feats[keep], fit_probs[keep], fit["y"][keep], fit["groups"][keep])
        scores = {k: {"ood": ood_scores(f, ood), "threshold": ood["threshold"]} for k, f in feats.items()}
        rows[f"without {lab}"] = judge({k: sets[k] for k in (*REFERENCE, name)}, scores, cfg["differential"], args)
        print(json.dumps(rows[f"without {lab}"]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"config": args.config, "smear_size": args.smear_size, "draws": args.draws,
              "n": {k: len(s["crops"]) for k, s in sets.items()}, "rows": rows}
    (out / "guard.json").write_text(json.dumps(report, indent=1))
    md = table(rows, args.smear_size)
    (out / "guard.md").write_text(md + "\n")
    print(md)
    return 0


def cell_sets(cells: Path, cfg: dict, n_synthetic: int, limit: int) -> dict:
    """name -> {"crops": RGB uint8 crops, "truth": per cell (label to compare, task) or None}."""
    import random

    from classification.data import load_samples
    from core.io import read_image
    from pipelines.crop import background_colour, crop_square
    from pipelines.synthetic import render_field

    picked = {"pbc_test": [(p, (lab, "pbc8")) for p, lab in load_samples("pbc8", "test")],
              "lmu_test": [(p, (lab, "wang11")) for p, lab in load_samples("wang11", "test", ["lmu_aml"])]}
    for name, lab in (("bccd_test", "bccd"), ("txl_test", "txl_pbc")):
        with open(cells / lab / "labels.csv", newline="") as f:
            picked[name] = [(cells / lab / r["path"], (r["label"], "subtype") if r["label"] else None)
                            for r in csv.DictReader(f) if r["split"] == "test"]
    if limit:
        picked = {k: random.Random(0).sample(v, min(limit, len(v))) for k, v in picked.items()}
    sets = {k: {"crops": [read_image(p) for p, _ in v], "truth": [t for _, t in v]} for k, v in picked.items()}
    crops = []
    for seed in range(n_synthetic):
        f = render_field(1000 + seed)
        fill = background_colour(f.image)
        crops += [crop_square(f.image, b, cfg["crop_margin"], fill) for b, lab in zip(f.boxes, f.labels)
                  if lab == "WBC"]
    if crops:
        sets["synthetic"] = {"crops": crops, "truth": [None] * len(crops)}
    return sets


def right(verdict, truth) -> bool | None:
    """Whether a counted cell's verdict matches its truth; None when the cell has no truth or is not counted."""
    from classification.taxonomies import UNFAMILIAR, UNIDENTIFIED

    if truth is None or verdict.label in (UNIDENTIFIED, UNFAMILIAR, None):
        return None
    label, task = truth
    if task == "subtype":
        return "pbc8" in verdict.classes and verdict.classes["pbc8"].label == label  # pbc8 names the 5 subtypes
    return task in verdict.classes and verdict.classes[task].label == label


def judge(sets: dict, scores: dict, diff_cfg: dict, args) -> dict:
    """Per set: cells, unfamiliar share, cell AUROC, flagged share of pseudo-smears, smear AUROC, rule figures."""
    import numpy as np

    from pipelines.differential import SmearTally, domain_shift
    from pipelines.threshold import roc

    rng = np.random.default_rng(args.seed)
    ref = np.concatenate([scores[k]["ood"] for k in REFERENCE if k in scores])
    smears = {}
    for k, s in sets.items():
        ood, thr = scores[k]["ood"], scores[k]["threshold"]
        n = min(args.smear_size, len(ood))
        med, flagged, acc, tallies = [], [], [], []
        for _ in range(args.draws):
            idx = rng.choice(len(ood), n, replace=False)
            unfamiliar = ood[idx] > thr
            sc = s["score"][idx]
            sc = sc[~np.isnan(sc)]
            tally = SmearTally("pseudo", ood=[float(v) for v in ood[idx]], unfamiliar=int(unfamiliar.sum()),
                               score_sum=float(sc.sum()), scored=len(sc))
            tallies.append(tally)
            flagged.append(domain_shift(tally, diff_cfg) is not None)
            med.append(float(np.median(ood[idx])))
            ok = [right(s["verdicts"][i], s["truth"][i]) for j, i in enumerate(idx) if not unfamiliar[j]]
            ok = [x for x in ok if x is not None]
            acc.append(float(np.mean(ok)) if ok else None)
        smears[k] = {"median": np.array(med), "flagged": np.array(flagged), "acc": acc, "n": n, "tallies": tallies}
    res = {}
    for k in sets:
        ood, thr, sm = scores[k]["ood"], scores[k]["threshold"], smears[k]
        r = {"cells": int(len(ood)), "smear_size": sm["n"], "unfamiliar": round(float(np.mean(ood > thr)), 4),
             "flagged": round(float(sm["flagged"].mean()), 4)}
        if k not in REFERENCE:
            r["cell_auroc"] = round(roc(np.concatenate([ood, ref]),
                                        np.r_[np.ones(len(ood)), np.zeros(len(ref))])["auc"], 4)
            ref_med = np.concatenate([smears[x]["median"] for x in REFERENCE if x in smears])
            r["smear_auroc"] = round(roc(np.concatenate([sm["median"], ref_med]),
                                         np.r_[np.ones(len(sm["median"])), np.zeros(len(ref_med))])["auc"], 4)
        scored = [(a, f) for a, f in zip(sm["acc"], sm["flagged"]) if a is not None]
        if scored:
            r["right_85"] = round(float(np.mean([a >= 0.85 for a, _ in scored])), 4)
            r["rule_kept"] = round(float(np.mean([a >= 0.85 or f for a, f in scored])), 4)
        res[k] = r
    res["sweep"] = sweep(smears, diff_cfg)
    return res


def sweep(smears: dict, diff_cfg: dict) -> list[dict]:
    """The guard's operating points: for each threshold of ``SWEEPS`` (one key varied, the others as configured),
    the share of each set's pseudo-smears flagged and, for labelled sets, the rule kept."""
    import numpy as np

    from pipelines.differential import domain_shift

    out = []
    for key, t in ((k, t) for k, ts in SWEEPS.items() for t in ts):
        cfg = {**diff_cfg, key: t}
        row = {"key": key, "value": t}
        for k, sm in smears.items():
            flagged = [domain_shift(x, cfg) is not None for x in sm["tallies"]]
            row[f"{k}_flagged"] = round(float(np.mean(flagged)), 4)
            scored = [a >= 0.85 or f for a, f in zip(sm["acc"], flagged) if a is not None]
            if scored:
                row[f"{k}_rule_kept"] = round(float(np.mean(scored)), 4)
        out.append(row)
    return out


def table(rows: dict, smear_size: int) -> str:
    head = (f"| score | cell set | cells | unfamiliar cells | cell AUROC | pseudo-smears of {smear_size} flagged | "
            "smear AUROC | smears >= 85% right | rule kept (right or flagged) |")
    lines = [head, "|" + "---|" * 9]
    fmt = lambda v: "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))  # noqa: E731
    for row, sets in rows.items():
        for k, r in sets.items():
            if k == "sweep":
                continue
            lines.append(f"| {row} | {k} | {r['cells']} | {fmt(r['unfamiliar'])} | {fmt(r.get('cell_auroc'))} | "
                         f"{fmt(r['flagged'])} | {fmt(r.get('smear_auroc'))} | {fmt(r.get('right_85'))} | "
                         f"{fmt(r.get('rule_kept'))} |")
    for row, sets in rows.items():
        names = [k for k in sets if k != "sweep"]
        for key in SWEEPS:
            lines += ["", f"Operating points ({row}): pseudo-smears flagged at each `{key}`, the other thresholds as "
                      "configured (rule kept where labelled)", "", f"| {key} | " + " | ".join(names) + " |",
                      "|" + "---|" * (len(names) + 1)]
            for p in (p for p in sets["sweep"] if p["key"] == key):
                cells = [f"{p[k + '_flagged']:.3f}" + (f" ({p[k + '_rule_kept']:.3f})" if k + "_rule_kept" in p
                                                      else "") for k in names]
                lines.append(f"| {p['value']:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
