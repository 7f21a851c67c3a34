#!/usr/bin/env python
"""Model x laboratory table: how pipeline configs' classifiers do on each laboratory's cells, the labs they were
trained on and those they were not (leave-one-lab-out model selection).

  python tools/prepare_cells.py --dataset bccd --out runs/cells/bccd          # once: detected BCCD leukocytes
  python tools/prepare_cells.py --dataset txl_pbc --out runs/cells/txl_pbc    # once: detected TXL-PBC leukocytes
  python tools/eval_labs.py --configs configs/pipeline/default.yaml OTHER.yaml --out out/eval/labs

Columns (every cell through the config's classifier cascade, as in a run; pre-cropped cells reframed as
``infer_field --cells`` frames them (the config's ``cells_reframe``), field cells as the pipeline cropped them):
- ``pbc8 PBC``: pbc8 accuracy on PBC test (3,411 cells).
- ``wang11 PBC+LMU``: wang11 mean class accuracy on the PBC + lmu_aml test cells with a wang11 class.
- ``LMU blast recall`` / ``LMU neut->blast``: lmu_aml test blasts called blast (wang11), segmented neutrophils
  called blast.
- ``BCCD test``: BCCD test fields' per-field subtype (5 classes) against the pbc8 verdict on the field's most
  confident WBC detection (as ``tools/eval_bccd_subtypes.py``), accuracy and mean class accuracy.
- ``blast BCCD`` / ``blast TXL``: share of every detected leukocyte of BCCD test / TXL-PBC test (normal smears, no
  leukaemia) whose final label is blast; ``blast TXL all``: all 500 TXL-PBC fields.
``--adabn``: before each laboratory, the PyTorch classifiers' batch-norm statistics are re-estimated on that
laboratory's own cells (test-time adaptation; ``classification.models.adapt_batchnorm`` at ``--alpha``); needs
``.pt`` weights in the config. ``--illuminant R G B``: every image (cells and fields' crops) multiplied by these
per-channel gains first: the same laboratories under another lamp or camera white point (e.g. ``1 0.9 0.55``, a
yellow cast like some laboratories' exports). ``--shift KIND:VALUE``: every image blurred (``blur:1.5``), saved as JPEG
(``jpeg:40``), down-sampled and back (``lowres:0.5``) or framed tighter (``tight:0.7``: the central 70%; a cell
fills more of the crop, as in some laboratories' exports) first. Writes OUT/labs.json and OUT/labs.md.

  python tools/eval_labs.py --configs configs/pipeline/default.yaml --illuminant 1 0.9 0.55 --out out/eval/labs_yellow
  python tools/eval_labs.py --configs configs/pipeline/default.yaml --shift jpeg:40 --out out/eval/labs_jpeg40
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SUBTYPES = ["neutrophil", "eosinophil", "lymphocyte", "monocyte", "basophil"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", required=True, help="pipeline configs to compare")
    ap.add_argument("--out", required=True, help="folder for labs.json and labs.md")
    ap.add_argument("--cells", default=str(ROOT / "runs" / "cells"), help="folder of tools/prepare_cells.py outputs "
                                                                          "(bccd/, txl_pbc/)")
    ap.add_argument("--adabn", action="store_true", help="test-time batch-norm adaptation on each lab's cells")
    ap.add_argument("--alpha", type=float, default=1.0, help="--adabn: weight of the lab's own statistics")
    ap.add_argument("--limit", type=int, default=0, help="at most N cells per set (smoke runs)")
    ap.add_argument("--illuminant", type=float, nargs=3, metavar=("R", "G", "B"), default=None,
                    help="per-channel gains applied to every image first (another lamp's colour)")
    ap.add_argument("--shift", default=None, metavar="KIND:VALUE",
                    help="an image shift applied to every image first (after --illuminant): " + ", ".join(
                        f"{k}:V ({v[1]})" for k, v in SHIFTS.items()))
    args = ap.parse_args(argv)
    if args.illuminant and not all(0 < g <= 4 for g in args.illuminant):
        print("error: --illuminant gains must be in (0, 4]", file=sys.stderr)
        return 2
    try:
        shift = parse_shift(args.shift)
    except ValueError as e:
        print(f"error: --shift: {e}", file=sys.stderr)
        return 2

    from classification.data import missing_cell_sets
    from core.io import read_image
    from pipelines.pipeline import Pipeline, load_pipeline_config

    cells = Path(args.cells)
    missing = missing_cell_sets(cells)
    if missing:
        print(f"error: {missing}", file=sys.stderr)
        return 2
    sets = lab_sets(cells, args.limit)
    images = {k: [read_image(p) for p, _ in v] for k, v in sets.items()}
    if args.illuminant:
        images = {k: [cast(im, args.illuminant) for im in v] for k, v in images.items()}
    if shift:
        images = {k: [shift(im) for im in v] for k, v in images.items()}
    print("cells: " + ", ".join(f"{k} {len(v)}" for k, v in sets.items()), flush=True)
    rows = {}
    for path in args.configs:
        pipe = Pipeline(load_pipeline_config(path), log=lambda m: None)
        torch_stages = [s for s in pipe.stages if hasattr(s.classifier, "model")]
        if args.adabn and not torch_stages:
            print(f"error: {path}: --adabn needs .pt classifier weights (PyTorch), not ONNX exports", file=sys.stderr)
            return 2
        out = {}
        for name, crops in images.items():
            if name in ("pbc_test", "lmu_test") and pipe.cfg["cells_reframe"]:  # as infer_field --cells frames them
                crops = [c for _, _, c in pipe.reframe_cells(crops)]
            saved = [({k: v.clone() for k, v in s.classifier.model.state_dict().items()}) for s in torch_stages]
            if args.adabn:
                adapt_stages(torch_stages, crops, args.alpha)
            res = []
            for i in range(0, len(crops), 256):
                res += pipe.classify(crops[i:i + 256])[0]
            for s, st in zip(torch_stages, saved):
                s.classifier.model.load_state_dict(st)
            out[name] = res
        rows[path] = score(sets, out)
        print(f"{path}: " + json.dumps(rows[path]), flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "labs.json").write_text(json.dumps({"adabn": args.adabn, "alpha": args.alpha,
                                                          "illuminant": args.illuminant, "shift": args.shift,
                                                          "n": {k: len(v) for k, v in sets.items()}, "rows": rows},
                                                         indent=1))
    md = table(rows, args.adabn)
    (Path(args.out) / "labs.md").write_text(md + "\n")
    print(md)
    return 0


def _blur(image, sigma):
    import cv2

    return cv2.GaussianBlur(image, (0, 0), sigma)


def _jpeg(image, quality):
    import cv2

    _, buf = cv2.imencode(".jpg", image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1].copy()


def _lowres(image, factor):
    import cv2

    h, w = image.shape[:2]
    small = cv2.resize(image, (max(1, round(w * factor)), max(1, round(h * factor))), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _tight(image, share):
    h, w = image.shape[:2]
    ch, cw = max(1, round(h * share)), max(1, round(w * share))
    top, left = (h - ch) // 2, (w - cw) // 2
    return image[top:top + ch, left:left + cw].copy()


# kind -> (function(image, value), what the value is, valid range)
SHIFTS = {"blur": (_blur, "Gaussian sigma in pixels of the image", (0.1, 10.0)),
          "jpeg": (_jpeg, "JPEG quality", (5, 100)),
          "lowres": (_lowres, "resolution kept: down-sampled by it, then back up", (0.1, 1.0)),
          "tight": (_tight, "share of width and height kept around the centre: tighter framing", (0.3, 1.0))}


def parse_shift(text: str | None):
    """``KIND:VALUE`` (a key of ``SHIFTS``) -> a function RGB uint8 image -> shifted image; None for None."""
    if not text:
        return None
    kind, _, value = text.partition(":")
    if kind not in SHIFTS:
        raise ValueError(f"unknown kind '{kind}'; valid: {', '.join(SHIFTS)}")
    fn, what, (lo, hi) = SHIFTS[kind]
    try:
        v = float(value)
    except ValueError:
        raise ValueError(f"'{text}': the value after '{kind}:' must be a number ({what})") from None
    if not lo <= v <= hi:
        raise ValueError(f"'{text}': {what} must be in [{lo:g}, {hi:g}]")
    return lambda image: fn(image, v)


def cast(image, gains):
    """``image`` (RGB uint8) under another illuminant: each channel multiplied by its gain, clipped."""
    from classification.preprocess import scale_channels

    return scale_channels(image, gains)


def lab_sets(cells: Path, limit: int = 0) -> dict[str, list]:
    """The cell sets of the table: name -> [(path, truth)] (truth: the dataset's label, '' when unlabelled; PBC and
    lmu_aml: (pbc8 label, fine13 label))."""
    import csv
    import random

    from classification.data import load_samples

    pbc = [(p, lab) for p, lab in load_samples("pbc8", "test")]
    fine = {str(p): lab for p, lab in load_samples("fine13", "test")}
    sets = {"pbc_test": [(p, (lab, fine.get(str(p), ""))) for p, lab in pbc],
            "lmu_test": [(p, (lab, lab)) for p, lab in load_samples("wang11", "test", ["lmu_aml"])]}

    def rows(name):
        with open(cells / name / "labels.csv", newline="") as f:
            return [(cells / name / r["path"], r) for r in csv.DictReader(f)]

    bccd = rows("bccd")
    sets["bccd_test_labelled"] = [(p, r["label"]) for p, r in bccd if r["split"] == "test" and r["label"]]
    sets["bccd_test_all"] = [(p, "") for p, r in bccd if r["split"] == "test"]
    txl = rows("txl_pbc")
    sets["txl_test"] = [(p, "") for p, r in txl if r["split"] == "test"]
    sets["txl_all"] = [(p, "") for p, r in txl]
    if limit:
        sets = {k: random.Random(0).sample(v, min(limit, len(v))) for k, v in sets.items()}
    return sets


def adapt_stages(stages, crops, alpha: float) -> None:
    """AdaBN of every PyTorch stage's network on ``crops`` (prepared as that stage prepares them)."""
    from classification.preprocess import resize_crops
    from classification.models import adapt_batchnorm

    for s in stages:
        clf = s.classifier
        x = clf.prepare_resized(resize_crops(crops, clf.input_size))
        try:
            adapt_batchnorm(clf.model, x, clf.meta["mean"], clf.meta["std"], alpha=alpha)
        except ValueError:  # no batch norm (GroupNorm networks): nothing to adapt
            pass


