#!/usr/bin/env python
"""Are blasts recognized by morphology or by their laboratory? A check of the wang11 classifier.

Blasts come only from lmu_aml (another lab and scanner, ~1.5x PBC's magnification); lmu_aml's segmented
neutrophils share that source. This tool takes the lmu_aml test split and harmonizes every image to PBC's look:
zoom out to PBC's magnification (red-cell diameter ratio, --zoom) and Reinhard colour transfer in Lab to the PBC
training images' statistics. It then runs `infer_field.py --cells` on the original and on the harmonized images.
If the classifier had learnt the source, harmonized blasts would stop being called blasts (and original
lmu_aml neutrophils would be called blasts). Prints blast sensitivity and the share of segmented neutrophils called
blast, for both, and writes RUN/source_bias.json.

  python tools/check_source_bias.py --run out/source_bias
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True)
    ap.add_argument("--zoom", type=float, default=0.68, help="lmu_aml -> PBC magnification (red-cell diameters)")
    ap.add_argument("--config", default=str(ROOT / "configs" / "pipeline" / "default.yaml"))
    args = ap.parse_args(argv)

    from classification.data import load_samples
    from classification.harmonize import harmonize, reference_stats
    from core.io import read_image, write_image
    from pipelines.cli import run_once
    from pipelines.results import read_records

    run = Path(args.run)
    lmu = load_samples("wang11", "test", ["lmu_aml"])
    mean, std = reference_stats([p for p, _ in load_samples("pbc8", "train")])
    hdir = run / "harmonized"
    for p, lab in lmu:
        d = hdir / lab
        d.mkdir(parents=True, exist_ok=True)
        if not (d / f"{p.stem}.png").exists():
            write_image(d / f"{p.stem}.png", harmonize(read_image(p), mean, std, args.zoom))
    res = {}
    for name, inputs in (("original", [str(p) for p, _ in lmu]), ("harmonized", [str(hdir)])):
        out = run / name
        rc = run_once(out, inputs + ["--cells", "--config", args.config])
        if rc:
            return rc
        truth = {p.stem: lab for p, lab in lmu}
        calls = {"blast": [], "segmented_neutrophil": []}
        for r in read_records(out):
            t = truth.get(Path(r["path"]).stem)
            if t in calls and r["cells"] and "wang11" in r["cells"][0]["classes"]:
                calls[t].append(r["cells"][0]["classes"]["wang11"]["label"])
        res[name] = {"blast_sensitivity": round(sum(c == "blast" for c in calls["blast"]) / len(calls["blast"]), 4),
                     "neutrophils_called_blast": round(sum(c == "blast" for c in calls["segmented_neutrophil"])
                                                       / len(calls["segmented_neutrophil"]), 4),
                     "n": {k: len(v) for k, v in calls.items()}}
        print(f"{name:10s}: blast sensitivity {res[name]['blast_sensitivity']:.3f}, lmu_aml segmented neutrophils "
              f"called blast {res[name]['neutrophils_called_blast']:.3f} (n {res[name]['n']})")
    (run / "source_bias.json").write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
