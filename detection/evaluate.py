"""Detection evaluation with pycocotools: AP50 per class (as in Wang et al.'s Table 1) and COCO mAP@[.5:.95].

AP uses COCO's 101-point interpolated precision (close to PASCAL VOC's all-point AP), all areas, 100 detections.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np

from detection.data import FieldAnnotation, to_coco


def predictions_from_records(records) -> dict[str, dict]:
    """A run's field records (``pipelines.results.read_records``) -> ``{resolved image path: {"boxes", "scores",
    "labels"}}`` from each cell's detector label and score (failed fields give no predictions)."""
    out = {}
    for rec in records:
        cells = rec.get("cells", [])
        out[str(Path(rec["path"]).resolve())] = {"boxes": [c["box"] for c in cells],
                                                 "scores": [c["det_score"] for c in cells],
                                                 "labels": [c["det_label"] for c in cells]}
    return out


def coco_evaluate(gt: list[FieldAnnotation], preds: dict[str, dict], classes: list[str]) -> dict:
    """AP50 and AP@[.5:.95] per class, their means, and the count of fields without predictions."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt_dict = to_coco(gt, classes)
    cat = {c: i + 1 for i, c in enumerate(classes)}
    dets, missing = [], 0
    for img, rec in zip(gt_dict["images"], gt):
        p = preds.get(str(Path(rec.path).resolve()))
        if p is None:
            missing += 1
            continue
        for b, s, lab in zip(p["boxes"], p["scores"], p["labels"]):
            if lab in cat:
                dets.append({"image_id": img["id"], "category_id": cat[lab],
                             "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": float(s)})
    with contextlib.redirect_stdout(io.StringIO()):
        cg = COCO()
        cg.dataset = gt_dict
        cg.createIndex()
        cd = cg.loadRes(dets) if dets else None
    per_class = {}
    if cd is None:
        per_class = {c: {"AP50": 0.0, "AP": 0.0} for c in classes}
    else:
        with contextlib.redirect_stdout(io.StringIO()):
            ev = COCOeval(cg, cd, "bbox")
            ev.params.maxDets = [1, 10, 100]
            ev.evaluate()
            ev.accumulate()
        prec = ev.eval["precision"]  # [T, R, K, A, M]
        for k, c in enumerate(classes):
            p50 = prec[0, :, k, 0, -1]
            pall = prec[:, :, k, 0, -1]
            has_gt = any(a["category_id"] == k + 1 and not a["iscrowd"] for a in gt_dict["annotations"])
            per_class[c] = {"AP50": round(float(p50[p50 > -1].mean()), 4) if has_gt and (p50 > -1).any() else None,
                            "AP": round(float(pall[pall > -1].mean()), 4) if has_gt and (pall > -1).any() else None}
    ap50 = [v["AP50"] for v in per_class.values() if v["AP50"] is not None]
    ap = [v["AP"] for v in per_class.values() if v["AP"] is not None]
    n_gt = {c: sum(1 for a in gt_dict["annotations"] if a["category_id"] == cat[c] and not a["iscrowd"])
            for c in classes}
    n_ignore = {c: sum(1 for a in gt_dict["annotations"] if a["category_id"] == cat[c] and a["iscrowd"])
                for c in classes}
    return {"fields": len(gt), "fields_without_predictions": missing, "gt_boxes": n_gt,
            "ignore_regions": {c: n for c, n in n_ignore.items() if n}, "per_class": per_class,
            "mAP50": round(float(np.mean(ap50)), 4) if ap50 else None,
            "mAP50_95": round(float(np.mean(ap)), 4) if ap else None}


def format_table(name: str, m: dict) -> str:
    """One Markdown table row set: per-class AP50 and AP, then the means."""
    lines = [f"| {name} | " + " | ".join(f"{c} {v['AP50']}" for c, v in m["per_class"].items())
             + f" | mAP50 {m['mAP50']} | mAP50-95 {m['mAP50_95']} |"]
    return "\n".join(lines)
