"""What every detector backend shares: the ``Detections`` result and the letterbox geometry of YOLO inputs."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Detections:
    """Detections in one image. ``xyxy``: float32 (N, 4) absolute pixels; ``scores``: float32 (N,) in [0, 1];
    ``labels``: N class names."""

    xyxy: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))
    labels: tuple[str, ...] = ()
    imgsz: int | None = None  # network input size these came from, when the detector chose it per image

    def __len__(self) -> int:
        return len(self.labels)


def letterbox(image: np.ndarray, size: int, pad_value: int = 114,
              canvas_hw: tuple[int, int] | None = None) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Resize keeping the aspect ratio so that the longest side fits ``size``, centred on a ``size`` x ``size``
    canvas (or ``canvas_hw``, which must hold the resized image).

    Returns the canvas (uint8 HxWx3), the scale factor and the (left, top) padding, so that an original point is
    ``(x * scale + left, y * scale + top)`` on the canvas.
    """
    import cv2

    h, w = image.shape[:2]
    scale = min(size / h, size / w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    ch, cw = canvas_hw or (size, size)
    resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR) if (nh, nw) != (h, w) else image
    top, left = (ch - nh) // 2, (cw - nw) // 2
    canvas = np.full((ch, cw, 3), pad_value, np.uint8)
    canvas[top:top + nh, left:left + nw] = resized
    return canvas, scale, (left, top)


def rect_canvas(shapes: list[tuple[int, int]], size: int, stride: int = 32) -> tuple[int, int]:
    """Smallest (height, width), multiples of ``stride``, that hold every image of ``shapes`` letterboxed at
    ``size`` (see ``letterbox``)."""
    hh = ww = stride
    for h, w in shapes:
        scale = min(size / h, size / w)
        hh = max(hh, -(-max(1, round(h * scale)) // stride) * stride)
        ww = max(ww, -(-max(1, round(w * scale)) // stride) * stride)
    return hh, ww
