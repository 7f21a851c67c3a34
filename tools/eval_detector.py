#!/usr/bin/env python
"""Evaluate detection on a dataset card's split through the real pipeline output (AP50 per class, COCO mAP).

  python tools/eval_detector.py --dataset bccd --split test --run out/eval_bccd_test
  python tools/eval_detector.py --dataset txl_pbc --split test --run out/eval_txl --config configs/pipeline/default.yaml

If RUN/fields.jsonl does not exist, tools/infer_field.py is run first on the split's images with --config.
Writes RUN/detection_eval.json and prints per-class AP50 / AP and the means.
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
    ap.add_argument("--dataset", required=True, help="dataset card name (datasets/NAME.yaml) or path")
    ap.add_argument("--split", default="test")
    ap.add_argument("--run", required=True, help="infer_field output folder (made if missing)")
    ap.add_argument("--config", default=str(ROOT / "configs" / "pipeline" / "default.yaml"), help="pipeline YAML")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args(argv)

    from detection.data import load_card, read_split
    from detection.evaluate import coco_evaluate, predictions_from_jsonl

    card = load_card(args.dataset)
    gt = read_split(card, args.split)
    run = Path(args.run)
    from tools.infer_field import run_once

    rc = run_once(run, [str(r.path) for r in gt] + ["--config", args.config, "--device", args.device,
                                                    "--batch", str(args.batch)])
    if rc:
        return rc
    m = coco_evaluate(gt, predictions_from_jsonl(run / "fields.jsonl"), card["classes"])
    m.update({"dataset": card["name"], "split": args.split, "run": str(run)})
    (run / "detection_eval.json").write_text(json.dumps(m, indent=1))
    print(f"{card['name']} {args.split}: {m['fields']} fields, GT boxes {m['gt_boxes']}")
    for c, v in m["per_class"].items():
        print(f"  {c:10s} AP50 {v['AP50']}  AP50-95 {v['AP']}")
    print(f"  mAP50 {m['mAP50']}  mAP50-95 {m['mAP50_95']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
