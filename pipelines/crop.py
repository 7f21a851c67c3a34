"""Cell crops from a field: a square around each box, like an analyser's fixed-size cell image."""

from __future__ import annotations

import numpy as np


def background_colour(image: np.ndarray) -> np.ndarray:
    """The field's median colour (uint8 RGB) from about 4,096 pixels: what crops are filled with beyond the field."""
    h, w = image.shape[:2]
    return np.median(image.reshape(-1, 3)[:: max(1, h * w // 4096)], axis=0).astype(np.uint8)


def crop_square(image: np.ndarray, box, margin: float = 0.15, fill: np.ndarray | None = None) -> np.ndarray:
    """Square crop centred on ``box`` (``xyxy``, original pixels), side = longest box side * (1 + 2 * margin).

    The cell stays in the centre, as in an analyser's cell image (the classifiers learn from such images; a window
    shifted to stay inside the field put cells at field edges off-centre, and BCCD's large leukocytes were then
    classified worse). What falls outside the field is filled with the field's median colour (background), never
    with mirrored copies of cells (``fill``: that colour when the caller computed it once for the field, see
    ``background_colour``). Returns RGB uint8 (side x side x 3); a degenerate box gives a 1 x 1 crop.
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
        import cv2

        colour = [int(v) for v in (background_colour(image) if fill is None else fill)]
        crop = cv2.copyMakeBorder(np.ascontiguousarray(crop), ya - b, b + side - yb, xa - a, a + side - xb,
                                  cv2.BORDER_CONSTANT, value=colour)
    return np.ascontiguousarray(crop)
