#!/usr/bin/env python
"""Evaluate a classifier task on a split through the real pipeline (`infer_field.py --cells`): accuracy, per-class
sensitivity / specificity / precision, confusion matrix, ECE and accuracy against coverage (the `unidentified` rule).

  python tools/eval_classifier.py --task pbc8 --split test --run out/eval_pbc8_test
  python tools/eval_classifier.py --task wang11 --split test --run out/eval_wang11_test
  python tools/eval_classifier.py --task wang11 --split test --run out/eval_wang11_test --by-source

If RUN/fields.jsonl does not exist, the split's cell images are written to RUN/manifest.csv and
tools/infer_field.py --cells is run on them with --config. Writes RUN/<task>_eval.json.
--by-source also reports per source dataset (pbc / lmu_aml): the check that blasts are recognized by morphology and
not by their laboratory (lmu_aml's segmented neutrophils must not be called blasts).
--scale S (0.1-1) simulates a lower magnification: every cell image is first downscaled by S (area interpolation,
written as PNG under RUN/scaled/), so a cell has S times the pixels across, as in a field taken at S times the
magnification:

  python tools/eval_classifier.py --task pbc8 --split test --run out/eval_pbc8_test_x0.5 --scale 0.5
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", required=True, help="pbc8 | wang11")
    ap.add_argument("--split", default="test")
    ap.add_argument("--run", required=True, help="infer_field --cells output folder (made if missing)")
    ap.add_argument("--config", default=str(ROOT / "configs" / "pipeline" / "default.yaml"), help="pipeline YAML")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--by-source", action="store_true", help="also report per source dataset")
    ap.add_argument("--scale", type=float, default=1.0, help="downscale every cell image by this first (0.1-1: a "
                                                             "lower magnification)")
    args = ap.parse_args(argv)
    if not 0.1 <= args.scale <= 1.0:
        ap.error(f"--scale must be in [0.1, 1], not {args.scale}")

    from classification.data import load_samples, source_of
    from classification.metrics import format_report, summarize
    from classification.taxonomies import check_task

    classes = check_task(args.task)
    samples = load_samples(args.task, args.split)
    run = Path(args.run)
    origin = {}  # downscaled copy the pipeline sees -> original image
    if args.scale < 1.0:
        samples, origin = scaled_copies(samples, args.scale, run / "scaled")
    if not (run / "fields.jsonl").exists():
        run.mkdir(parents=True, exist_ok=True)
        with open(run / "manifest.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "smear_id"])
            for p, _ in samples:
                w.writerow([str(p.resolve()), f"{args.task}_{args.split}"])
    from pipelines.cli import run_once
    from pipelines.results import read_records

    rc = run_once(run, ["--manifest", str(run / "manifest.csv"), "--cells", "--config", args.config,
                        "--device", args.device, "--batch", str(args.batch)])
    if rc:
        return rc
    truth = {str(p.resolve()): lab for p, lab in samples}
    probs, y, final, src = [], [], [], []
    for rec in read_records(run):
        if rec["path"] not in truth or rec["error"] or not rec["cells"]:
            continue
        c = rec["cells"][0]
        if args.task not in c["classes"]:
            continue
        probs.append([c["classes"][args.task]["probs"][k] for k in classes])
        y.append(classes.index(truth[rec["path"]]))
        final.append(c["label"])
        src.append(source_of(origin.get(rec["path"], rec["path"])) or "pbc")
    if not y:
        print(f"error: no {args.task} results for the {args.split} split in {run}", file=sys.stderr)
        return 2
    probs, y = np.asarray(probs, np.float64), np.asarray(y)
    m = summarize(probs, y, classes)
    m["missing"] = len(truth) - len(y)
    m["unidentified_share"] = round(float(np.mean([f == "unidentified" for f in final])), 4)
    out = {"task": args.task, "split": args.split, "scale": args.scale, "overall": m}
    scaled = f", cells downscaled x{args.scale:g}" if args.scale < 1.0 else ""
    print(f"== {args.task} {args.split} (through infer_field --cells{scaled}; {m['missing']} of {len(truth)} missing)")
    print(format_report(m))
    print(f"final label 'unidentified': {m['unidentified_share']:.2%} of cells")
    if args.by_source:
        out["by_source"] = {}
        for s in sorted(set(src)):
            idx = np.array([i for i, v in enumerate(src) if v == s])
            ms = summarize(probs[idx], y[idx], classes)
            out["by_source"][s] = ms
            print(f"\n== source {s}\n{format_report(ms)}")
    (run / f"{args.task}_eval.json").write_text(json.dumps(out, indent=1))
    return 0


def scaled_copies(samples: list[tuple[Path, str]], scale: float, out_dir: Path):
    """Downscaled PNG copies of the samples' images (made once; existing copies are reused). Returns the copies'
    samples and a map copy path -> original path."""
    import cv2

    from core.io import read_image, write_image

    out_dir.mkdir(parents=True, exist_ok=True)
    copies, origin = [], {}
    for i, (p, lab) in enumerate(samples):
        dst = (out_dir / f"{i:06d}_{p.stem}.png").resolve()
        if not dst.exists():
            im = read_image(p)
            h, w = im.shape[:2]
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            write_image(dst, cv2.resize(im, size, interpolation=cv2.INTER_AREA))
        copies.append((dst, lab))
        origin[str(dst)] = str(Path(p).resolve())
    return copies, origin


if __name__ == "__main__":
    sys.exit(main())
