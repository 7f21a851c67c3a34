#!/usr/bin/env python
"""Train a detector from its config: ``python tools/train_detector.py --config configs/detector/yolov8n_320.yaml``.

Writes the best weights to ``--out`` (default: the config's ``weights``) and logs to the config's ``train.run_dir``.
``--resume`` continues an interrupted run from its last checkpoint. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="detector YAML (configs/detector/*.yaml)")
    ap.add_argument("--out", help="where the trained weights go (default: the config's weights)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:0 ...")
    ap.add_argument("--epochs", type=int, help="override train.epochs")
    ap.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    ap.add_argument("--name", default="train", help="run name under train.run_dir")
    args = ap.parse_args(argv)

    from detection import check_detector_config
    from detection.train import train_ssd, train_yolo
    from core.config import load_yaml, resolve_path

    cfg = check_detector_config(load_yaml(args.config), args.config)
    if args.epochs:
        cfg["train"] = {**cfg["train"], "epochs": args.epochs}
    out = resolve_path(args.out or cfg["weights"])
    if out is None:
        print("error: give --out or set 'weights' in the config", file=sys.stderr)
        return 2
    if cfg["backend"] == "ssd300":
        path = train_ssd(cfg, out, resume=args.resume, device=args.device)
    elif cfg["backend"] == "yolo":
        path = train_yolo(cfg, out, resume=args.resume, device=args.device, name=args.name)
    else:
        print(f"error: backend '{cfg['backend']}' is inference-only; train the yolo config and export", file=sys.stderr)
        return 2
    print(f"weights: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
