#!/usr/bin/env python
"""Print a run's per-smear differential (from DIR/smears/*/report.json) as plain text.

  python tools/show_run.py out/demo/run
  python tools/show_run.py out/demo/real --truth datasets/samples/subtypes.csv   # + each field's leukocyte vs truth

--truth: a CSV ``image,<label>`` (file name, the field's leukocyte class): each field's most confident leukocyte
detection is printed with its final label beside the truth.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--truth", help="CSV image,label: print each field's leukocyte against it")
    args = ap.parse_args(argv)
    run = Path(args.run_dir)
    reports = sorted(run.glob("smears/*/report.json"))
    if not reports:
        print(f"error: no reports under {run}/smears", file=sys.stderr)
        return 2
    summary = json.loads((run / "summary.json").read_text())
    print(f"fields {summary['fields_total']} (ok {summary['fields_ok']}, failed {summary['fields_failed']}), "
          f"cells {summary['cells']}, {summary['this_run']['fields_per_s']} fields/s")
    for p in reports:
        r = json.loads(p.read_text())
        fam, conf = r.get("familiarity") or {}, r.get("confidence") or {}
        print(f"\nsmear {r['smear_id']}: {r['leukocytes_counted']} leukocytes in {r['fields_used']} fields, "
              f"platelets {r['platelets']}, unidentified {r['unidentified']}, unfamiliar {r.get('unfamiliar', 0)}"
              + (f", median familiarity score {fam['median_ood']}" if fam else "")
              + (f", mean confidence {conf['mean_score']}" if conf else ""))
        for label, v in r["differential"].items():
            print(f"  {label:22s} {v['count']:4d}  {v['percent']:5.1f}%  95% CI {v['ci95'][0]:.1f}-{v['ci95'][1]:.1f}")
        for f in r["flags"]:
            print(f"  flag {f['flag']}: {f['detail']}")
        print(f"  prognosis: {r['prognosis']['decision'] or 'off'} ({r['prognosis']['reason']})")
    if args.truth:
        import csv

        from pipelines.results import read_records

        with open(args.truth, newline="") as f:
            rows = list(csv.reader(f))[1:]
        truth = {r[0]: r[1] for r in rows if len(r) >= 2}
        right = n = 0
        print("\nfield                    truth         verdict (most confident leukocyte)")
        for rec in read_records(run):
            name = Path(rec["path"]).name
            if name not in truth:
                continue
            wbc = [c for c in rec["cells"] if c["det_label"] == "WBC"]
            c = max(wbc, key=lambda c: c["det_score"]) if wbc else None
            lab = c["label"] if c else "(no leukocyte found)"
            ok = c is not None and (lab == truth[name] or lab.endswith("_" + truth[name]))
            right, n = right + ok, n + 1
            print(f"{name:24s} {truth[name]:13s} {lab}" + (f" ({c['score']:.2f}, ood {c.get('ood')})" if c else ""))
        print(f"{right} of {n} as the truth")
    print(f"\nopen {run / 'index.html'} in a browser for the full reports")
    return 0


if __name__ == "__main__":
    sys.exit(main())
