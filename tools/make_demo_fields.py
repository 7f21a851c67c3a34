#!/usr/bin/env python
"""Render deterministic synthetic 732x574 smear fields (one folder per smear) with ground_truth.json beside them.

  python tools/make_demo_fields.py --out out/demo/fields --smears 2 --fields 6
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder to write smear_XX/field_YYY.png (or .jpg) into")
    ap.add_argument("--smears", type=int, default=2)
    ap.add_argument("--fields", type=int, default=6, help="fields per smear")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--format", choices=["png", "jpg"], default="png", help="png (lossless) or jpg (quality 95)")
    args = ap.parse_args(argv)
    from pipelines.synthetic import write_demo_fields

    paths = write_demo_fields(Path(args.out), args.smears, args.fields, args.seed, args.format)
    print(f"wrote {len(paths)} fields to {args.out} (ground truth: {Path(args.out) / 'ground_truth.json'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
