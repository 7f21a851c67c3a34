"""Readers for detection datasets: Pascal VOC (BCCD), YOLO txt (TXL-PBC) and COCO JSON.

Every reader returns ``FieldAnnotation`` records with boxes in absolute pixels of the original image, ``xyxy``
(x1 < x2, y1 < y2, float), and string labels from the dataset card's ``classes``. Dataset cards live in
``datasets/*.yaml``; their ``root`` is relative to the data root (``core.config.data_root()``).
"""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from core.config import REPO_ROOT, REQUIRED, ConfigError, Field, data_root, load_yaml, validate

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}

CARD_SCHEMA = {
    "name": Field(str, None, "dataset name"),
    "format": Field(str, None, "voc | yolo | coco | manifest"),
    "root": Field(str, None, "folder of the dataset, relative to the data root or absolute"),
    "classes": Field(list, None, "class names, index order"),
    "splits": Field(dict, {}, "split name -> list file (voc), image folder (yolo), json (coco), value (manifest)"),
    "label_column": Field(str, "label", "manifest: column holding the class"),
    "image_size": Field(list, None, "typical width, height of the images"),
    "source": Field(str, "", "where the data comes from"),
    "license": Field(str, "", "license of the data"),
    "notes": Field(str, "", "known quirks"),
}


