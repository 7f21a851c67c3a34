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


def lab_stats(paths, n=400):
    import cv2
    import numpy as np

    from pipelines.io import read_image

    rng = np.random.default_rng(0)
    idx = rng.choice(len(paths), size=min(n, len(paths)), replace=False)
    px = np.concatenate([cv2.cvtColor(read_image(paths[i]), cv2.COLOR_RGB2LAB).reshape(-1, 3)[::7] for i in idx])
    return px.mean(0), px.std(0)


def harmonize(img, mean, std, zoom: float):
    import cv2
    import numpy as np

    lab = cv2.cvtColor(img, cv2.COLOR_RGB2LAB).astype(np.float32)
    m, s = lab.reshape(-1, 3).mean(0), lab.reshape(-1, 3).std(0) + 1e-6
    lab = (lab - m) / s * std + mean
    out = cv2.cvtColor(np.clip(lab, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)
    h, w = out.shape[:2]
    small = cv2.resize(out, (max(1, round(w * zoom)), max(1, round(h * zoom))), interpolation=cv2.INTER_AREA)
    py, px = h - small.shape[0], w - small.shape[1]
    return cv2.copyMakeBorder(small, py // 2, py - py // 2, px // 2, px - px // 2, cv2.BORDER_REFLECT)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True)
    ap.add_argument("--zoom", type=float, default=0.68, help="lmu_aml -> PBC magnification (red-cell diameters)")
    ap.add_argument("--config", default=str(ROOT / "configs" / "pipeline" / "default.yaml"))
    args = ap.parse_args(argv)

    from classification.data import load_samples
    from pipelines.io import read_image, write_image
    from tools.infer_field import main as infer

    run = Path(args.run)
    lmu = load_samples("wang11", "test", ["lmu_aml"])
    mean, std = lab_stats([p for p, _ in load_samples("pbc8", "train")])
    hdir = run / "harmonized"
    for p, lab in lmu:
        d = hdir / lab
        d.mkdir(parents=True, exist_ok=True)
        if not (d / f"{p.stem}.png").exists():
            write_image(d / f"{p.stem}.png", harmonize(read_image(p), mean, std, args.zoom))
    res = {}
    for name, inputs in (("original", [str(p) for p, _ in lmu]), ("harmonized", [str(hdir)])):
        out = run / name
        if not (out / "fields.jsonl").exists():
            rc = infer(inputs + ["--cells", "--out", str(out), "--config", args.config, "--no-progress"])
            if rc not in (0, 1):
                return rc
        truth = {p.stem: lab for p, lab in lmu}
        calls = {"blast": [], "segmented_neutrophil": []}
        for line in (out / "fields.jsonl").read_text().splitlines():
            r = json.loads(line)
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
