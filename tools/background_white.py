#!/usr/bin/env python
"""The background white of cell crops (``classification.preprocess.background_white``): where a classifier config's
``white_balance`` reference comes from, and how far a laboratory's illuminant is from it.

  python tools/background_white.py --task pbc8 --split train --sources pbc        # the shipped reference
  python tools/background_white.py --task wang11 --split test --sources lmu_aml
  python tools/background_white.py --images out/mylab_labels                      # your cells (files, folders)

Prints the mean, median and 5th / 95th percentiles of the crops' background white (RGB, at the classifier's input
size), and each channel as a share of the brightest one (a share below the reference's is the cast that
``white_balance`` corrects).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--task", help="a taxonomy's samples from ../shared/data (pbc8, wang11, fine13)")
    src.add_argument("--images", nargs="+", help="image files, folders or globs")
    ap.add_argument("--split", default="train", help="--task: split (default train)")
    ap.add_argument("--sources", nargs="+", default=None, help="--task: datasets (pbc, lmu_aml)")
    ap.add_argument("--n", type=int, default=1000, help="at most N crops, drawn at random (default 1000)")
    ap.add_argument("--size", type=int, default=192, help="resize to this first, as the classifier does (192)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import numpy as np

    from classification.preprocess import background_white, resize_crops
    from core.io import read_sample

    if args.task:
        from classification.data import load_samples

        try:
            paths = [p for p, _ in load_samples(args.task, args.split, args.sources)]
        except (FileNotFoundError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    else:
        from pipelines.inputs import expand_inputs

        paths = [f.path for f in expand_inputs(args.images)[0]]
    if not paths:
        print("error: no images", file=sys.stderr)
        return 2
    crops, notes = read_sample(paths, args.n, args.seed)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if not crops:
        print("error: no readable images", file=sys.stderr)
        return 2
    w = background_white(resize_crops(crops, args.size))
    share = w / w.max(1, keepdims=True)
    fmt = lambda v: "[" + ", ".join(f"{x:.1f}" for x in v) + "]"  # noqa: E731
    print(f"{len(w)} crops; background white RGB mean {fmt(w.mean(0))}, median {fmt(np.median(w, 0))}, "
          f"5% {fmt(np.percentile(w, 5, 0))}, 95% {fmt(np.percentile(w, 95, 0))}")
    print("share of the brightest channel: mean " + "[" + ", ".join(f"{x:.3f}" for x in share.mean(0)) + "], 5% ["
          + ", ".join(f"{x:.3f}" for x in np.percentile(share, 5, 0)) + "]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
