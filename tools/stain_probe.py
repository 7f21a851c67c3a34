#!/usr/bin/env python
"""Stain colour per laboratory, and whether a classifier's blast calls follow it (docs/RESULTS.md "Stain colour").

  python tools/stain_probe.py --sets bccd=runs/cells/bccd txl_pbc=runs/cells/txl_pbc
  python tools/stain_probe.py --sets txl_pbc=runs/cells/txl_pbc --weights runs/classifier/fine13_fbn192_s1.pt
  python tools/stain_probe.py --sets mylab=out/mylab_labels                 # your cells (files, folders, globs)

Per set of cell crops (``--data`` adds the training laboratories' train split from ../shared/data; ``--sets``
NAME=PATH adds folders, files or globs): the nucleus stain colour (``classification.preprocess.nucleus_od_direction``:
the optical-density direction of each crop's darkest 5%, at the classifier's input size), as its mean and as the
angle from the standard haematoxylin vector. With ``--weights`` (a fine13 / wang11 checkpoint): the share of the
set's crops called blast (one view, PyTorch, no white balance) as they are, in grey, and with the haematoxylin
concentration doubled: a share that falls in grey but not with more haematoxylin follows the stain's colour.
``--out FILE`` writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VIEWS = ("as is", "grey", "haematoxylin x2")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", nargs="*", default=[], metavar="NAME=PATH", help="cell crops: folders, files or globs")
    ap.add_argument("--data", nargs="*", default=["pbc", "lmu_aml"],
                    help="training laboratories' train split from ../shared/data (default pbc lmu_aml; none: --data)")
    ap.add_argument("--weights", help="a classifier checkpoint (.pt) whose blast share to probe")
    ap.add_argument("--n", type=int, default=150, help="at most N crops per set, drawn at random (default 150)")
    ap.add_argument("--size", type=int, default=192, help="resize to this first, as the classifier does (192)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="write the numbers here as JSON")
    args = ap.parse_args(argv)
    sets: dict[str, list] = {}
    for spec in args.sets:
        name, eq, path = spec.partition("=")
        if not eq or not name or not path:
            print(f"error: --sets takes NAME=PATH, not '{spec}'", file=sys.stderr)
            return 2
        sets[name] = [path]

    import numpy as np

    from classification.preprocess import nucleus_od_direction, resize_crops
    from core.io import read_sample
    from pipelines.inputs import expand_inputs

    paths: dict[str, list] = {}
    if args.data:
        from classification.data import load_samples

        for src in args.data:
            try:
                paths[src] = [p for p, _ in load_samples("fine13", "train", [src])]
            except (FileNotFoundError, ValueError) as e:
                print(f"note: --data {src}: {e} (skipped)", file=sys.stderr)
    for name, given in sets.items():
        paths[name] = [f.path for f in expand_inputs(given)[0]]
    crops = {}
    for name, ps in paths.items():
        imgs, notes = read_sample(ps, args.n, args.seed)
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        if imgs:
            crops[name] = resize_crops(imgs, args.size)
        else:
            print(f"note: {name}: no readable images (skipped)", file=sys.stderr)
    if not crops:
        print("error: no readable images in any set", file=sys.stderr)
        return 2

    from classification.train import HED_FROM_RGB_INV

    h = np.asarray(HED_FROM_RGB_INV[0], float)
    h /= np.linalg.norm(h)
    result = {}
    for name, x in crops.items():
        d = nucleus_od_direction(x).mean(0)
        d /= np.linalg.norm(d)
        result[name] = {"crops": len(x), "nucleus_od": [round(float(v), 3) for v in d],
                        "degrees_from_haematoxylin": round(float(np.degrees(np.arccos(np.clip(d @ h, -1, 1)))), 1)}
    if args.weights:
        blast_shares(crops, args.weights, result)
    print("| set | crops | nucleus OD (R, G, B) | degrees from haematoxylin |" +
          "".join(f" blast, {v} |" for v in VIEWS if args.weights))
    print("|---|---|---|---|" + "---|" * (len(VIEWS) if args.weights else 0))
    for name, r in result.items():
        print(f"| {name} | {r['crops']} | {r['nucleus_od']} | {r['degrees_from_haematoxylin']} |" +
              "".join(f" {r['blast'][v]:.1%} |" for v in VIEWS if args.weights))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"weights": args.weights, "sets": result}, indent=1))
    return 0


def blast_shares(crops: dict, weights: str, result: dict) -> None:
    """result[name]["blast"][view]: share of the set's crops whose top class is blast, per view of VIEWS."""
    import numpy as np

    from classification.models import load_checkpoint
    from classification.preprocess import to_tensor
    from classification.train import predict_logits, scale_stain

    model, meta = load_checkpoint(Path(weights))
    if "blast" not in meta["classes"]:
        raise SystemExit(f"error: {weights} has no blast class ({meta['classes']})")
    blast = meta["classes"].index("blast")

    def doubled_haematoxylin(x):
        t = scale_stain(to_tensor(x), 0, 2.0)
        return (t.permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)

    views = {"as is": lambda x: x, "grey": lambda x: x.mean(3, keepdims=True).round().astype(np.uint8).repeat(3, 3),
             "haematoxylin x2": doubled_haematoxylin}
    for name, x in crops.items():
        result[name]["blast"] = {
            v: round(float(np.mean(predict_logits(model, f(x), 128, meta["mean"], meta["std"]).argmax(1) == blast)), 4)
            for v, f in views.items()}


if __name__ == "__main__":
    sys.exit(main())
