#!/usr/bin/env python
"""Crop the leukocytes of a field dataset the way the pipeline crops them, as a labelled cell set for training and
for the per-laboratory evaluation (``tools/eval_labs.py``):

  python tools/prepare_cells.py --dataset bccd --out runs/cells/bccd
  python tools/prepare_cells.py --dataset txl_pbc --out runs/cells/txl_pbc

Each field of every split goes through the pipeline config's detector (default: the shipped int8 YOLOv8n with
``auto_scale``); each WBC detection is cropped with the config's ``crop_margin`` (``pipelines.crop.crop_square``,
filled with the field's median colour) and written as OUT/<split>/<field>_<k>.png. ``OUT/labels.csv`` has
``path,label,split,source,field,det_score,iou_gt,primary`` (``path`` relative to the CSV).

Labels: BCCD's per-field subtype (``bccd/wbc_subtypes.csv``, fields with exactly one WBC box and one of
neutrophil / eosinophil / lymphocyte / monocyte / basophil) goes to the field's most confident WBC detection
(``primary`` 1, as ``tools/eval_bccd_subtypes.py`` scores it) when it overlaps the labelled box (IoU >= 0.3);
every other detection, and every TXL-PBC detection (no subtype labels), has an empty label: unlabelled cells of that
laboratory (e.g. the blast share on normal smears). ``--weak-label mature_leukocyte`` gives the unlabelled crops of
``--weak-splits`` (default train, val) that coarse label instead: TXL-PBC's smears are of normal donors (Raabin-WBC),
so each leukocyte is one of the mature classes, never a blast or an immature granulocyte:

  python tools/prepare_cells.py --dataset txl_pbc --out runs/cells/txl_pbc_weak --weak-label mature_leukocyte
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SUBTYPES = ("neutrophil", "eosinophil", "lymphocyte", "monocyte", "basophil")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True, choices=["bccd", "txl_pbc"], help="dataset card (datasets/*.yaml)")
    ap.add_argument("--out", required=True, help="output folder (crops and labels.csv)")
    ap.add_argument("--config", default=str(ROOT / "configs" / "pipeline" / "default.yaml"),
                    help="pipeline config whose detector and crop_margin are used")
    ap.add_argument("--splits", nargs="+", default=None, help="splits (default: every split of the card but "
                                                                "trainval)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--weak-label", help="label every otherwise unlabelled crop of the --weak-splits with this coarse "
                                         "label (e.g. mature_leukocyte for normal donors' smears: no blasts)")
    ap.add_argument("--weak-splits", nargs="+", default=["train", "val"], help="splits the weak label applies to "
                                                                               "(default train val; test stays "
                                                                               "unlabelled for evaluation)")
    args = ap.parse_args(argv)

    import numpy as np
    from tqdm import tqdm

    from detection import build_detector
    from detection.data import load_card, read_split
    from detection.yolo import box_iou
    from pipelines.crop import background_colour, crop_square
    from core.io import read_image, write_image
    from pipelines.pipeline import load_pipeline_config

    cfg = load_pipeline_config(args.config)
    card = load_card(args.dataset)
    splits = args.splits or [s for s in card["splits"] if s != "trainval"]
    subtypes = {}
    if args.dataset == "bccd":
        with open(card["root"] / "wbc_subtypes.csv", newline="") as f:
            subtypes = {r["image"]: r["category"].strip().lower() for r in csv.DictReader(f)
                        if r["n_wbc_boxes"] == "1" and r["category"].strip().lower() in SUBTYPES}
    det = build_detector(cfg["detector_cfg"])
    out = Path(args.out)
    rows, labelled, unmatched = [], 0, 0
    for split in splits:
        recs = read_split(card, split)
        (out / split).mkdir(parents=True, exist_ok=True)
        for i in tqdm(range(0, len(recs), args.batch), desc=f"{args.dataset} {split}", unit="batch"):
            batch = recs[i:i + args.batch]
            images = [read_image(r.path) for r in batch]
            for rec, im, d in zip(batch, images, det.detect(images)):
                wbc = [k for k, lab in enumerate(d.labels) if lab == "WBC"]
                if not wbc:
                    continue
                fill = background_colour(im)
                stem = Path(rec.path).stem
                label = subtypes.get(stem, "")
                gt = [b for b, lab in zip(rec.boxes, rec.labels) if lab == "WBC"]
                primary = max(wbc, key=lambda k: d.scores[k])
                for n, k in enumerate(sorted(wbc, key=lambda k: -d.scores[k])):
                    iou = float(box_iou(d.xyxy[k], np.asarray(gt, np.float32)).max()) if gt else 0.0
                    lab = label if (k == primary and iou >= 0.3) else ""
                    if not lab and args.weak_label and split in args.weak_splits:
                        lab = args.weak_label
                    if k == primary and label and not lab:
                        unmatched += 1
                    labelled += bool(lab)
                    name = f"{split}/{stem}_{n}.png"
                    write_image(out / name, crop_square(im, d.xyxy[k], cfg["crop_margin"], fill))
                    rows.append({"path": name, "label": lab, "split": split, "source": args.dataset, "field": stem,
                                 "det_score": round(float(d.scores[k]), 4), "iou_gt": round(iou, 3),
                                 "primary": int(k == primary)})
    with open(out / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["path", "label"])
        w.writeheader()
        w.writerows(rows)
    print(f"{len(rows)} crops ({labelled} labelled; {unmatched} labelled fields whose top WBC detection missed the "
          f"labelled box) -> {out / 'labels.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
