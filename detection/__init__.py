"""Leukocyte detection: one ``Detector`` contract, backends built from ``configs/detector/*.yaml``.

Contract: ``detector.detect(images)`` takes a list of RGB uint8 HxWx3 arrays (any size) and returns one
``Detections`` per image with boxes in absolute pixels of that image, ``xyxy``, string labels from the detector's
``classes`` and scores in [0, 1]. An image without objects gives empty arrays (a valid result).

Heavy libraries (torch, ultralytics, onnxruntime) are imported inside the backends.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipelines.config import ConfigError, Field, REQUIRED, validate


@dataclass(frozen=True)
class Detections:
    """Detections in one image. ``xyxy``: float32 (N, 4) absolute pixels; ``scores``: float32 (N,) in [0, 1];
    ``labels``: N class names."""

    xyxy: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))
    labels: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.labels)


DETECTOR_SCHEMA = {
    "backend": Field(str, REQUIRED, "one of DETECTORS: yolo | onnx | ssd300"),
    "model": Field(str, REQUIRED, "yolo: architecture yaml (yolov8n.yaml, yolov3u.yaml) or .pt; ssd300: ssd300_vgg16; "
                                  "onnx: exported .onnx"),
    "weights": Field(str, None, "trained weights (.pt/.onnx), relative to the repo root; None = untrained model"),
    "classes": Field(list, ["WBC", "RBC", "Platelets"], "class names in index order"),
    "imgsz": Field(int, 416, "network input size (longest side of the letterbox for YOLO, resize for SSD300)"),
    "rect": Field(bool, False, "yolo / onnx: letterbox a batch to the smallest multiple of 32 that holds its images "
                               "at imgsz (320x256 for 732x574 fields) instead of a square; same scale, less padding"),
    "conf": Field(float, 0.25, "minimum score kept"),
    "iou": Field(float, 0.5, "NMS IoU threshold"),
    "max_det": Field(int, 300, "maximum detections per image"),
    "smin": Field(float, 0.2, "ssd300: smallest default-box scale (Wang et al.: 0.2)"),
    "smax": Field(float, 0.9, "ssd300: largest default-box scale (Wang et al.: 0.9)"),
    "pretrained": Field(str, None, "opt-in pretrained checkpoint path/name for users online; never the default"),
    "half": Field(bool, False, "fp16 inference on CUDA"),
    "train": Field(dict, {}, "training settings, see detection.train.TRAIN_SCHEMA"),
}


def _yolo(cfg, device):
    from detection.yolo import YoloDetector

    return YoloDetector(cfg, device)


def _onnx(cfg, device):
    from detection.yolo import OnnxYoloDetector

    return OnnxYoloDetector(cfg, device)


def _ssd300(cfg, device):
    from detection.ssd import SSDDetector

    return SSDDetector(cfg, device)


DETECTORS = {"yolo": _yolo, "onnx": _onnx, "ssd300": _ssd300}


def check_detector_config(cfg: dict, where: str = "detector config") -> dict:
    """Validate a detector config (see ``DETECTOR_SCHEMA``) and return it with defaults filled."""
    cfg = validate(cfg, DETECTOR_SCHEMA, where)
    if cfg["backend"] not in DETECTORS:
        raise ConfigError(f"{where}: unknown backend '{cfg['backend']}'; valid: {sorted(DETECTORS)}")
    return cfg


def build_detector(cfg: dict, device: str = "cpu"):
    """Build a detector from a config dict (see ``DETECTOR_SCHEMA``). ``device``: ``cpu`` or ``cuda[:i]``."""
    cfg = check_detector_config(cfg)
    return DETECTORS[cfg["backend"]](cfg, device)


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
