#!/usr/bin/env python
"""Fit the prognosis threshold on a cohort, as Rodellar et al. 2022 did: ROC over the per-smear share k/n of
COVID-19 reactive lymphocytes among lymphoid cells, its AUC, the Youden-optimal threshold, and the rule's
sensitivity / specificity / precision / accuracy at it and at --threshold.

  python tools/fit_threshold.py smears.csv --threshold 0.02 --out out/threshold

SMEARS_CSV columns: smear_id,k,n,group (group 1 = positive / better prognosis, 0 = negative). Writes roc.png and
threshold.json in --out; stdout includes the lines `AUC <value>` and `threshold <value>`.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("smears_csv")
    ap.add_argument("--threshold", type=float, default=0.02, help="the rule's threshold to report (default 0.02)")
    ap.add_argument("--out", default="out/threshold")
    args = ap.parse_args(argv)

    import numpy as np

    from pipelines.threshold import roc, rule_metrics, youden

    rows, bad = [], []
    with open(args.smears_csv, newline="") as f:
        reader = csv.DictReader(f)
        need = {"smear_id", "k", "n", "group"}
        if not reader.fieldnames or not need <= set(reader.fieldnames):
            print(f"error: {args.smears_csv} needs columns {sorted(need)}", file=sys.stderr)
            return 2
        for i, r in enumerate(reader, 2):
            try:
                k, n, g = int(r["k"]), int(r["n"]), int(r["group"])
                if n <= 0 or not 0 <= k <= n or g not in (0, 1):
                    raise ValueError
                rows.append((r["smear_id"], k, n, g))
            except ValueError:
                bad.append(i)
    if bad:
        print(f"error: invalid rows (need 0 <= k <= n, n > 0, group 0 or 1) at lines {bad[:20]}", file=sys.stderr)
        return 2
    shares = np.array([k / n for _, k, n, _ in rows])
    groups = np.array([g for *_, g in rows])
    try:
        r = roc(shares, groups)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t_opt = youden(r)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = {"smears": len(rows), "positive": int(groups.sum()), "negative": int((groups == 0).sum()),
           "auc": round(r["auc"], 4), "youden_threshold": t_opt, "at_youden": rule_metrics(shares, groups, t_opt),
           "at_threshold": rule_metrics(shares, groups, args.threshold),
           "roc": {"fpr": r["fpr"].round(4).tolist(), "tpr": r["tpr"].round(4).tolist(),
                   "thresholds": [None if not np.isfinite(t) else round(float(t), 6) for t in r["thresholds"]]}}
    (out / "threshold.json").write_text(json.dumps(res, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(r["fpr"], r["tpr"], drawstyle="steps-post", label=f"AUC {r['auc']:.3f}")
    ax.plot([0, 1], [0, 1], ":", color="gray")
    a = res["at_youden"]
    ax.scatter([1 - a["specificity"]], [a["sensitivity"]], color="red", zorder=3, label=f"Youden t={t_opt:.4f}")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title("COVID-19 RL share ROC")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "roc.png", dpi=120)
    print(f"AUC {res['auc']}")
    print(f"threshold {t_opt}")
    for name, m in (("Youden", res["at_youden"]), (f"threshold {args.threshold}", res["at_threshold"])):
        print(f"at {name}: sensitivity {m['sensitivity']} specificity {m['specificity']} precision {m['precision']} "
              f"accuracy {m['accuracy']}")
    print(f"wrote {out / 'threshold.json'} and {out / 'roc.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
