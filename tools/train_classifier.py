#!/usr/bin/env python
"""Train a cell classifier from its config:
``python tools/train_classifier.py --config configs/classifier/fine13_lite0_192.yaml``.

Data: the task's public sources in ../shared/data (pbc8: PBC; wang11: PBC fine labels + lmu_aml), the fixed splits
(train to fit, val for early stopping and temperature scaling, test only for the final figure), or your own
folder-per-class data (``train.data_dir`` with train/ val/ test/). Writes a self-describing checkpoint (taxonomy,
input size, normalization, temperature, training history, metrics) to ``--out`` (default:
runs/classifier/<config stem>.pt, where a recipe's next stage, ``init_from``, starts) and its metrics as JSON next
to it. ``--resume`` continues an interrupted run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.config import load_yaml, resolve_path  # noqa: E402


def stage_output(config) -> Path:
    """Where training a classifier config writes its checkpoint by default: runs/classifier/<config stem>.pt (a
    recipe's next stage starts there, ``init_from``)."""
    return resolve_path(f"runs/classifier/{Path(config).stem}.pt")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="classifier YAML (configs/classifier/*.yaml)")
    ap.add_argument("--out", help="checkpoint path (default: runs/classifier/<config stem>.pt; copy a checkpoint that "
                                  "ships to classification/weights/ yourself)")
    ap.add_argument("--epochs", type=int, help="override train.epochs")
    ap.add_argument("--resume", action="store_true", help="continue from train.run_dir/last.pt")
    ap.add_argument("--limit", type=int, default=0, help="use at most N samples per split (smoke runs)")
    args = ap.parse_args(argv)

    import numpy as np

    from classification.classifier import check_classifier_config
    from classification.data import harmonized_array, load_array, load_folder_samples, load_samples, source_of
    from classification.metrics import format_report
    from classification.models import BACKBONES
    from classification.train import train_classifier, train_labels

    cfg = check_classifier_config(load_yaml(args.config), args.config)
    if args.epochs:
        cfg["train"] = {**cfg["train"], "epochs": args.epochs}
    out = resolve_path(args.out) if args.out else stage_output(args.config)
    if cfg["init_from"]:
        if cfg["pretrained"]:
            print("error: give either init_from or pretrained, not both", file=sys.stderr)
            return 2
        prev = resolve_path(f"configs/classifier/{cfg['init_from']}")
        start = stage_output(prev)
        if not start.exists():
            print(f"error: {cfg['init_from']} has not been trained: {start} is missing (python "
                  f"tools/train_classifier.py --config {prev})", file=sys.stderr)
            return 2
        cfg["pretrained"] = str(start)
    classes = train_labels(cfg["task"])  # the taxonomy's classes (fine13: then its coarse labels)
    size = cfg["input_size"] or BACKBONES[cfg["arch"]][2]
    tcfg = cfg["train"]
    data = {}
    for split in ("train", "val", "test"):
        if tcfg.get("data_dir"):
            d = resolve_path(tcfg["data_dir"]) / split
            samples = load_folder_samples(d, classes) if d.exists() else []
        else:
            samples = load_samples(cfg["task"], split, tcfg.get("sources"), tcfg.get("cell_sets"))
        if args.limit:
            import random

            samples = random.Random(0).sample(samples, min(args.limit, len(samples)))
        if not samples and split != "test":
            print(f"error: no {split} samples for task {cfg['task']}", file=sys.stderr)
            return 2
        data[split] = load_array(samples, classes, size, progress=True) if samples else None
        groups = np.array([source_of(p) or "own" for p, _ in samples])  # harmonized copies: their reference's
        print(f"{split}: {len(samples)} samples", flush=True)
        if split != "test" and tcfg.get("harmonize"):
            for source, reference in tcfg["harmonize"].items():
                hx, hy = harmonized_array(samples, classes, size, source, reference)
                data[split] = (np.concatenate([data[split][0], hx]), np.concatenate([data[split][1], hy]))
                groups = np.concatenate([groups, np.full(len(hy), reference)])
                print(f"{split}: + {len(hy)} {source} images harmonized to {reference}", flush=True)
        if split == "train":
            data["train_groups"] = groups
    metrics = train_classifier(cfg, out, data, resume=args.resume, log=lambda m: print(m, flush=True))
    Path(out).with_suffix(".metrics.json").write_text(json.dumps(metrics, indent=1))
    for split in ("val", "test"):
        if split in metrics:
            print(f"== {split} (temperature {metrics['temperature']:.3f})\n{format_report(metrics[split])}")
    print(f"weights: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
