"""Leukocyte detection: one ``Detector`` contract, backends built from ``configs/detector/*.yaml``.

Contract: ``detector.detect(images)`` takes a list of RGB uint8 HxWx3 arrays (any size) and returns one
``Detections`` per image with boxes in absolute pixels of that image, ``xyxy``, string labels from the detector's
``classes`` and scores in [0, 1]. An image without objects gives empty arrays (a valid result). YOLO / ONNX
backends also take ``detect(images, imgsz=N)`` (another input size, a multiple of 32); with ``auto_scale`` in the
config, ``build_detector`` wraps them in ``AutoScaleDetector``, which picks the input size per image from the size of
its red cells and records it in ``Detections.imgsz``.

Heavy libraries (torch, ultralytics, onnxruntime, openvino) are imported inside the backends.
"""

from __future__ import annotations

import numpy as np

from core.config import REQUIRED, ConfigError, Field, validate
from core.onnxrt import RUNTIMES
from detection.base import Detections, letterbox, rect_canvas  # noqa: F401 (the package's contract)
from detection.ssd import SSDDetector
from detection.yolo import OnnxYoloDetector, YoloDetector

DETECTOR_SCHEMA = {
    "backend": Field(str, REQUIRED, "one of DETECTORS: yolo | onnx | ssd300"),
    "model": Field(str, REQUIRED, "yolo: architecture yaml (yolov8n.yaml, yolov3u.yaml) or .pt; ssd300: ssd300_vgg16; "
                                  "onnx: exported .onnx"),
    "weights": Field(str, None, "trained weights (.pt/.onnx), relative to the repo root; None = untrained model"),
    "classes": Field(list, ["WBC", "RBC", "Platelets"], "class names in index order"),
    "imgsz": Field(int, 416, "network input size (longest side of the letterbox for YOLO, resize for SSD300)"),
    "rect": Field(bool, False, "yolo / onnx: letterbox a batch to the smallest multiple of 32 that holds its images "
                               "at imgsz (320x256 for 732x574 fields) instead of a square; same scale, less padding"),
    "conf": Field(float, 0.25, "minimum score kept", min=0.0, max=1.0),
    "iou": Field(float, 0.5, "NMS IoU threshold", min=0.0, max=1.0),
    "max_det": Field(int, 300, "maximum detections per image", min=1),
    "smin": Field(float, 0.2, "ssd300: smallest default-box scale (Wang et al.: 0.2)", min=0.0, max=1.0),
    "smax": Field(float, 0.9, "ssd300: largest default-box scale (Wang et al.: 0.9)", min=0.0, max=1.0),
    "pretrained": Field(str, None, "opt-in pretrained checkpoint path/name for users online; never the default"),
    "half": Field(bool, False, "fp16 inference on CUDA"),
    "runtime": Field(str, "onnxruntime", "onnx: the runtime that runs the export; in a pipeline its onnx_runtime "
                                         "(a different value here is refused)", choices=RUNTIMES),
    "auto_scale": Field(bool, False, "yolo / onnx: detect a field again at a larger input size when its cells are "
                                     "small on the network input (lower magnification than the training fields), "
                                     "see AutoScaleDetector"),
    "scale_label": Field(str, "RBC", "auto_scale: the class whose median box size measures the magnification"),
    "scale_below_px": Field(float, 40.0, "auto_scale: detect again when that median size on the input is below this"),
    "scale_target_px": Field(float, 52.0, "auto_scale: ... at the input size that brings it to this (red cells of "
                                          "the training fields at 320 px: median 51.5 px BCCD, 70 TXL-PBC)"),
    "scale_min_boxes": Field(int, 3, "auto_scale: boxes (score >= 0.4) needed to measure; fewer: keep the first pass",
                             min=1),
    "max_imgsz": Field(int, 640, "auto_scale: largest input size"),
    "field_checks": Field(bool, True, "warn about fields whose detections cannot be trusted (field_warnings: cells "
                                      "too small, implausible leukocyte boxes); their cells are then not counted"),
    "train": Field(dict, {}, "training settings, see detection.train.TRAIN_SCHEMA"),
}


DETECTORS = {"yolo": YoloDetector, "onnx": OnnxYoloDetector, "ssd300": SSDDetector}


