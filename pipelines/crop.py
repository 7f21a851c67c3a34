"""Cell crops from a field: a square around each box, like an analyser's fixed-size cell image."""

from __future__ import annotations

import numpy as np


def crop_square(image: np.ndarray, box, margin: float = 0.15) -> np.ndarray:
    """Square crop centred on ``box`` (``xyxy``, original pixels), side = longest box side * (1 + 2 * margin).

    The cell stays in the centre, as in an analyser's cell image (the classifiers learn from such images; a window
    shifted to stay inside the field put cells at field edges off-centre, and BCCD's large leukocytes were then
    classified worse). What falls outside the field is filled with the field's median colour (background), never
    with mirrored copies of cells. Returns RGB uint8 (side x side x 3); a degenerate box gives a 1 x 1 crop.
    """
    h, w = image.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    side = max(1, int(round(max(x2 - x1, y2 - y1) * (1 + 2 * margin))))
    a, b = int(round(cx - side / 2)), int(round(cy - side / 2))
    if not (-side < a < w and -side < b < h):
        return np.zeros((1, 1, 3), np.uint8)
    xa, ya, xb, yb = max(0, a), max(0, b), min(w, a + side), min(h, b + side)
    crop = image[ya:yb, xa:xb]
    if crop.shape[:2] != (side, side):
        out = np.empty((side, side, 3), np.uint8)
        out[:] = np.median(image.reshape(-1, 3)[:: max(1, h * w // 4096)], axis=0).astype(np.uint8)
        out[ya - b:ya - b + crop.shape[0], xa - a:xa - a + crop.shape[1]] = crop
        crop = out
    return np.ascontiguousarray(crop)
