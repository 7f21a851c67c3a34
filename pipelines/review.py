"""FiftyOne review: a dataset built from a run's ``fields.jsonl`` (one sample per field, including fields without
cells and failed fields), optional ground truth, detection evaluation at IoU 0.5, and saved views.

Fields of each sample: ``smear_id``, ``field_id``, ``error``; ``predictions`` (label = final class, confidence =
final score, attributes ``det_label``, ``det_score`` and ``<task>_label`` / ``<task>_score`` per classifier);
``detections`` (the same boxes labelled with the detector's class, what is evaluated against ``ground_truth``);
``ground_truth`` when given. Evaluation key ``eval``: per-box ``eval`` = tp / fp / fn on ``detections`` and
``ground_truth``. Saved views: ``eval_patches`` and ``cells_<label>`` (one per final class).
FiftyOne is imported only here (and only by ``tools/review.py``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from classification.classifier import Classifier
from core.io import read_image, safe_name, write_image
from detection.data import read_coco, read_voc
from pipelines.crop import background_colour, crop_square
from pipelines.fo_convert import rel_xywh_to_xyxy, xyxy_to_rel_xywh
from pipelines.results import read_records


def read_ground_truth(path: Path, fmt: str, classes: list[str]) -> dict[str, tuple[list, list]]:
    """Ground truth keyed by image path without suffix, as the source names it (COCO ``file_name`` such as
    ``smear_01/field_001``; VOC and YOLO: the file stem): ``{key: (xyxy boxes, labels)}``. Samples are matched by
    the longest trailing part of their path that is a key (``match_ground_truth``)."""

    path = Path(path)
    if not path.exists():
        raise ValueError(f"ground truth not found: {path}")
    out: dict[str, tuple[list, list]] = {}
    if fmt == "voc":
        if path.is_dir() and not any(path.glob("*.xml")) and (path / "Annotations").is_dir():
            path = path / "Annotations"  # the dataset root was given
        for x in sorted(path.glob("*.xml")):
            r = read_voc(x)
            out[x.stem] = (r.boxes, r.labels)
    elif fmt == "coco":
        for r in read_coco(path, Path("")):
            out[Path(r.path).with_suffix("").as_posix()] = (r.boxes, r.labels)
    elif fmt == "yolo":
        files = sorted(path.glob("*.txt"))
        if not files and (path / "labels").is_dir():  # the dataset root was given: labels/<split>/*.txt
            files = sorted((path / "labels").rglob("*.txt"))
        for t in files:
            rows = [ln.split() for ln in t.read_text().splitlines() if len(ln.split()) >= 5]
            # relative cx, cy, w, h: converted once the image size is known (_gt_detections)
            boxes = [[float(v) for v in r[1:5]] for r in rows]
            out[t.stem] = ("yolo-relative", (boxes, [classes[int(r[0])] for r in rows]))
    else:
        raise ValueError(f"unknown ground-truth format '{fmt}'; valid: voc, yolo, coco")
    if not out:
        raise ValueError(f"no {fmt} annotations found in {path} (voc: a folder of .xml files or a dataset root with "
                         "Annotations/; yolo: a folder of .txt files or a root with labels/; coco: a JSON file)")
    return out


def match_ground_truth(gt: dict, image_path: str):
    """The ground-truth entry whose key is the longest trailing part of ``image_path`` (suffix dropped), or None."""
    parts = Path(image_path).with_suffix("").parts
    for n in range(len(parts), 0, -1):
        key = "/".join(parts[-n:])
        if key in gt:
            return gt[key]
    return None


def _gt_detections(fo, entry, width, height):
    if entry[0] == "yolo-relative":
        boxes, labels = entry[1]
        dets = [fo.Detection(label=lab, bounding_box=[cx - w / 2, cy - h / 2, w, h])
                for (cx, cy, w, h), lab in zip(boxes, labels)]
    else:
        boxes, labels = entry
        dets = [fo.Detection(label=lab, bounding_box=xyxy_to_rel_xywh(b, width, height))
                for b, lab in zip(boxes, labels)]
    return fo.Detections(detections=dets)


def field_cam_map(run_dir: Path, rec: dict, crop_margin: float) -> Path | None:
    """The field's Grad-CAM heatmap (``infer_field --save-cams``): each classified cell's map pasted where its crop
    lies (max where crops overlap), written as ``cams/<smear>/<field>_field.png`` (8-bit, the field's size).
    None when the run has no maps for this field."""
    import cv2
    import numpy as np

    d = Path(run_dir) / "cams" / safe_name(rec["smear_id"])
    stem = Path(rec["field_id"]).name
    h, w = rec["height"], rec["width"]
    canvas, found = np.zeros((h, w), np.uint8), False
    for k, c in enumerate(rec["cells"]):
        p = d / f"{stem}_{k:03d}.png"
        if not c.get("classes") or not p.exists():
            continue
        x1, y1, x2, y2 = c["box"]
        side = max(1, int(round(max(x2 - x1, y2 - y1) * (1 + 2 * crop_margin))))
        a, b = int(round((x1 + x2) / 2 - side / 2)), int(round((y1 + y2) / 2 - side / 2))
        cam = cv2.resize(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE), (side, side))
        xa, ya, xb, yb = max(0, a), max(0, b), min(w, a + side), min(h, b + side)
        if xb <= xa or yb <= ya:
            continue
        part = cam[ya - b:yb - b, xa - a:xb - a]
        canvas[ya:yb, xa:xb] = np.maximum(canvas[ya:yb, xa:xb], part)
        found = True
    if not found:
        return None
    out = d / f"{stem}_field.png"
    cv2.imwrite(str(out), canvas)
    return out


def build_dataset(run_dir: Path, name: str, gt: dict | None = None, overwrite: bool = True, log=print,
                  crop_margin: float = 0.75):
    """Create (or rebuild) the FiftyOne dataset ``name`` from ``run_dir/fields.jsonl``; returns it."""
    import fiftyone as fo

    run_dir = Path(run_dir)
    if overwrite and name in fo.list_datasets():
        fo.delete_dataset(name)
    ds = fo.Dataset(name)
    ds.persistent = True
    samples, n_gt = [], 0
    for rec in read_records(run_dir):
        tags = (["failed"] if rec["error"] else []) + (["small_cells"] if rec.get("rescaled_imgsz") else [])
        s = fo.Sample(filepath=rec["path"], smear_id=rec["smear_id"], field_id=rec["field_id"],
                      error=rec["error"], tags=tags)  # small_cells: auto_scale re-detected it (rescaled_imgsz)
        w, h = rec["width"], rec["height"]
        preds, dets = [], []
        for c in rec["cells"]:
            rel = xyxy_to_rel_xywh(c["box"], w, h)
            attrs = {"det_label": c["det_label"], "det_score": c["det_score"]}
            for task, v in (c.get("classes") or {}).items():
                attrs[f"{task}_label"], attrs[f"{task}_score"] = v["label"], v["score"]
            preds.append(fo.Detection(label=c["label"], bounding_box=rel, confidence=c["score"], **attrs))
            dets.append(fo.Detection(label=c["det_label"], bounding_box=rel, confidence=c["det_score"]))
        if w and h:
            s["predictions"] = fo.Detections(detections=preds)
            s["detections"] = fo.Detections(detections=dets)
            # what a reviewer looks at: the classified leukocytes, by final class (cell index k into "cells")
            s["leukocytes"] = fo.Detections(detections=[
                fo.Detection(label=c["label"], bounding_box=p.bounding_box, confidence=c["score"],
                             cell_index=k, ood=c.get("ood"), **{a: p[a] for a in p.field_names
                                                                 if a.endswith(("_label", "_score"))})
                for k, (c, p) in enumerate(zip(rec["cells"], preds)) if c.get("classes")])
            cam = field_cam_map(run_dir, rec, crop_margin) if (run_dir / "cams").is_dir() else None
            if cam is not None:  # Grad-CAM of the classified cells (infer_field --save-cams)
                s["gradcam"] = fo.Heatmap(map_path=str(cam.resolve()), range=[0, 255])
        entry = match_ground_truth(gt, rec["path"]) if gt is not None else None
        if entry is not None and w and h:
            s["ground_truth"] = _gt_detections(fo, entry, w, h)
            s["gt_leukocytes"] = fo.Detections(detections=[d for d in s["ground_truth"].detections
                                                           if d.label == "WBC"])
            n_gt += 1
        samples.append(s)
    if gt is not None and not n_gt:
        raise ValueError(f"none of the {len(samples)} fields of {run_dir} matched the ground truth's "
                         f"{len(gt)} entries (matched by file name, e.g. {next(iter(gt))!r}): wrong --gt folder?")
    ds.add_samples(samples)
    ds.compute_metadata()
    info = {"samples": len(ds), "with_ground_truth": n_gt}
    if n_gt:
        res = ds.match_tags("failed", bool=False).exists("ground_truth").evaluate_detections(
            "detections", gt_field="ground_truth", eval_key="eval", iou=0.5, compute_mAP=True)
        info["mAP"] = round(float(res.mAP()), 4)
        info["tp"], info["fp"], info["fn"] = (int(ds.sum(f"eval_{k}") or 0) for k in ("tp", "fp", "fn"))
        ds.save_view("eval_patches", ds.to_evaluation_patches("eval"))
    labels = sorted(set(ds.distinct("predictions.detections.label")))
    patches = ds.to_patches("predictions")
    for lab in labels:
        from fiftyone import ViewField as F

        ds.save_view(f"cells_{_slug(lab)}", patches.match(F("predictions.label") == lab))
    info["cell_views"] = [f"cells_{_slug(lab)}" for lab in labels]
    if ds.has_field("leukocytes"):  # the app opens on the leukocytes, by class, not on every red-cell box
        ds.save_view(REVIEW_VIEW, ds.to_patches("leukocytes").sort_by("leukocytes.label"))
        ds.app_config.active_fields = fo.ActiveFields(paths=["leukocytes", "gt_leukocytes"])  # gradcam: toggle it
        ds.app_config.color_scheme = fo.ColorScheme(color_by="value")
    ds.info = {"run_dir": str(run_dir.resolve()), **info}
    ds.save()
    log(json.dumps({"dataset": name, **info}))
    return ds


REVIEW_VIEW = "review_leukocytes"  # patches of the classified leukocytes, by final class: where review happens
CONFIRM_TAG = "confirmed"  # a label tag that confirms the cell's final class; a class name as tag corrects it
REJECT_TAG = "not_a_cell"  # a label tag that drops the box (not a leukocyte) from the export


def review_tags(ds) -> int:
    """How many leukocyte labels carry review tags (a rebuild would lose them)."""
    if not ds.has_field("leukocytes"):
        return 0
    return int(sum(ds.count_label_tags("leukocytes").values()))


def reviewed_label(tags: list[str], predicted: str, classes: set[str]) -> str | None:
    """The reviewed class of a cell from its label tags: a tag naming a class corrects it, ``confirmed`` keeps the
    predicted class (when it is a class), ``not_a_cell`` or no review tag gives None. Raises ``ValueError`` for
    tags naming two different classes."""
    named = sorted({t for t in tags if t in classes})
    if len(named) > 1:
        raise ValueError(f"a cell is tagged with two classes {named}")
    if REJECT_TAG in tags:
        return None
    if named:
        return named[0]
    if CONFIRM_TAG in tags and predicted in classes:
        return predicted
    return None


def export_reviewed(ds, out_dir: Path, classes: set[str], crop_margin: float = 0.75, log=print) -> dict:
    """Write the reviewed leukocytes (``reviewed_label``) as crops, framed as the pipeline frames them, under
    ``out_dir/cells/`` and ``out_dir/labels.csv`` (``path,label,field_id,box``, header, paths relative to the CSV):
    the input of ``tools/adapt_classifier.py --labels``. Returns counts per label."""
    import csv


    out_dir = Path(out_dir)
    (out_dir / "cells").mkdir(parents=True, exist_ok=True)
    rows, counts = [], {}
    view = ds.match_tags("failed", bool=False).select_fields(["leukocytes", "field_id"])
    for sample in view.iter_samples():
        cells = [(d, reviewed_label(list(d.tags or []), d.label, classes))
                 for d in (sample.leukocytes.detections if sample.leukocytes else [])]
        cells = [(d, lab) for d, lab in cells if lab]
        if not cells:
            continue
        img = read_image(sample.filepath)
        h, w = img.shape[:2]
        fill = background_colour(img)
        for d, lab in cells:
            box = [round(v, 1) for v in rel_xywh_to_xyxy(d.bounding_box, w, h)]
            name = f"cells/{_slug(sample.field_id)}_{d.cell_index}.png"
            write_image(out_dir / name, crop_square(img, box, crop_margin, fill))
            rows.append({"path": name, "label": lab, "field_id": sample.field_id, "box": " ".join(map(str, box))})
            counts[lab] = counts.get(lab, 0) + 1
    with open(out_dir / "labels.csv", "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=["path", "label", "field_id", "box"])
        wr.writeheader()
        wr.writerows(rows)
    log(json.dumps({"labels_csv": str(out_dir / "labels.csv"), "cells": len(rows), "per_label": counts}))
    return counts


def add_cell_embeddings(ds, weights, crop_margin: float = 0.75, method: str = "tsne",
                        brain_key: str = "cell_embeddings", log=print) -> int:
    """Embeddings map of the cells a classifier saw: every prediction with a ``<task>_label`` attribute is cropped
    from its field as the pipeline crops it, run through the classifier (``.pt``; its penultimate layer) and laid
    out in 2-D by fiftyone-brain (``tsne``, or ``pca``; PCA below 40 cells). Browse it in the app's Embeddings
    panel (brain key ``brain_key``). Returns the number of cells embedded."""
    import fiftyone.brain as fob
    from fiftyone import ViewField as F


    clf = Classifier(weights)
    attr = f"{clf.task}_label"
    view = ds.match_tags("failed", bool=False).filter_labels("predictions", F(attr).exists())
    emb, n = {}, 0  # sample id -> (cells, D) features, in the view's label order
    for sample in view.select_fields("predictions").iter_samples():
        img = read_image(sample.filepath)
        h, w = img.shape[:2]
        fill = background_colour(img)
        crops = [crop_square(img, rel_xywh_to_xyxy(d.bounding_box, w, h), crop_margin, fill)
                 for d in sample.predictions.detections]
        emb[sample.id] = clf.features(crops)
        n += len(crops)
    if n < 3:
        log(f"embeddings: {n} cells with {attr}; no map")
        return n
    if ds.has_brain_run(brain_key):
        ds.delete_brain_run(brain_key)
    method = "pca" if n < 40 else method
    fob.compute_visualization(view, patches_field="predictions", embeddings=emb, method=method,
                              brain_key=brain_key, **({"seed": 0} if method == "tsne" else {}))
    log(json.dumps({"embeddings": brain_key, "cells": n, "classifier": clf.name, "method": method}))
    return n


def _slug(s: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in s).lower()


def configure_fiftyone() -> None:
    """Offline, no tracking; a project-local database folder unless the user set one."""
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
    os.environ.setdefault("FIFTYONE_SHOW_PROGRESS_BARS", "false")
    os.environ.setdefault("FIFTYONE_DATABASE_DIR", str(Path.home() / ".cache" / "leukodiff" / "fiftyone-db"))
