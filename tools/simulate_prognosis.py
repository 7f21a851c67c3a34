#!/usr/bin/env python
"""Simulate the COVID-19 prognosis rule on the study's cohort (Rodellar et al. 2022) and compare with the published
sensitivity 98.3% / specificity 97.1%.

  python tools/simulate_prognosis.py --draws 2000 --seed 0

Each draw spreads the cohort's cells over its smears (58 positive: 132 COVID-19 RL, 70 classic RL, 1,604 normal;
34 negative: 12 classic RL, 420 normal; every positive smear holds at least one COVID-19 RL), passes every cell
through the study's cell-level confusion matrix (Figure 5) and applies the rule at --threshold. A benchmark of the
rule, not a unit test of an exact number.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--draws", type=int, default=2000)
    ap.add_argument("--threshold", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="write the summary JSON here")
    args = ap.parse_args(argv)
    import numpy as np

    from pipelines.threshold import simulate_cohort

    rng = np.random.default_rng(args.seed)
    runs = [simulate_cohort(rng, threshold=args.threshold) for _ in range(args.draws)]
    res = {"draws": args.draws, "threshold": args.threshold, "seed": args.seed,
           "published": {"sensitivity": 0.983, "specificity": 0.971}}
    for k in ("sensitivity", "specificity", "precision", "accuracy"):
        v = np.array([r[k] for r in runs], float)
        res[k] = {"mean": round(float(v.mean()), 4), "p2.5": round(float(np.percentile(v, 2.5)), 4),
                  "p97.5": round(float(np.percentile(v, 97.5)), 4)}
    print(f"{args.draws} draws, threshold {args.threshold}, seed {args.seed}")
    for k in ("sensitivity", "specificity"):
        print(f"{k}: mean {res[k]['mean']:.3f} (95% of draws {res[k]['p2.5']:.3f}-{res[k]['p97.5']:.3f}); "
              f"published {res['published'][k]:.3f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
