#!/usr/bin/env python
"""Evaluate detection on a dataset card's split through the real pipeline output (AP50 per class, COCO mAP).

  python tools/eval_detector.py --dataset bccd --split test --run out/eval_bccd_test
  python tools/eval_detector.py --dataset txl_pbc --split test --run out/eval_txl --config configs/pipeline/default.yaml

  python tools/eval_detector.py --dataset bccd --split test --run out/eval_bccd_test --review datasets/bccd_review.yaml

If RUN/fields.jsonl does not exist, tools/infer_field.py is run first on the split's images with --config.
Writes RUN/detection_eval.json and prints per-class AP50 / AP and the means. --review also evaluates against the
dataset's labels corrected by an annotation review (objects the annotators missed added, cells cut by the image edge
and smudge cells ignored); both results are printed and written, the official labels' first.
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
    ap.add_argument("--review", help="annotation review YAML (datasets/*_review.yaml): also evaluate against the "
                                     "reviewed labels")
    args = ap.parse_args(argv)

    from detection.data import apply_review, load_card, load_review, read_split
    from detection.evaluate import coco_evaluate, predictions_from_records
    from pipelines.results import read_records
    from core.config import ConfigError

    card = load_card(args.dataset)
    gt = read_split(card, args.split)
    review = None
    if args.review:  # checked before inference: a bad review file costs nothing
        try:
            review = load_review(args.review)
            if review["dataset"] != card["name"]:
                raise ConfigError(f"{args.review} reviews dataset '{review['dataset']}', not '{card['name']}'")
            reviewed, changed = apply_review(gt, review)
        except (ConfigError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    run = Path(args.run)
    from pipelines.cli import run_once

    rc = run_once(run, [str(r.path) for r in gt] + ["--config", args.config, "--device", args.device,
                                                    "--batch", str(args.batch)])
    if rc:
        return rc
    preds = predictions_from_records(read_records(run))
    m = coco_evaluate(gt, preds, card["classes"])
    m.update({"dataset": card["name"], "split": args.split, "run": str(run)})
    print(f"{card['name']} {args.split}: {m['fields']} fields, GT boxes {m['gt_boxes']}")
    _print_ap(m)
    if review is not None:
        r = coco_evaluate(reviewed, preds, card["classes"])
        r.update({"review": str(args.review), "reviewed_classes": review["classes"], "fields_changed": changed})
        m["reviewed"] = r
        print(f"{card['name']} {args.split}, reviewed labels ({args.review}: {changed} fields changed, classes "
              f"{', '.join(review['classes'])}): GT boxes {r['gt_boxes']}, ignore regions "
              f"{r['ignore_regions']}")
        _print_ap(r)
    (run / "detection_eval.json").write_text(json.dumps(m, indent=1))
    return 0


def _print_ap(m: dict) -> None:
    for c, v in m["per_class"].items():
        print(f"  {c:10s} AP50 {v['AP50']}  AP50-95 {v['AP']}")
    print(f"  mAP50 {m['mAP50']}  mAP50-95 {m['mAP50_95']}")


if __name__ == "__main__":
    sys.exit(main())
