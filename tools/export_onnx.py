#!/usr/bin/env python
"""Export a trained YOLO detector to ONNX (dynamic batch) for the ONNX Runtime backend.

  python tools/export_onnx.py --config configs/detector/yolov8n_320.yaml --out detection/weights/yolov8n_320.onnx

Then point a detector config with `backend: onnx` at it (configs/detector/yolov8n_320_onnx.yaml).
The export is checked: the ONNX model and the PyTorch model must give the same detections on sample images.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="YOLO detector config with trained weights")
    ap.add_argument("--out", required=True, help="ONNX file to write")
    args = ap.parse_args(argv)

    import numpy as np

    from detection import build_detector, check_detector_config
    from detection.yolo import export_onnx
    from pipelines.config import load_yaml, resolve_path
    from pipelines.synthetic import render_field

    cfg = check_detector_config(load_yaml(args.config), args.config)
    if cfg["backend"] != "yolo" or not cfg["weights"]:
        print("error: need a yolo config with trained weights", file=sys.stderr)
        return 2
    out = export_onnx(resolve_path(cfg["weights"]), cfg["imgsz"], Path(args.out))
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


if __name__ == "__main__":
    sys.exit(main())