def check_detector_config(cfg: dict, where: str = "detector config") -> dict:
    """Validate a detector config (see ``DETECTOR_SCHEMA``) and return it with defaults filled."""
    cfg = validate(cfg, DETECTOR_SCHEMA, where)
    if cfg["backend"] not in DETECTORS:
        raise ConfigError(f"{where}: unknown backend '{cfg['backend']}'; valid: {sorted(DETECTORS)}")
    if cfg["backend"] != "ssd300" and (cfg["imgsz"] < 32 or cfg["imgsz"] % 32):
        raise ConfigError(f"{where}: imgsz must be a positive multiple of 32 (the network's stride), not "
                          f"{cfg['imgsz']}")
    if cfg["auto_scale"]:
        if cfg["backend"] == "ssd300":
            raise ConfigError(f"{where}: auto_scale needs a backend with a variable input size (yolo, onnx); "
                              "ssd300 always runs at 300 px")
        if cfg["scale_label"] not in cfg["classes"]:
            raise ConfigError(f"{where}: scale_label '{cfg['scale_label']}' is not one of the classes {cfg['classes']}")
        if not 0 < cfg["scale_below_px"] <= cfg["scale_target_px"]:
            raise ConfigError(f"{where}: need 0 < scale_below_px <= scale_target_px, got {cfg['scale_below_px']} "
                              f"and {cfg['scale_target_px']}")
        if cfg["max_imgsz"] < cfg["imgsz"] or cfg["max_imgsz"] % 32:
            raise ConfigError(f"{where}: max_imgsz must be a multiple of 32 and >= imgsz ({cfg['imgsz']}), not "
                              f"{cfg['max_imgsz']}")
        if cfg["scale_min_boxes"] < 1:
            raise ConfigError(f"{where}: scale_min_boxes must be >= 1")
    return cfg


def build_detector(cfg: dict, device: str = "cpu"):
    """Build a detector from a config dict (see ``DETECTOR_SCHEMA``). ``device``: ``cpu`` or ``cuda[:i]``."""
    cfg = check_detector_config(cfg)
    det = DETECTORS[cfg["backend"]](cfg, device)
    return AutoScaleDetector(det, cfg) if cfg["auto_scale"] else det


SCALE_MIN_SCORE = 0.4  # detections that measure a field's magnification: confident ones only


def red_cell_size(det: Detections, image_hw: tuple[int, int], imgsz: int, cfg: dict) -> float | None:
    """Median size (mean of width and height) of an image's confident ``scale_label`` boxes (score >= 0.4) on a
    letterboxed input of ``imgsz``; None when fewer than ``scale_min_boxes`` to measure."""
    m = np.array([lab == cfg["scale_label"] for lab in det.labels], bool)
    if len(m):
        m &= det.scores >= SCALE_MIN_SCORE
    if int(m.sum()) < cfg["scale_min_boxes"]:
        return None
    b = det.xyxy[m]
    return float(np.median((b[:, 2] - b[:, 0] + b[:, 3] - b[:, 1]) / 2)) * imgsz / max(image_hw)


