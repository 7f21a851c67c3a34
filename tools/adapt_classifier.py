#!/usr/bin/env python
"""Adapt a classifier to your laboratory's cells without labels: re-estimate its batch-norm statistics on your crops.

  python tools/infer_field.py CAPTURES --out out/mylab                     # detect your leukocytes once
  python tools/adapt_classifier.py --weights classification/weights/pbc8_shufflenet192.pt \
      --run out/mylab --out runs/adapted/pbc8_mylab.pt
  python tools/export_onnx.py --classifier runs/adapted/pbc8_mylab.pt --out runs/adapted/pbc8_mylab.onnx
  python tools/adapt_classifier.py --weights ... --cells mycells/ --out ...   # pre-cropped cell images instead

Networks trained on one laboratory's images (here PBC's CellaVision captures) misread other cameras and stains:
their batch-norm layers normalize with the training images' feature statistics. This tool runs the network over
your unlabelled leukocyte crops (the WBC detections of an infer_field run, framed as the pipeline frames them, or
pre-cropped cells; each also rotated and mirrored) and replaces those statistics by
``alpha * yours + (1 - alpha) * the training lab's`` (AdaBN, Li et al. 2016; alpha 0 = unchanged, 1 = yours only).
Nothing else changes: weights, classes, temperature (not refitted: check calibration on labelled cells of yours).
The checkpoint records what it was adapted on (``adaptation``). Name it (or its ONNX export) as a pipeline
stage's ``weights``.

Use crops of one laboratory's usual mix of cells (hundreds, not a few): the statistics are those of the crops you
give; crops of a single cell type or of a different lab skew them. What it did on BCCD and Raabin-WBC smears is in
the README ("Blasts: morphology or laboratory? Other laboratories' cells?"): measure on labelled cells of your own
before relying on it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def run_crops(run: Path, labels: set[str], margin: float, log=print) -> list:
    """Crops of the cells labelled ``labels`` in an infer_field run (``run/fields.jsonl``), framed by
    ``crop_square`` with ``margin``; fields whose image cannot be read are skipped with a note."""
    from pipelines.crop import background_colour, crop_square
    from pipelines.io import ImageReadError, read_image

    crops, unreadable = [], 0
    with open(run / "fields.jsonl") as f:
        for line in f:
            if not line.strip():
                continue
            rec = json.loads(line)
            boxes = [c["box"] for c in rec.get("cells", []) if c.get("det_label") in labels]
            if not boxes:
                continue
            try:
                img = read_image(rec["path"])
            except ImageReadError as e:
                unreadable += 1
                log(f"note: {rec['path']}: {e}")
                continue
            fill = background_colour(img)
            crops += [crop_square(img, b, margin, fill) for b in boxes]
    if unreadable:
        log(f"note: {unreadable} field(s) could not be read again and were skipped")
    return crops


def cell_crops(inputs: list[str], log=print) -> list:
    """Pre-cropped cell images (files, folders, globs as infer_field takes them)."""
    from pipelines.inputs import expand_inputs
    from pipelines.io import ImageReadError, read_image

    fields, notes = expand_inputs(inputs)
    for n in notes:
        log(f"note: {n}")
    crops = []
    for fi in fields:
        try:
            crops.append(read_image(fi.path))
        except ImageReadError as e:
            log(f"note: {fi.path}: {e}")
    return crops


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", required=True, help="classifier checkpoint (.pt) to adapt")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="an infer_field output folder (fields.jsonl) on your captures")
    src.add_argument("--cells", nargs="+", help="pre-cropped cell images: files, folders or globs")
    ap.add_argument("--out", required=True, help="adapted checkpoint (.pt) to write; must differ from --weights")
    ap.add_argument("--alpha", type=float, default=0.5, help="share of your crops' statistics (0-1, default 0.5)")
    ap.add_argument("--labels", nargs="+", default=["WBC"], help="--run: detector labels to crop (default WBC)")
    ap.add_argument("--crop-margin", type=float, default=0.75, help="--run: crop margin (the pipeline's default)")
    ap.add_argument("--min-crops", type=int, default=100, help="refuse fewer crops than this (default 100)")
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args(argv)

    def err(msg: str) -> int:
        print(f"error: {msg}", file=sys.stderr)
        return 2

    weights, out = Path(args.weights), Path(args.out)
    if not weights.is_file():
        return err(f"weights not found: {weights}")
    if weights.suffix.lower() == ".onnx":
        return err(f"{weights}: give the .pt checkpoint (export the adapted one with tools/export_onnx.py)")
    if out.resolve() == weights.resolve():
        return err("--out must differ from --weights (the original stays as it is)")
    if not 0.0 <= args.alpha <= 1.0:
        return err(f"--alpha must be in [0, 1], not {args.alpha}")
    if args.run and not (Path(args.run) / "fields.jsonl").is_file():
        return err(f"{args.run}: no fields.jsonl (run tools/infer_field.py on your captures first)")

    import torch

    from classification.classifier import Classifier
    from classification.models import adapt_batchnorm

    clf = Classifier(weights, batch=args.batch)
    crops = (run_crops(Path(args.run), set(args.labels), args.crop_margin) if args.run
             else cell_crops(args.cells))
    if len(crops) < args.min_crops:
        return err(f"{len(crops)} crops found, fewer than --min-crops {args.min_crops}: statistics from so few cells "
                   "would not describe your laboratory")
    x = clf.preprocess(crops)  # resized and stain-normalized as at inference
    try:
        shift = adapt_batchnorm(clf.model, x, clf.meta["mean"], clf.meta["std"], args.alpha, args.batch)
    except ValueError as e:
        return err(f"{weights}: {e}")
    ck = {**clf.meta, "state_dict": {k: v.detach().cpu() for k, v in clf.model.state_dict().items()}}
    ck["adaptation"] = {"method": "batch-norm statistics (AdaBN)", "alpha": args.alpha, "crops": len(crops),
                        "views_per_crop": 4, "source": str(args.run or " ".join(args.cells)),
                        "from_weights": weights.name, "date": datetime.date.today().isoformat()}
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ck, out)
    print(json.dumps({"out": str(out), "crops": len(crops), "alpha": args.alpha, **shift}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
