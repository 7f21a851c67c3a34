#!/usr/bin/env python
"""Average two classifier checkpoints of one network in weight space ("model soup", Wortsman et al. 2022): every
floating-point tensor, weights and batch-norm statistics, becomes ``(1 - alpha) * FIRST + alpha * SECOND``. Meant for
a network and a continuation trained from it (one start keeps the average in one basin of the loss; two unrelated
networks average to noise). The result keeps FIRST's metadata (classes, input size, normalization, training record,
plus a ``soup`` entry naming both); its temperature is refitted on the val cells of FIRST's training recipe
(``--keep-temperature``: FIRST's, where those cells are not on this machine); its familiarity score is not carried
over: fit it again, then export:

  python tools/average_classifiers.py classification/weights/fine13_lite0_192.pt \\
      runs/classifier/fine13_lite0_192_s4b.pt --alpha 0.5 --out runs/classifier/fine13_lite0_192_soup.pt
  python tools/fit_familiarity.py --weights runs/classifier/fine13_lite0_192_soup.pt
  python tools/export_onnx.py --classifier runs/classifier/fine13_lite0_192_soup.pt --out ....onnx
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SAME = ("arch", "task", "classes", "input_size", "mean", "std", "norm", "stain_reference")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("first", help="classifier checkpoint (.pt): the metadata comes from it")
    ap.add_argument("second", help="classifier checkpoint (.pt) of the same network")
    ap.add_argument("--alpha", type=float, default=0.5, help="weight of SECOND (default 0.5)")
    ap.add_argument("--out", required=True, help="the averaged checkpoint (.pt)")
    ap.add_argument("--keep-temperature", action="store_true", help="keep FIRST's temperature instead of refitting")
    args = ap.parse_args(argv)

    from classification.models import average_state_dicts, load_checkpoint, save_checkpoint

    out = Path(args.out)
    paths = [Path(args.first), Path(args.second)]
    if out.suffix.lower() != ".pt" or out.resolve() in [p.resolve() for p in paths]:
        print(f"error: --out {out}: give a new .pt path (not one of the inputs)", file=sys.stderr)
        return 2
    loaded = []
    for p in paths:
        try:
            loaded.append(load_checkpoint(p))
        except (OSError, RuntimeError, EOFError, ValueError) as e:
            print(f"error: {p}: cannot read a classifier checkpoint ({e})", file=sys.stderr)
            return 2
    (model, a), (second, b) = loaded
    differ = [k for k in SAME if a.get(k) != b.get(k)]
    if differ:
        print(f"error: the checkpoints differ in {', '.join(differ)}: not one network", file=sys.stderr)
        return 2
    try:
        model.load_state_dict(average_state_dicts(model.state_dict(), second.state_dict(), args.alpha))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    training = {**a["training"], "soup": {"first": str(paths[0]), "second": str(paths[1]), "alpha": args.alpha,
                                          "temperatures": [a["temperature"], b["temperature"]]}}

    def save(temperature, metrics):
        save_checkpoint(out, model, a["arch"], a["task"], a["classes"], a["input_size"], a["mean"], a["std"],
                        temperature, training=training, metrics=metrics, stain_reference=a.get("stain_reference"),
                        norm=a.get("norm", "batch"))

    temperature, metrics = float(a["temperature"]), {}
    save(temperature, metrics)
    if not args.keep_temperature:
        temperature, metrics = refit_temperature(out)
        save(temperature, metrics)
    print(json.dumps({"out": str(out), "alpha": args.alpha, "temperature": round(temperature, 4),
                      **({"val_accuracy": metrics["val"]["accuracy"],
                          "val_mean_class_accuracy": metrics["val"]["mean_class_accuracy"]} if metrics else {})}))
    return 0


def refit_temperature(path: Path) -> tuple[float, dict]:
    """The temperature of the checkpoint ``path`` fitted on the val cells of its training recipe (its sources' val
    split with the harmonized copies, its cell sets' val split, prepared as at inference), as training fits it; and
    the val metrics at it."""
    from classification.classifier import Classifier
    from classification.familiarity import fit_cells
    from classification.metrics import fit_temperature, softmax, summarize
    from classification.train import predict_logits

    clf = Classifier(path)
    cells = fit_cells(clf, "val", ("val",))
    logits = predict_logits(clf.model, cells["x"], mean=clf.meta["mean"], std=clf.meta["std"])
    fine = cells["y"] < len(clf.classes)
    t = fit_temperature(logits[fine], cells["y"][fine])
    return t, {"val": summarize(softmax(logits[fine], t), cells["y"][fine], clf.classes), "temperature": t}


if __name__ == "__main__":
    sys.exit(main())
