"""Cell crops from a field: a square around each box, like an analyser's fixed-size cell image."""

from __future__ import annotations

import numpy as np


def crop_square(image: np.ndarray, box, margin: float = 0.15) -> np.ndarray:
    """Square crop centred on ``box`` (``xyxy``, original pixels), side = longest box side * (1 + 2 * margin).

    Parts outside the image are filled by mirroring the field at its border, so a cell at the edge keeps its
    position and scale. Returns RGB uint8 (side x side x 3); a degenerate box gives a 1 x 1 crop, never an error.
    """
    import cv2

    h, w = image.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    side = max(1, int(round(max(x2 - x1, y2 - y1) * (1 + 2 * margin))))
    a, b = int(round(cx - side / 2)), int(round(cy - side / 2))
    xa, ya, xb, yb = max(0, a), max(0, b), min(w, a + side), min(h, b + side)
    if xa >= xb or ya >= yb:
        return np.zeros((1, 1, 3), np.uint8)
    crop = image[ya:yb, xa:xb]
    pads = (ya - b, b + side - yb, xa - a, a + side - xb)
    if any(pads):
        mode = cv2.BORDER_REFLECT_101 if min(crop.shape[:2]) > 1 else cv2.BORDER_REPLICATE
        crop = cv2.copyMakeBorder(crop, *pads, mode)
    return np.ascontiguousarray(crop)