def score(sets: dict, out: dict) -> dict:
    """The table's figures from the cascade's results per set (``Pipeline.classify`` tuples)."""
    import numpy as np

    from classification.metrics import mean_class_of_labels as mean_class
    from classification.taxonomies import PARENT

    def task_label(r, task):
        return r[2][task].label if task in r[2] else None

    res = {}
    pbc = list(zip(sets["pbc_test"], out["pbc_test"]))
    res["pbc8_pbc_acc"] = round(float(np.mean([task_label(r, "pbc8") == t[0] for (_, t), r in pbc])), 4)
    wang = [(t[1], task_label(r, "wang11")) for (_, t), r in pbc if t[1] and t[1] not in ("neutrophil", "ig",
                                                                                       "erythroblast", "platelet")]
    wang += [(t[1], task_label(r, "wang11")) for (_, t), r in zip(sets["lmu_test"], out["lmu_test"])]
    res["wang11_pbc_lmu_mca"] = mean_class([t for t, _ in wang], [p for _, p in wang])
    lmu = [(t[1], task_label(r, "wang11")) for (_, t), r in zip(sets["lmu_test"], out["lmu_test"])]
    res["lmu_blast_recall"] = round(float(np.mean([p == "blast" for t, p in lmu if t == "blast"])), 4)
    res["lmu_neutrophil_called_blast"] = round(float(np.mean([p == "blast" for t, p in lmu if t != "blast"])), 4)

    def subtype(lab):
        lab = PARENT.get(lab, lab) if lab in ("band_neutrophil", "segmented_neutrophil") else lab
        return lab if lab in SUBTYPES else "other"

    b = [(t, subtype(task_label(r, "pbc8") or "")) for (_, t), r in zip(sets["bccd_test_labelled"],
                                                                         out["bccd_test_labelled"])]
    res["bccd_test_acc"] = round(float(np.mean([t == p for t, p in b])), 4)
    res["bccd_test_mca"] = mean_class([t for t, _ in b], [p for _, p in b])
    for name in ("bccd_test_all", "txl_test", "txl_all"):
        res[f"blast_share_{name}"] = round(float(np.mean([r[0] == "blast" for r in out[name]])), 4)
    return res


def table(rows: dict, adabn: bool) -> str:
    head = ("| config | pbc8 PBC test | wang11 PBC+LMU test (mean class) | LMU blast recall | LMU neut->blast | "
            "BCCD test acc (mean class) | blast BCCD test | blast TXL test | blast TXL all |")
    lines = [head, "|" + "---|" * 9]
    for path, r in rows.items():
        lines.append(f"| {Path(path).name}{' + AdaBN' if adabn else ''} | {r['pbc8_pbc_acc']:.4f} | "
                     f"{r['wang11_pbc_lmu_mca']:.4f} | {r['lmu_blast_recall']:.3f} | "
                     f"{r['lmu_neutrophil_called_blast']:.3f} | {r['bccd_test_acc']:.3f} ({r['bccd_test_mca']:.3f}) | "
                     f"{r['blast_share_bccd_test_all']:.3f} | {r['blast_share_txl_test']:.3f} | "
                     f"{r['blast_share_txl_all']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