def field_scale_size(det: Detections, image_hw: tuple[int, int], imgsz: int, cfg: dict,
                     at: int | None = None) -> tuple[int, float | None]:
    """The input size to detect an image at, given its detections on an ``at`` px input (default ``imgsz``, the
    config's size), and the measured median size of its red cells on that input (``red_cell_size``; None: too few
    to measure).

    When that median, seen at ``imgsz``, is below ``scale_below_px`` the image is smaller-scaled than the training
    fields (a lower magnification or a downsampled capture): the returned size brings it to ``scale_target_px``
    (rounded up to a multiple of 32, between ``imgsz`` and ``max_imgsz``). Otherwise ``imgsz`` itself."""
    at = at or imgsz
    median = red_cell_size(det, image_hw, at, cfg)
    if median is None or median * imgsz / at >= cfg["scale_below_px"]:
        return imgsz, median
    size = -(-at * cfg["scale_target_px"] / max(median, 1e-6) // 32) * 32
    return int(min(max(size, imgsz), cfg["max_imgsz"])), median


# A leukocyte is 1-3 red-cell diameters across (neutrophils 12-15 um, large blasts up to ~25 um, red cells ~7.5 um).
MAX_WBC_PER_RBC = 4.5
MAX_WBC_FIELD_SHARE = 0.5  # leukocyte boxes covering more of the field than this: not a smear field at 100x
# Red cells smaller than this on the detector's input: leukocytes are missed (BCCD test at a quarter magnification,
# red cells ~26 px at the 640 px input: WBC AP50 0.944; at a fixed 320 px, ~18 px: 0.892 at 0.35, 0.456 at 0.25).
MIN_RBC_PX = 22.0


def field_warnings(det: Detections, image_hw: tuple[int, int], cfg: dict) -> list[str]:
    """Why a field's detections cannot be trusted (empty when they can): its red cells are still too small on the
    network's input (``MIN_RBC_PX``, after ``auto_scale`` where on), its leukocyte boxes are many red-cell diameters
    wide (more than ``MAX_WBC_PER_RBC``; half-field boxes on smartphone eyepiece photos), or they cover most of the
    field (``MAX_WBC_FIELD_SHARE``). ``det.imgsz`` (or the config's ``imgsz``) is the input size the boxes came from."""
    h, w = image_hw
    imgsz = det.imgsz or cfg["imgsz"]
    out = []
    rbc = red_cell_size(det, image_hw, imgsz, cfg)
    if rbc is not None and rbc < MIN_RBC_PX:
        out.append(f"cells too small for the detector: red cells {rbc:.0f} px on its {imgsz} px input (trained on "
                   f"~{cfg['scale_target_px']:.0f} px, reliable down to {MIN_RBC_PX:.0f}): a lower magnification "
                   "than 100x oil?")
    wbc = np.array([lab == "WBC" for lab in det.labels], bool)
    if len(wbc) and wbc.any():
        b = det.xyxy[wbc]
        side = np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
        if rbc is not None:
            rbc_orig = rbc * max(image_hw) / imgsz
            wide = side > MAX_WBC_PER_RBC * rbc_orig
            if wide.any():
                out.append(f"{int(wide.sum())} leukocyte box(es) {side[wide].max() / rbc_orig:.1f} red-cell diameters "
                           f"wide (a leukocyte is 1-3): not leukocytes as the detector learned them")
        area = float(((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])).sum()) / max(1.0, float(h * w))
        if area > MAX_WBC_FIELD_SHARE or (rbc is None and (side > 0.5 * min(h, w)).any()):
            out.append(f"leukocyte boxes cover {area:.0%} of the field or span half of it: implausible for a smear "
                       "field at 100x")
    return out


class AutoScaleDetector:
    """A YOLO / ONNX detector that adapts its input size to each field's magnification.

    Every field is detected at the config's ``imgsz`` first; where the confident ``scale_label`` boxes (red cells)
    are smaller on that input than ``scale_below_px`` (the training fields' red cells: median 51.5 px on BCCD, 70 on
    TXL-PBC at 320 px), the field is detected again at the size ``field_scale_size`` gives and those detections
    replace the first ones (``Detections.imgsz`` says which size each field got). A field with too few confident
    red cells to measure (at a quarter of the training magnification they are ~13 px and mostly missed) is probed
    at ``max_imgsz``: if its red cells measure there and are small, the field is detected at the size that
    measurement gives (the probe itself when that is ``max_imgsz``); otherwise the first pass stands. Fields at the
    training magnification cost nothing extra; at half magnification platelets come back (docs/RESULTS.md,
    detector on other laboratories' fields)."""

    def __init__(self, inner, cfg: dict):
        self.inner, self.cfg, self.classes = inner, cfg, inner.classes
        self.imgsz = cfg["imgsz"]
        self.name = f"{inner.name} auto-scale<={cfg['max_imgsz']}"

    def detect(self, images: list[np.ndarray]) -> list[Detections]:
        """See the ``detection`` module contract; each result's ``imgsz`` is the input size it came from."""
        import dataclasses

        dets = [dataclasses.replace(d, imgsz=self.imgsz) for d in self.inner.detect(images)]
        top = self.cfg["max_imgsz"]
        again: dict[int, list[int]] = {}
        unmeasured = []
        for i, (im, d) in enumerate(zip(images, dets)):
            size, median = field_scale_size(d, im.shape[:2], self.imgsz, self.cfg)
            if size > self.imgsz:
                again.setdefault(size, []).append(i)
            elif median is None and top > self.imgsz:
                unmeasured.append(i)
        if unmeasured:  # too few red cells at imgsz: are they too small to be found there?
            for i, d in zip(unmeasured, self.inner.detect([images[i] for i in unmeasured], imgsz=top)):
                size, _ = field_scale_size(d, images[i].shape[:2], self.imgsz, self.cfg, at=top)
                if size == self.imgsz:
                    continue  # still unmeasurable, or not small after all: the first pass stands
                if size == top:
                    dets[i] = dataclasses.replace(d, imgsz=top)
                else:
                    again.setdefault(size, []).append(i)
        for size, idx in sorted(again.items()):
            for i, d in zip(idx, self.inner.detect([images[i] for i in idx], imgsz=size)):
                dets[i] = dataclasses.replace(d, imgsz=size)
        return dets
