#!/usr/bin/env python
"""Cross-laboratory check of the leukocyte classifiers on whole fields of another lab: BCCD's per-field WBC
subtypes (neutrophil, eosinophil, lymphocyte, monocyte, basophil) against the pipeline's verdict on the field's
most confident WBC detection. Fields with exactly one WBC box and one subtype only.

  python tools/eval_bccd_subtypes.py --split test --run out/bccd_test_subtypes

If RUN/fields.jsonl does not exist, tools/infer_field.py is run on the split's fields with --config first.
pbc8 labels are compared as they are; wang11's band/segmented neutrophils count as neutrophil.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SUBTYPES = ["neutrophil", "eosinophil", "lymphocyte", "monocyte", "basophil"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", default="test", help="BCCD split (train, val, test, trainval) or 'all'")
    ap.add_argument("--run", required=True)
    ap.add_argument("--config", default=str(ROOT / "configs" / "pipeline" / "default.yaml"))
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)

    import numpy as np

    from classification.metrics import format_report, summarize
    from classification.taxonomies import PARENT
    from detection.data import load_card

    card = load_card("bccd")
    root = card["root"]
    with open(root / "wbc_subtypes.csv", newline="") as f:
        sub = {r["image"]: r["category"].strip().lower() for r in csv.DictReader(f)
               if r["n_wbc_boxes"] == "1" and r["category"].strip().lower() in SUBTYPES}
    ids = sorted(sub) if args.split == "all" else \
        [i for i in (root / card["splits"][args.split]).read_text().split() if i in sub]
    run = Path(args.run)
    from pipelines.cli import run_once
    from pipelines.results import read_records

    rc = run_once(run, [str(root / "JPEGImages" / f"{i}.jpg") for i in ids] +
                  ["--config", args.config, "--device", args.device])
    if rc:
        return rc

    def subtype(lab: str) -> str:  # the BCCD subtype a class counts as: wang11's band / segmented are neutrophils
        lab = PARENT.get(lab, lab) if lab in ("band_neutrophil", "segmented_neutrophil") else lab
        return lab if lab in SUBTYPES else "other"

    res = {}
    recs = list(read_records(run))
    recs = {Path(r["path"]).stem: r for r in recs}
    for task in ("pbc8", "wang11"):
        probs, y, missed, outside = [], [], 0, Counter()
        for i in ids:
            wbc = [c for c in recs.get(i, {}).get("cells", []) if c["det_label"] == "WBC" and task in c["classes"]]
            if not wbc:
                missed += 1
                continue
            c = max(wbc, key=lambda c: c["det_score"])
            p = {s: 0.0 for s in SUBTYPES + ["other"]}
            for lab, v in c["classes"][task]["probs"].items():
                p[subtype(lab)] += v
            top = c["classes"][task]["label"]  # the finest top class, e.g. blast or platelet: not a BCCD subtype
            if subtype(top) == "other":
                outside[top] += 1
            probs.append([p[s] for s in SUBTYPES + ["other"]])
            y.append(SUBTYPES.index(sub[i]))
        if not y:
            continue
        m = summarize(np.asarray(probs), np.asarray(y), SUBTYPES + ["other"])
        m["fields_without_wbc"] = missed
        m["top_class_outside_subtypes"] = dict(outside.most_common())
        res[task] = m
        print(f"== {task} on BCCD {args.split} ({len(y)} fields, {missed} without a WBC detection)")
        print(format_report(m))
        print(f"top {task} class of the field's most confident WBC, where not a BCCD subtype: "
              f"{m['top_class_outside_subtypes'] or 'none'}")
    (run / "bccd_subtypes_eval.json").write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