@dataclass(frozen=True)
class FieldAnnotation:
    """Ground truth of one image: absolute-pixel ``xyxy`` boxes and their string labels. ``ignore_boxes`` /
    ``ignore_labels``: regions where a detection of that label is neither right nor wrong (COCO crowd regions; set
    by an annotation review, see ``apply_review``)."""

    path: Path
    width: int
    height: int
    boxes: list[list[float]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    ignore_boxes: list[list[float]] = field(default_factory=list)
    ignore_labels: list[str] = field(default_factory=list)


REVIEW_SCHEMA = {
    "dataset": Field(str, REQUIRED, "dataset card name the review belongs to"),
    "reviewed": Field(str, REQUIRED, "what was reviewed, by whom / how, when"),
    "classes": Field(list, REQUIRED, "classes the review adds or ignores (what was checked: `reviewed`)"),
    "fields": Field(dict, {}, "image file name -> {add: [{label, box}], ignore: [{label, box}], note}"),
}
REVIEW_FIELD_SCHEMA = {
    "add": Field(list, [], "objects the annotation missed: {label, box: [x1, y1, x2, y2]} in original pixels"),
    "ignore": Field(list, [], "regions to ignore: {label, box}: cells cut by the image edge, smudge cells"),
    "note": Field(str, "", "what the reviewer saw"),
}


def load_review(path) -> dict:
    """Read and validate an annotation review (``datasets/*_review.yaml``; ``REVIEW_SCHEMA``)."""
    rev = validate(load_yaml(path), REVIEW_SCHEMA, str(path))
    for name, entry in rev["fields"].items():
        where = f"{path}: fields.{name}"
        entry = rev["fields"][name] = validate(entry or {}, REVIEW_FIELD_SCHEMA, where)
        for kind in ("add", "ignore"):
            for obj in entry[kind]:
                box = obj.get("box") if isinstance(obj, dict) else None
                if (not isinstance(obj, dict) or obj.get("label") not in rev["classes"] or not isinstance(box, list)
                        or len(box) != 4 or not box[0] < box[2] or not box[1] < box[3]):
                    raise ConfigError(f"{where}.{kind}: each entry needs a label of {rev['classes']} and a box "
                                      f"[x1, y1, x2, y2] with x1 < x2, y1 < y2; got {obj!r}")
    return rev


def apply_review(records: list[FieldAnnotation], review: dict) -> tuple[list[FieldAnnotation], int]:
    """Records with a review's added objects and ignore regions (matched by image file name). Returns the new
    records and how many of them the review changed. A reviewed field outside the image raises ``ConfigError``."""
    out, changed = [], 0
    for r in records:
        entry = review["fields"].get(Path(r.path).name)
        if not entry or not (entry["add"] or entry["ignore"]):
            out.append(r)
            continue
        for obj in entry["add"] + entry["ignore"]:
            x1, y1, x2, y2 = obj["box"]
            if x1 < 0 or y1 < 0 or x2 > r.width or y2 > r.height:
                raise ConfigError(f"review of {Path(r.path).name}: box {obj['box']} is outside the "
                                  f"{r.width}x{r.height} image")
        out.append(FieldAnnotation(r.path, r.width, r.height,
                                   r.boxes + [[float(v) for v in o["box"]] for o in entry["add"]],
                                   r.labels + [o["label"] for o in entry["add"]],
                                   r.ignore_boxes + [[float(v) for v in o["box"]] for o in entry["ignore"]],
                                   r.ignore_labels + [o["label"] for o in entry["ignore"]]))
        changed += 1
    return out, changed


def load_card(name_or_path: str | Path) -> dict:
    """Load a dataset card by name (``bccd``) or path; ``root`` becomes an absolute ``Path``."""
    p = Path(name_or_path)
    if not p.suffix:
        p = REPO_ROOT / "datasets" / f"{name_or_path}.yaml"
    card = validate(load_yaml(p), CARD_SCHEMA, str(p))
    root = Path(card["root"] or p.parent)
    card["root"] = root if root.is_absolute() else data_root() / root
    return card


def read_split(card: dict, split: str, min_size: float = 2.0) -> list[FieldAnnotation]:
    """Read one split of a detection dataset card. Boxes smaller than ``min_size`` px on a side are dropped."""
    if split not in card["splits"]:
        raise ConfigError(f"dataset {card['name']}: no split '{split}'; splits: {sorted(card['splits'])}")
    root, spec = card["root"], card["splits"][split]
    if not root.exists():
        raise FileNotFoundError(f"dataset {card['name']}: data folder {root} does not exist")
    fmt = card["format"]
    if fmt == "voc":
        ids = [s.strip() for s in (root / spec).read_text().split() if s.strip()]
        recs = [read_voc(root / "Annotations" / f"{i}.xml", root / "JPEGImages") for i in ids]
    elif fmt == "yolo":
        img_dir = root / spec
        images = sorted(p for p in img_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        recs = [read_yolo(p, yolo_label_path(p), card["classes"]) for p in images]
    elif fmt == "coco":
        recs = read_coco(root / spec, root)
    else:
        raise ConfigError(f"dataset {card['name']}: format '{fmt}' is not a detection format (voc, yolo, coco)")
    return [_drop_small(r, min_size) for r in recs]


def _drop_small(rec: FieldAnnotation, min_size: float) -> FieldAnnotation:
    keep = [i for i, b in enumerate(rec.boxes) if b[2] - b[0] >= min_size and b[3] - b[1] >= min_size]
    return FieldAnnotation(rec.path, rec.width, rec.height, [rec.boxes[i] for i in keep], [rec.labels[i] for i in keep],
                           rec.ignore_boxes, rec.ignore_labels)


def read_voc(xml_path: Path, image_dir: Path | None = None) -> FieldAnnotation:
    """Read one Pascal VOC XML file. VOC pixel coordinates are 1-based inclusive; they are kept as written
    (BCCD's annotations are not consistent about it, and the difference is below annotation noise)."""
    root = ET.parse(xml_path).getroot()
    size = root.find("size")
    w, h = int(float(size.find("width").text)), int(float(size.find("height").text))
    image_dir = image_dir or xml_path.parent.parent / "JPEGImages"
    boxes, labels = [], []
    for obj in root.findall("object"):
        bb = obj.find("bndbox")
        x1, y1, x2, y2 = (float(bb.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))
        x1, x2 = sorted((max(0.0, x1), min(float(w), x2)))
        y1, y2 = sorted((max(0.0, y1), min(float(h), y2)))
        boxes.append([x1, y1, x2, y2])
        labels.append(obj.find("name").text.strip())
    return FieldAnnotation(image_dir / root.find("filename").text.strip(), w, h, boxes, labels)


def yolo_label_path(image_path: Path) -> Path:
    """Ultralytics convention: ``.../images/<split>/x.jpg`` -> ``.../labels/<split>/x.txt``."""
    parts = list(image_path.parts)
    idx = len(parts) - 1 - parts[::-1].index("images")
    parts[idx] = "labels"
    return Path(*parts).with_suffix(".txt")


def read_yolo(image_path: Path, label_path: Path, classes: list[str], size: tuple[int, int] | None = None):
    """Read a YOLO txt label file (``class cx cy w h``, relative) into absolute ``xyxy``. A missing file means no
    objects. ``size`` (width, height) avoids opening the image when known."""
    if size is None:
        from PIL import Image

        with Image.open(image_path) as im:
            size = im.size
    w, h = size
    boxes, labels = [], []
    if label_path.exists():
        for line in label_path.read_text().splitlines():
            vals = line.split()
            if len(vals) < 5:
                continue
            c, cx, cy, bw, bh = int(vals[0]), *map(float, vals[1:5])
            x1, y1 = max(0.0, (cx - bw / 2) * w), max(0.0, (cy - bh / 2) * h)
            x2, y2 = min(float(w), (cx + bw / 2) * w), min(float(h), (cy + bh / 2) * h)
            boxes.append([x1, y1, x2, y2])
            labels.append(classes[c])
    return FieldAnnotation(image_path, w, h, boxes, labels)


def read_coco(json_path: Path, image_root: Path | None = None) -> list[FieldAnnotation]:
    """Read a COCO detection JSON (``bbox`` is ``[x, y, w, h]`` absolute) into absolute ``xyxy`` records."""
    data = json.loads(Path(json_path).read_text())
    cats = {c["id"]: c["name"] for c in data["categories"]}
    per_image: dict[int, list] = {im["id"]: [] for im in data["images"]}
    for a in data.get("annotations", []):
        per_image[a["image_id"]].append(a)
    image_root = image_root or Path(json_path).parent
    out = []
    for im in data["images"]:
        anns = per_image[im["id"]]
        boxes = [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns]
        out.append(FieldAnnotation(image_root / im["file_name"], im["width"], im["height"], boxes,
                                   [cats[a["category_id"]] for a in anns]))
    return out


def to_coco(records: list[FieldAnnotation], classes: list[str]) -> dict:
    """Records -> COCO ground-truth dict (category ids 1..K in ``classes`` order, image ids 1..N; ignore regions
    as ``iscrowd`` annotations)."""
    cat_id = {c: i + 1 for i, c in enumerate(classes)}
    images, anns = [], []
    for i, r in enumerate(records, 1):
        images.append({"id": i, "file_name": str(r.path), "width": r.width, "height": r.height})
        crowd = [0] * len(r.boxes) + [1] * len(r.ignore_boxes)  # pycocotools ignores detections on crowd regions
        for b, lab, c in zip(r.boxes + r.ignore_boxes, r.labels + r.ignore_labels, crowd):
            if lab not in cat_id:
                continue
            w, h = b[2] - b[0], b[3] - b[1]
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cat_id[lab], "bbox": [b[0], b[1], w, h],
                         "area": w * h, "iscrowd": c})
    return {"images": images, "annotations": anns, "categories": [{"id": v, "name": k} for k, v in cat_id.items()]}


