"""Cell crops from a field: a square around each box, like an analyser's fixed-size cell image."""

from __future__ import annotations

import numpy as np


def crop_square(image: np.ndarray, box, margin: float = 0.15) -> np.ndarray:
    """Square crop around ``box`` (``xyxy``, original pixels), side = longest box side * (1 + 2 * margin).

    The window is centred on the box and shifted to stay inside the image where it fits (no mirrored copies of
    cells at field edges); where the side exceeds the image, the rest is filled with the field's median colour.
    Returns RGB uint8 (side x side x 3); a degenerate box gives a 1 x 1 crop, never an error.
    """
    h, w = image.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    side = max(1, int(round(max(x2 - x1, y2 - y1) * (1 + 2 * margin))))
    a, b = int(round(cx - side / 2)), int(round(cy - side / 2))
    if not (-side < a < w and -side < b < h):
        return np.zeros((1, 1, 3), np.uint8)
    a = min(max(a, 0), w - side) if side <= w else (w - side) // 2
    b = min(max(b, 0), h - side) if side <= h else (h - side) // 2
    xa, ya, xb, yb = max(0, a), max(0, b), min(w, a + side), min(h, b + side)
    crop = image[ya:yb, xa:xb]
    if crop.shape[:2] != (side, side):
        out = np.empty((side, side, 3), np.uint8)
        out[:] = np.median(image.reshape(-1, 3)[:: max(1, h * w // 4096)], axis=0).astype(np.uint8)
        out[ya - b:ya - b + crop.shape[0], xa - a:xa - a + crop.shape[1]] = crop
        crop = out
    return np.ascontiguousarray(crop)
