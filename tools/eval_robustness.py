#!/usr/bin/env python
"""How the detector holds up on fields that look like other laboratories': the split's images are re-made under
each shift (lower magnification, other stain, blur, heavy JPEG), written as JPEG like a camera would, run through
tools/infer_field.py and scored against the transformed ground truth (pycocotools AP50 per class, mAP).

  python tools/eval_robustness.py --dataset bccd --split test --out out/eval/robust_bccd_test
  python tools/eval_robustness.py --dataset bccd --split test --out out/eval/robust_bccd_480 --shifts none mag0.5 \
      --detector configs/detector/yolov8n_480_int8.yaml

Shifts: none (re-encoded only); mag0.5 (half the magnification: the field of view doubles, cells get smaller in
the same-size image: a 2x2 mosaic of four split images at half size; any magS with 0.2 <= S <= 1 works the same
way, with ceil(1/S) x ceil(1/S) tiles, e.g. mag0.7, mag0.35; 1 < S <= 2 is a higher magnification: the top-left
1/S of each image enlarged to its size); hue+12 / hue-12 (stain hue rotated by 12
degrees); pale (saturation x0.55: faded stain); dark (brightness x0.7, contrast x1.2); blur1.5 (Gaussian, sigma
1.5 px: focus); jpeg40 (JPEG quality 40). (Downscaling a whole field is no test: the detector letterboxes every
field to the same size.)
Writes OUT/robustness.json and OUT/robustness.md; each shift's run stays in OUT/<shift>/ (reused if present).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHIFTS = ["none", "mag0.5", "hue+12", "hue-12", "pale", "dark", "blur1.5", "jpeg40"]


def mosaic(gt: list, i: int, scale: float):
    """Field ``i`` of a lower magnification: split images i, i+1, ... scaled by ``scale`` in an n x n grid
    (n = ceil(1 / scale): 2 x 2 at half magnification), cropped to image i's size. Returns ``(image, boxes,
    labels)``; boxes clipped, those less than 40% inside dropped."""
    import math

    import cv2
    import numpy as np

    from core.io import read_image

    first = read_image(gt[i].path)
    h, w = first.shape[:2]
    n = max(1, math.ceil(1 / scale - 1e-9))
    canvas = np.full((max(h, n * round(h * scale)), max(w, n * round(w * scale)), 3), 0, np.uint8)
    canvas[:] = np.median(first.reshape(-1, 3), 0).astype(np.uint8)
    boxes, labels = [], []
    for k in range(n * n):
        r = gt[(i + k) % len(gt)]
        im = first if k == 0 else read_image(r.path)
        ih, iw = im.shape[:2]
        sw, sh = round(w * scale), round(h * scale)  # every tile fills one grid cell
        fx, fy = sw / iw, sh / ih
        ox, oy = (k % n) * sw, (k // n) * sh
        canvas[oy:oy + sh, ox:ox + sw] = cv2.resize(im, (sw, sh), interpolation=cv2.INTER_AREA)
        for b, lab in zip(r.boxes, r.labels):
            x1, y1, x2, y2 = b[0] * fx + ox, b[1] * fy + oy, b[2] * fx + ox, b[3] * fy + oy
            cx1, cy1, cx2, cy2 = max(0.0, x1), max(0.0, y1), min(float(w), x2), min(float(h), y2)
            area = max(1e-6, (x2 - x1) * (y2 - y1))
            if cx2 > cx1 and cy2 > cy1 and (cx2 - cx1) * (cy2 - cy1) / area >= 0.4:
                boxes.append([cx1, cy1, cx2, cy2])
                labels.append(lab)
    return canvas[:h, :w].copy(), boxes, labels


def check_shift(shift: str) -> str:
    """``shift`` if it is one of SHIFTS or ``magS`` with 0.2 <= S <= 2 (argparse type)."""
    if shift in SHIFTS:
        return shift
    try:
        ok = shift.startswith("mag") and 0.2 <= float(shift[3:]) <= 2.0
    except ValueError:
        ok = False
    if not ok:
        raise argparse.ArgumentTypeError(f"unknown shift '{shift}'; valid: {', '.join(SHIFTS)} or magS, 0.2 <= S <= 2")
    return shift


def apply_shift(image, shift: str):
    """Return ``(image, JPEG quality)`` of a stain / optics / compression ``shift`` applied to an RGB uint8 image."""
    import cv2
    import numpy as np

    if shift == "none":
        return image, 92
    if shift.startswith("hue"):
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
        hsv[..., 0] = ((hsv[..., 0].astype(np.int16) + round(float(shift[3:]) / 2)) % 180).astype(np.uint8)
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB), 92
    if shift == "pale":
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV).astype(np.float32)
        hsv[..., 1] *= 0.55
        return cv2.cvtColor(hsv.clip(0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB), 92
    if shift == "dark":
        x = image.astype(np.float32)
        x = (x - x.mean()) * 1.2 + x.mean() * 0.7
        return x.clip(0, 255).astype(np.uint8), 92
    if shift.startswith("blur"):
        return cv2.GaussianBlur(image, (0, 0), float(shift[4:])), 92
    if shift.startswith("jpeg"):
        return image, int(shift[4:])
    raise ValueError(f"unknown shift '{shift}'; valid: {SHIFTS}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True, help="dataset card name (datasets/NAME.yaml) or path")
    ap.add_argument("--split", default="test")
    ap.add_argument("--out", required=True, help="work folder: shifted images, runs, robustness.json / .md")
    ap.add_argument("--shifts", nargs="+", default=SHIFTS, type=check_shift,
                    help=f"default: {' '.join(SHIFTS)}; also magS for any 0.2 <= S <= 2")
    ap.add_argument("--config", default=str(ROOT / "configs" / "pipeline" / "eval_detection.yaml"),
                    help="pipeline YAML (default: the default detector with a 0.001 score threshold, no classifiers)")
    ap.add_argument("--detector", help="detector YAML to evaluate instead (0.001 score threshold, no classifiers)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)

    from detection.data import FieldAnnotation, load_card, read_split
    from detection.evaluate import coco_evaluate, predictions_from_records
    from pipelines.results import read_records
    from core.io import read_image, write_image
    from pipelines.cli import run_once

    card = load_card(args.dataset)
    gt = read_split(card, args.split)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.detector:
        import yaml

        args.config = str(out / "pipeline.yaml")
        Path(args.config).write_text(yaml.safe_dump({"detector": str(Path(args.detector).resolve()),
                                                     "detector_conf": 0.001, "classifiers": [],
                                                     "gallery_per_class": 0}))
    rows = {}
    for shift in args.shifts:
        d = out / shift
        img_dir = d / "images"
        img_dir.mkdir(parents=True, exist_ok=True)
        shifted = []
        for i, r in enumerate(gt):
            dst = img_dir / f"{r.path.stem}.jpg"
            if shift.startswith("mag"):
                im, boxes, labels = mosaic(gt, i, float(shift[3:]))
                q = 92
            else:
                (im, q), boxes, labels = apply_shift(read_image(r.path), shift), r.boxes, r.labels
            if not dst.exists():
                write_image(dst, im, quality=q)
            shifted.append(FieldAnnotation(dst, im.shape[1], im.shape[0], [list(b) for b in boxes], list(labels)))
        rc = run_once(d / "run", [str(img_dir), "--config", args.config, "--device", args.device])
        if rc:
            return rc
        m = coco_evaluate(shifted, predictions_from_records(read_records(d / "run")), card["classes"])
        rows[shift] = {"AP50": {c: v["AP50"] for c, v in m["per_class"].items()}, "mAP50": m["mAP50"],
                       "mAP50_95": m["mAP50_95"]}
        print(f"{shift:8s} " + "  ".join(f"{c} {v:.3f}" for c, v in rows[shift]["AP50"].items())
              + f"  mAP50 {m['mAP50']:.3f}", flush=True)
    res = {"dataset": card["name"], "split": args.split, "config": args.config, "shifts": rows}
    (out / "robustness.json").write_text(json.dumps(res, indent=1))
    classes = list(card["classes"])
    md = (f"Detector under simulated laboratory shifts, {card['name']} {args.split}, config {args.config}\n\n"
          "| shift | " + " | ".join(f"{c} AP50" for c in classes) + " | mAP50 | mAP50-95 |\n"
          "|---|" + "---|" * (len(classes) + 2) + "\n"
          + "".join(f"| {s} | " + " | ".join(f"{v['AP50'][c]:.3f}" for c in classes)
                    + f" | {v['mAP50']:.3f} | {v['mAP50_95']:.3f} |\n" for s, v in rows.items()))
    (out / "robustness.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
