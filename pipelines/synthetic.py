"""Deterministic renderer of synthetic peripheral blood smear fields, with ground truth.

The project cannot ship real images, so the demo and the tests draw their own: a light background, red cells with
central pallor, leukocytes (neutrophil, lymphocyte, monocyte, eosinophil look-alikes: pale cytoplasm with a dark
violet, lobed / round / kidney-shaped nucleus) and platelets, at roughly the scale of the real fields the detector
is trained on. The same seed gives the same field, byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from core.io import write_image

WBC_KINDS = ("neutrophil", "lymphocyte", "monocyte", "eosinophil")


@dataclass(frozen=True)
class SyntheticField:
    """A rendered field: RGB uint8 ``image``; ``boxes`` ``xyxy`` pixels, ``labels`` (WBC/RBC/Platelets) and, for
    WBCs, ``kinds`` (the leukocyte type drawn; None for other labels)."""

    image: np.ndarray
    boxes: list[list[float]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    kinds: list[str | None] = field(default_factory=list)


def _blend(img, mask, color):
    """Alpha-blend ``color`` (3,) into ``img`` (float HxWx3) with ``mask`` in [0, 1]."""
    img += mask[..., None] * (np.asarray(color, np.float32) - img)


class _Canvas:
    """Float image with windowed drawing: masks are computed only around the object being drawn."""

    def __init__(self, img):
        self.img = img
        self.win = (slice(0, img.shape[0]), slice(0, img.shape[1]))
        self.yy = self.xx = None

    def focus(self, cy, cx, r):
        h, w = self.img.shape[:2]
        y0, y1 = max(0, int(cy - r - 3)), min(h, int(cy + r + 4))
        x0, x1 = max(0, int(cx - r - 3)), min(w, int(cx + r + 4))
        self.win = (slice(y0, y1), slice(x0, x1))
        self.yy, self.xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)

    def disc(self, cy, cx, ry, rx, angle=0.0, edge=1.5):
        return _disc(self.yy, self.xx, cy, cx, ry, rx, angle, edge)

    def blend(self, mask, color):
        _blend(self.img[self.win], mask, color)


def _disc(yy, xx, cy, cx, ry, rx, angle=0.0, edge=1.5):
    c, s = np.cos(angle), np.sin(angle)
    u, v = (xx - cx) * c + (yy - cy) * s, -(xx - cx) * s + (yy - cy) * c
    d = np.sqrt((u / rx) ** 2 + (v / ry) ** 2)  # 1 at the rim
    return np.clip((1 - d) * min(rx, ry) / edge + 0.5, 0, 1), d


def render_field(seed: int, width: int = 732, height: int = 574, n_wbc: int | None = None, n_rbc: int | None = None,
                 n_platelets: int | None = None, wbc_kinds: list[str] | None = None) -> SyntheticField:
    """Render one field. Counts default to random draws (WBC 1-3, RBC 12-22, platelets 2-6) from ``seed``."""
    rng = np.random.default_rng(seed)
    n_wbc = int(rng.integers(1, 4)) if n_wbc is None else n_wbc
    n_rbc = int(rng.integers(12, 23)) if n_rbc is None else n_rbc
    n_platelets = int(rng.integers(2, 7)) if n_platelets is None else n_platelets
    bg = np.array([232, 222, 226], np.float32) + rng.normal(0, 4, 3)
    img = np.empty((height, width, 3), np.float32)
    img[:] = bg
    cv = _Canvas(img)
    placed: list[tuple[float, float, float]] = []

    def place(r, tries=200, overlap=0.15):
        for _ in range(tries):
            cx, cy = rng.uniform(r * 0.3, width - r * 0.3), rng.uniform(r * 0.3, height - r * 0.3)
            if all((cx - px) ** 2 + (cy - py) ** 2 > ((r + pr) * (1 - overlap)) ** 2 for px, py, pr in placed):
                placed.append((cx, cy, r))
                return cx, cy
        return None

    boxes: list[list[float]] = []
    labels: list[str] = []
    kinds: list[str | None] = []

    def add_box(cx, cy, rx, ry, label, kind=None):
        x1, y1, x2, y2 = max(0.0, cx - rx), max(0.0, cy - ry), min(float(width), cx + rx), min(float(height), cy + ry)
        if x2 - x1 > 4 and y2 - y1 > 4:
            boxes.append([round(x1, 1), round(y1, 1), round(x2, 1), round(y2, 1)])
            labels.append(label)
            kinds.append(kind)

    # leukocytes first, so red cells pack around them
    kinds_drawn = list(wbc_kinds) if wbc_kinds else [WBC_KINDS[int(rng.integers(len(WBC_KINDS)))]
                                                     for _ in range(n_wbc)]
    for kind in kinds_drawn:
        r = float(rng.uniform(58, 78)) if kind != "lymphocyte" else float(rng.uniform(45, 58))
        pos = place(r, overlap=0.0)
        if pos is None:
            continue
        cx, cy = pos
        cv.focus(cy, cx, r)
        ry = r * rng.uniform(0.9, 1.0)
        m, _ = cv.disc(cy, cx, ry, r, rng.uniform(0, np.pi))
        cyto = (205, 188, 222) if kind != "eosinophil" else (222, 170, 160)
        cv.blend(m * 0.95, cyto)
        if kind == "eosinophil":  # orange granules
            for _ in range(120):
                a, d = rng.uniform(0, 2 * np.pi), r * np.sqrt(rng.uniform(0.05, 0.8))
                gm, _ = cv.disc(cy + d * np.sin(a), cx + d * np.cos(a), 3, 3, edge=1.0)
                cv.blend(gm * 0.6, (205, 110, 80))
        nuc = (105, 75, 175) + rng.normal(0, 6, 3)
        if kind == "neutrophil" or kind == "eosinophil":
            lobes = 3 if kind == "neutrophil" else 2
            a0 = rng.uniform(0, 2 * np.pi)
            for k in range(lobes):
                a = a0 + k * 2 * np.pi / lobes * 0.8
                nm, _ = cv.disc(cy + 0.32 * r * np.sin(a), cx + 0.32 * r * np.cos(a), 0.3 * r, 0.36 * r, a)
                cv.blend(nm, nuc)
        elif kind == "lymphocyte":
            nm, _ = cv.disc(cy + r * 0.05, cx - r * 0.05, 0.8 * r, 0.82 * r)
            cv.blend(nm, nuc * 0.9)
        else:  # monocyte: kidney-shaped nucleus
            nm, _ = cv.disc(cy, cx, 0.6 * r, 0.66 * r)
            cut, _ = cv.disc(cy - 0.45 * r, cx + 0.1 * r, 0.3 * r, 0.35 * r)
            cv.blend(nm * (1 - cut), nuc * 1.15)
        add_box(cx, cy, r, ry, "WBC", kind)
    for _ in range(n_rbc):
        r = float(rng.uniform(36, 46))
        pos = place(r)
        if pos is None:
            continue
        cx, cy = pos
        cv.focus(cy, cx, r)
        ry = r * rng.uniform(0.85, 1.0)
        ang = rng.uniform(0, np.pi)
        m, d = cv.disc(cy, cx, ry, r, ang)
        col = np.array([214, 150, 158], np.float32) + rng.normal(0, 5, 3)
        cv.blend(m * 0.9, col)
        pallor = np.clip(1 - d / 0.5, 0, 1) ** 1.5 * (m > 0)
        cv.blend(pallor * 0.55, bg)
        add_box(cx, cy, r, ry, "RBC")
    for _ in range(n_platelets):
        r = float(rng.uniform(7, 11))
        pos = place(r, overlap=0.0)
        if pos is None:
            continue
        cx, cy = pos
        cv.focus(cy, cx, r)
        m, _ = cv.disc(cy, cx, r * rng.uniform(0.7, 1.0), r, rng.uniform(0, np.pi), edge=1.0)
        cv.blend(m * 0.85, (140, 95, 175))
        add_box(cx, cy, r, r, "Platelets")
    import cv2

    img = cv2.GaussianBlur(img, (0, 0), 1.2)
    img += rng.normal(0, 3.0, img.shape).astype(np.float32)
    return SyntheticField(np.clip(img, 0, 255).astype(np.uint8), boxes, labels, kinds)


def write_demo_fields(out_dir, n_smears: int = 2, fields_per_smear: int = 6, seed: int = 0,
                      fmt: str = "png") -> list:
    """Write ``n_smears`` folders of synthetic fields (``fmt``: png, or jpg at quality 95 as microscope cameras
    write; smear id = folder name) plus ``ground_truth.json`` (per field: boxes, labels, kinds). Returns the written
    image paths."""
    import json
    from pathlib import Path


    out_dir = Path(out_dir)
    paths, gt = [], {}
    for s in range(n_smears):
        d = out_dir / f"smear_{s + 1:02d}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(fields_per_smear):
            f = render_field(seed * 1000 + s * 100 + i)
            p = d / f"field_{i + 1:03d}.{fmt}"
            write_image(p, f.image, quality=95)
            paths.append(p)
            gt[str(p.relative_to(out_dir))] = {"boxes": f.boxes, "labels": f.labels, "kinds": f.kinds}
    (out_dir / "ground_truth.json").write_text(json.dumps(gt, indent=1))
    return paths
