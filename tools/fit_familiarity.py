#!/usr/bin/env python
"""Fit a classifier's familiarity score (``ood`` per cell, ``classification.ood``) on the val cells of the
laboratories it was trained on, and store it in the checkpoint:

  python tools/fit_familiarity.py --weights runs/classifier/fine13_lite0_192.pt
  python tools/export_onnx.py --classifier runs/classifier/fine13_lite0_192.pt --out ....onnx   # ONNX gets it too

The cells are the checkpoint's own training laboratories: the val split of its ``train.sources`` (with the
harmonized copies it was selected on) and the train + val splits of its ``cell_sets`` (few cells each); one mean
per class and laboratory, with the true class, or for coarse labels (BCCD's ``neutrophil``, TXL-PBC's
``mature_leukocyte``) the predicted one. The threshold above which a cell is ``unfamiliar`` is the ``--quantile``
of the val cells' scores.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", required=True, help="classifier checkpoint (.pt); rewritten unless --out")
    ap.add_argument("--out", help="write the checkpoint with the score here instead")
    ap.add_argument("--dims", type=int, default=64, help="whitened feature dimensions (default 64)")
    ap.add_argument("--quantile", type=float, default=0.99, help="val-cell quantile of the unfamiliar threshold")
    ap.add_argument("--split", default="val", help="split of the training sources to fit on (default val)")
    ap.add_argument("--cell-set-splits", nargs="+", default=["train", "val"],
                    help="splits of the labelled cell sets (BCCD, TXL-PBC crops: few cells) to fit on")
    args = ap.parse_args(argv)

    weights = Path(args.weights)
    if not weights.is_file() or weights.suffix.lower() != ".pt":
        print(f"error: {weights}: give an existing .pt checkpoint", file=sys.stderr)
        return 2
    if not 0.5 < args.quantile < 1.0:
        print(f"error: --quantile must be in (0.5, 1), not {args.quantile}", file=sys.stderr)
        return 2

    import numpy as np
    import torch

    from classification.classifier import Classifier
    from classification.data import harmonized_array, load_samples, source_of
    from classification.ood import fit_ood
    from classification.taxonomies import label_sets
    from classification.train import train_labels
    from core.io import read_image

    clf = Classifier(weights)
    tcfg = clf.meta.get("training", {}).get("config", {}).get("train", {})
    task = clf.task
    samples = load_samples(task, args.split, tcfg.get("sources"))
    for split in args.cell_set_splits:  # the labelled cell sets are small: their train cells too
        samples += load_samples(task, split, [], tcfg.get("cell_sets")) if tcfg.get("cell_sets") else []
    labels = train_labels(task)
    x = clf.preprocess([read_image(p) for p, _ in samples])
    y = np.array([labels.index(lab) for _, lab in samples])
    groups = np.array([source_of(p) or "own" for p, _ in samples])
    for source, reference in (tcfg.get("harmonize") or {}).items():
        hx, hy = harmonized_array(samples, labels, clf.input_size, source, reference)
        x, y = np.concatenate([x, clf.prepare_resized(hx)]), np.concatenate([y, hy])
        groups = np.concatenate([groups, np.full(len(hy), reference)])
    print(f"{len(x)} {args.split} cells of {task} ({len(samples)} + harmonized copies)", flush=True)
    feats = clf.features_prepared(x)
    probs = clf.classify_prepared(x)
    pred = probs.argmax(1)
    sets = label_sets(labels, clf.classes)
    cls = np.where(y < len(clf.classes), y, pred)  # coarse labels: the predicted fine class
    keep = (y < len(clf.classes)) | sets[y, pred].astype(bool)  # coarse labels the network got wrong stay out
    ood = fit_ood(feats[keep], cls[keep], dims=args.dims, quantile=args.quantile, groups=groups[keep])
    ood["fitted_on"] = {"split": args.split, "cell_set_splits": args.cell_set_splits, "sources": tcfg.get("sources"),
                        "cell_sets": tcfg.get("cell_sets"), "means_per": "class and laboratory",
                        "harmonize": tcfg.get("harmonize"), "cells": int(keep.sum()), "quantile": args.quantile,
                        "date": datetime.date.today().isoformat()}
    ck = torch.load(weights, map_location="cpu", weights_only=False)
    ck["ood"] = ood
    out = Path(args.out or weights)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ck, out)
    print(json.dumps({"out": str(out), "threshold": round(ood["threshold"], 4), "val_quantiles": ood["val_quantiles"],
                      "dims": ood["dims"], "class_means": len(ood["means"])}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
