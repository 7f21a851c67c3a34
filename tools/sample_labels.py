#!/usr/bin/env python
"""Draw a few labelled cells per class from a labelled cell list, as a new laboratory would label them for
``tools/adapt_classifier.py --labels``; the rest of the list is what the adapted network is then judged on.

  python tools/sample_labels.py runs/cells/bccd/labels.csv --per-class 20 --splits train val \\
      --out runs/fewshot/bccd/labels.csv
  python tools/sample_labels.py ../shared/data/lmu_aml/manifest.csv --per-class 20 --splits train \\
      --out runs/fewshot/lmu_aml/labels.csv

Input: a CSV with ``path`` and ``label`` columns (paths relative to it), optionally ``split`` and ``primary`` (as
``tools/prepare_cells.py`` writes them: only a field's labelled, most confident detection is drawn) — a
``labels.csv`` of prepare_cells or of ``tools/review.py --export-labels``, or a dataset manifest. Output: ``path,label``
with paths relative to the output CSV. A class with fewer cells than ``--per-class`` gives all it has (said on
stdout).
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv", help="labelled cell list: path,label[,split][,primary]")
    ap.add_argument("--per-class", type=int, default=20, help="cells drawn per class (default 20)")
    ap.add_argument("--splits", nargs="+", help="draw only from rows of these splits (needs a split column)")
    ap.add_argument("--out", required=True, help="output CSV (path,label)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    src = Path(args.csv)
    if not src.is_file():
        print(f"error: {src} not found", file=sys.stderr)
        return 2
    if args.per_class < 1:
        print("error: --per-class must be >= 1", file=sys.stderr)
        return 2
    with open(src, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"path", "label"} <= set(rows[0]):
        print(f"error: {src}: needs a header with 'path' and 'label' columns and at least one row", file=sys.stderr)
        return 2
    if args.splits and "split" not in rows[0]:
        print(f"error: {src} has no split column for --splits", file=sys.stderr)
        return 2
    by_class: dict[str, list[dict]] = {}
    for r in rows:
        if not r["label"].strip() or (args.splits and r["split"] not in args.splits) or r.get("primary") == "0":
            continue
        by_class.setdefault(r["label"].strip(), []).append(r)
    if not by_class:
        print(f"error: {src}: no labelled rows" + (f" in splits {args.splits}" if args.splits else ""),
              file=sys.stderr)
        return 2
    rng = random.Random(args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        for label in sorted(by_class):
            picked = rng.sample(by_class[label], min(args.per_class, len(by_class[label])))
            for r in picked:
                w.writerow([os.path.relpath((src.parent / r["path"]).resolve(), out.parent.resolve()), label])
            print(f"{label}: {len(picked)} of {len(by_class[label])}" +
                  (" (all it has)" if len(picked) < args.per_class else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