def write_yolo_dataset(parts: dict[str, list[FieldAnnotation]], classes: list[str], out_dir: Path) -> Path:
    """Write records as an Ultralytics dataset (images copied, labels as txt) and return its ``data.yaml``.

    ``parts`` maps a split name (``train``, ``val``, ``test``) to records, possibly from several datasets; image
    names are prefixed with their parent folder name (``JPEGImages``, ``train``, ...) to stay unique.
    """
    import yaml

    out_dir = Path(out_dir)
    index = {c: i for i, c in enumerate(classes)}
    for split, recs in parts.items():
        (out_dir / "images" / split).mkdir(parents=True, exist_ok=True)
        (out_dir / "labels" / split).mkdir(parents=True, exist_ok=True)
        for r in recs:
            stem = f"{r.path.parent.name}_{r.path.stem}"
            dst = out_dir / "images" / split / f"{stem}{r.path.suffix.lower()}"
            if not dst.exists():
                shutil.copyfile(r.path, dst)
            lines = []
            for b, lab in zip(r.boxes, r.labels):
                if lab not in index:
                    continue
                cx, cy = (b[0] + b[2]) / 2 / r.width, (b[1] + b[3]) / 2 / r.height
                bw, bh = (b[2] - b[0]) / r.width, (b[3] - b[1]) / r.height
                lines.append(f"{index[lab]} {cx:.6f} {cy:.6f} {bw:.6f} {bh:.6f}")
            (out_dir / "labels" / split / f"{stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    data_yaml = out_dir / "data.yaml"
    data_yaml.write_text(yaml.safe_dump({"path": str(out_dir.resolve()), **{s: f"images/{s}" for s in parts},
                                         "names": {i: c for i, c in enumerate(classes)}}, sort_keys=False))
    return data_yaml
