#!/usr/bin/env python
"""Print a run's per-smear differential (from DIR/smears/*/report.json) as plain text.

  python tools/show_run.py out/demo/run
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
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
        print(f"\nsmear {r['smear_id']}: {r['leukocytes_counted']} leukocytes in {r['fields_used']} fields, "
              f"platelets {r['platelets']}, unidentified {r['unidentified']}")
        for label, v in r["differential"].items():
            print(f"  {label:22s} {v['count']:4d}  {v['percent']:5.1f}%  95% CI {v['ci95'][0]:.1f}-{v['ci95'][1]:.1f}")
        for f in r["flags"]:
            print(f"  flag {f['flag']}: {f['detail']}")
        print(f"  prognosis: {r['prognosis']['decision'] or 'off'} ({r['prognosis']['reason']})")
    print(f"\nopen {run / 'index.html'} in a browser for the full reports")
    return 0


if __name__ == "__main__":
    sys.exit(main())
