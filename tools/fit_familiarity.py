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

The same cells give the checkpoint its rehearsal set (``--replay-per-class``, default 8 per class and laboratory):
their feature maps at the input of the last stages, which ``tools/adapt_classifier.py --labels`` trains on beside a
laboratory's labelled cells so that the classes it does not label are not forgotten (``classification.adapt``).
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
    ap.add_argument("--replay-per-class", type=int, default=8,
                    help="rehearsal cells stored per class and laboratory for few-shot adaptation (0: none)")
    ap.add_argument("--replay-blocks", type=int, default=2,
                    help="stages from the head the rehearsal cells are cut at (the most adapt_classifier --blocks "
                         "can fine-tune with them)")
    ap.add_argument("--replay-only", action="store_true",
                    help="store the rehearsal cells and keep the checkpoint's familiarity score as it is")
    args = ap.parse_args(argv)

    weights = Path(args.weights)
    if not weights.is_file() or weights.suffix.lower() != ".pt":
        print(f"error: {weights}: give an existing .pt checkpoint", file=sys.stderr)
        return 2
    if not 0.5 < args.quantile < 1.0:
        print(f"error: --quantile must be in (0.5, 1), not {args.quantile}", file=sys.stderr)
        return 2
    if args.replay_only and args.replay_per_class < 1:
        print("error: --replay-only needs --replay-per-class of at least 1", file=sys.stderr)
        return 2

    import numpy as np
    import torch

    from classification.adapt import replay_set
    from classification.classifier import Classifier
    from classification.familiarity import fit_cells, fit_familiarity
    from classification.train import train_labels

    clf = Classifier(weights)
    tcfg = clf.meta.get("training", {}).get("config", {}).get("train", {})
    cells = fit_cells(clf, args.split, tuple(args.cell_set_splits))
    print(f"{len(cells['x'])} {args.split} cells of {clf.task} ({cells['n_samples']} + harmonized copies)", flush=True)
    ck = torch.load(weights, map_location="cpu", weights_only=False)
    if not args.replay_only:
        feats, probs = clf.features_prepared(cells["x"], with_probs=True)
        ood = fit_familiarity(clf, feats, probs, cells["y"], cells["groups"], dims=args.dims, quantile=args.quantile)
        ood["fitted_on"].update({"split": args.split, "cell_set_splits": args.cell_set_splits,
                                 "sources": tcfg.get("sources"), "cell_sets": tcfg.get("cell_sets"),
                                 "harmonize": tcfg.get("harmonize")})
        ck["ood"] = ood
    ck.pop("replay", None)
    if args.replay_per_class > 0:
        own = np.arange(len(cells["y"])) < cells["n_samples"]  # the cells as captured, not harmonized copies
        try:
            ck["replay"] = replay_set(clf.model, clf.meta["mean"], clf.meta["std"], cells["x"][own], cells["y"][own],
                                      cells["groups"][own], blocks=args.replay_blocks,
                                      per_class=args.replay_per_class)
        except ValueError as e:  # a backbone without a known stage layout (ShuffleNetV2)
            print(f"note: no rehearsal cells stored: {e}", file=sys.stderr)
        else:
            ck["replay"].update(label_names=train_labels(clf.task), date=datetime.date.today().isoformat())
    out = Path(args.out or weights)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ck, out)
    ood = ck.get("ood") or {}
    print(json.dumps({"out": str(out), "threshold": round(ood["threshold"], 4) if ood else None,
                      "val_quantiles": ood.get("val_quantiles"), "dims": ood.get("dims"),
                      "class_means": len(ood.get("means", [])),
                      "replay_cells": len(ck["replay"]["y"]) if "replay" in ck else 0}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
