#!/usr/bin/env python
"""Export a trained YOLO detector or cell classifier to ONNX (dynamic batch) for OpenVINO / ONNX Runtime.

  python tools/export_onnx.py --config configs/detector/yolov8n_320.yaml --out detection/weights/yolov8n_320.onnx
  python tools/export_onnx.py --config configs/detector/yolov8n_320.yaml --int8 \
      --out detection/weights/yolov8n_320_int8.onnx
  python tools/export_onnx.py --classifier classification/weights/fine13_lite0_192.pt \
      --out classification/weights/fine13_lite0_192.onnx

Detector: point a detector config with `backend: onnx` at it (configs/detector/yolov8n_320_onnx.yaml). --int8 also
quantizes it (static int8, convolutions only, activation ranges from --calib-images fields of the config's training
data, letterboxed like at inference with rect; exit 1 when it finds fewer than 90% of the float model's WBC boxes on
a quarter of those fields); measure its AP with tools/eval_detector.py before shipping it.
Classifier: name the .onnx as a pipeline stage's `weights` (configs/pipeline/default.yaml); it carries the
checkpoint's taxonomy, input size, normalization and temperature. Every export is checked: the ONNX model and the
PyTorch model must give the same detections on sample fields, or the same probabilities (within 1e-4) on sample
crops; otherwise the tool exits 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--config", help="YOLO detector config with trained weights")
    what.add_argument("--classifier", help="classifier checkpoint (.pt)")
    ap.add_argument("--out", required=True, help="ONNX file to write")
    ap.add_argument("--int8", action="store_true", help="detector: static int8 quantization after the export")
    ap.add_argument("--calib-images", type=int, default=64, help="--int8: calibration fields (default 64)")
    args = ap.parse_args(argv)
    if args.classifier:
        return export_classifier(args.classifier, Path(args.out))

    import numpy as np

    from detection import build_detector, check_detector_config
    from detection.yolo import export_onnx
    from core.config import load_yaml, resolve_path
    from pipelines.synthetic import render_field

    cfg = check_detector_config(load_yaml(args.config), args.config)
    if cfg["backend"] != "yolo" or not cfg["weights"]:
        print("error: need a yolo config with trained weights", file=sys.stderr)
        return 2
    out = Path(args.out)
    if args.int8:
        import tempfile

        from detection.data import load_card, read_split
        from detection.yolo import quantize_onnx
        from core.io import read_image

        calib = []
        for spec in cfg["train"].get("data", ["bccd:trainval", "txl_pbc:train"]):
            name, split = spec.split(":")
            calib += [r.path for r in read_split(load_card(name), split)]
        step = max(1, len(calib) // args.calib_images)
        calib = [read_image(p) for p in calib[::step][: args.calib_images]]
        onnx_cfg = {**cfg, "backend": "onnx", "rect": True}
        with tempfile.TemporaryDirectory() as tmp:
            fp32 = export_onnx(resolve_path(cfg["weights"]), cfg["imgsz"], Path(tmp) / "fp32.onnx")
            quantize_onnx(fp32, out, calib, cfg["imgsz"])
            sample = calib[::4]  # check: int8 must find the leukocytes the float model finds
            ref = build_detector({**onnx_cfg, "weights": str(fp32)}).detect(sample)
        got = build_detector({**onnx_cfg, "weights": str(out.resolve())}).detect(sample)
        found, total = _wbc_agreement(ref, got)
        print(f"quantized with {len(calib)} calibration fields; int8 finds {found} of the float model's {total} "
              f"WBC boxes (IoU >= 0.5) on {len(sample)} of them; compare AP with tools/eval_detector.py")
        if total and found / total < 0.9:
            print("error: the int8 model loses leukocytes; keep the float export", file=sys.stderr)
            return 1
        print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
        return 0
    out = export_onnx(resolve_path(cfg["weights"]), cfg["imgsz"], out)
    images = [render_field(i).image for i in range(4)]
    a = build_detector(cfg).detect(images)
    b = build_detector({**cfg, "backend": "onnx", "weights": str(out.resolve())}).detect(images)
    worst = 0.0
    for da, db in zip(a, b):
        if len(da) != len(db):
            print(f"error: torch and ONNX disagree ({len(da)} vs {len(db)} boxes)", file=sys.stderr)
            return 1
        if len(da):
            worst = max(worst, float(np.abs(da.xyxy - db.xyxy).max()))
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB); torch vs ONNX max box difference {worst:.3f} px")
    return 0


def _wbc_agreement(ref, got) -> tuple[int, int]:
    """How many of ``ref``'s WBC boxes ``got`` has a WBC box for at IoU >= 0.5, and how many there are."""
    from detection.yolo import box_iou

    found = total = 0
    for a, b in zip(ref, got):
        wb = b.xyxy[[lab == "WBC" for lab in b.labels]]
        for box, lab in zip(a.xyxy, a.labels):
            if lab == "WBC":
                total += 1
                found += bool(len(wb)) and bool((box_iou(box, wb) >= 0.5).any())
    return found, total


def export_classifier(checkpoint: str, out: Path) -> int:
    import numpy as np

    from classification.classifier import Classifier, OnnxClassifier, export_onnx
    from pipelines.synthetic import render_field

    if not Path(checkpoint).exists():
        print(f"error: classifier checkpoint not found: {checkpoint}", file=sys.stderr)
        return 2
    out = export_onnx(checkpoint, out)
    crops = [render_field(i).image[100:400, 150:450] for i in range(8)]
    a = Classifier(checkpoint).classify(crops)
    b = OnnxClassifier(out).classify(crops)
    diff = float(np.abs(a - b).max())
    if diff > 1e-4 or (a.argmax(1) != b.argmax(1)).any():
        print(f"error: torch and ONNX probabilities differ by {diff:.2e}", file=sys.stderr)
        return 1
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB); torch vs ONNX max probability difference {diff:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
