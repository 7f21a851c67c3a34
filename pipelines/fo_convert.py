"""Box conversions between the pipeline's absolute ``xyxy`` pixels and FiftyOne's relative ``[x, y, w, h]``
(top-left corner, width, height, each in [0, 1] of the image size). The only place these conversions live."""

from __future__ import annotations


def xyxy_to_rel_xywh(box, width: int, height: int) -> list[float]:
    """Absolute ``[x1, y1, x2, y2]`` -> relative ``[x, y, w, h]`` clipped to the image."""
    x1, y1, x2, y2 = (float(v) for v in box)
    x1, x2 = max(0.0, min(x1, width)), max(0.0, min(x2, width))
    y1, y2 = max(0.0, min(y1, height)), max(0.0, min(y2, height))
    return [x1 / width, y1 / height, (x2 - x1) / width, (y2 - y1) / height]


def rel_xywh_to_xyxy(box, width: int, height: int) -> list[float]:
    """Relative ``[x, y, w, h]`` -> absolute ``[x1, y1, x2, y2]``."""
    x, y, w, h = (float(v) for v in box)
    return [x * width, y * height, (x + w) * width, (y + h) * height]
