"""Ultralytics YOLO backends (YOLOv3u, YOLOv8/11 nano...) with the project's own batched pre/post-processing.

Both backends share one path: letterbox every image to ``imgsz`` (square, or with ``rect`` the smallest multiple of
32 that holds the batch), run the network on the batch (PyTorch, ONNX Runtime or OpenVINO), decode the raw head
output ``(B, 4 + K, A)`` (``cx, cy, w, h`` in canvas pixels, then K class scores) with class-aware NMS, and map the
boxes back to original pixels. Ultralytics' own ``predict`` is only the naive baseline of the benchmark.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from core.config import resolve_path
from core.onnxrt import onnx_session, runtime_tag
from detection.base import Detections, letterbox, rect_canvas


def ultralytics_offline() -> None:
    """Keep Ultralytics off the network; call before the first ``import ultralytics``.

    Sets ``YOLO_OFFLINE`` (no DNS lookups at import), a private ``YOLO_CONFIG_DIR`` and puts a local TTF where
    ``check_font('Arial.ttf')`` looks, so training never asks github.com for a font.
    """
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_VERBOSE", "False")
    cfg_dir = Path(os.environ.setdefault("YOLO_CONFIG_DIR", str(Path.home() / ".cache" / "leukodiff" / "ultralytics")))
    font_dir = cfg_dir / "Ultralytics"
    font_dir.mkdir(parents=True, exist_ok=True)
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        if not (font_dir / name).exists():
            try:
                import matplotlib

                src = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
                shutil.copyfile(src, font_dir / name)
            except Exception:  # noqa: BLE001 - fonts only matter for plots
                pass
    from ultralytics.utils import SETTINGS

    if SETTINGS.get("sync", False):
        SETTINGS.update({"sync": False})


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one ``xyxy`` box with each of ``boxes`` (N, 4)."""
    w = np.maximum(0, np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]))
    h = np.maximum(0, np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]))
    inter = w * h
    area = max(0.0, float(box[2] - box[0])) * max(0.0, float(box[3] - box[1]))
    areas = np.maximum(0, boxes[:, 2] - boxes[:, 0]) * np.maximum(0, boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Greedy NMS on ``xyxy`` boxes; returns kept indices, highest score first."""
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        order = rest[box_iou(boxes[i], boxes[rest]) <= iou]
    return np.asarray(keep, dtype=np.int64)


def decode(raw: np.ndarray, classes: list[str], metas: list[tuple[float, tuple[int, int], tuple[int, int]]],
           conf: float, iou: float, max_det: int) -> list[Detections]:
    """Decode a YOLO head output ``(B, 4 + K, A)`` into per-image ``Detections`` in original pixels.

    ``metas`` holds per image the letterbox ``scale``, ``(left, top)`` padding and original ``(height, width)``.
    """
    out = []
    for pred, (scale, (left, top), (h, w)) in zip(raw, metas):
        pred = pred.T  # (A, 4 + K)
        cls_scores = pred[:, 4:]
        cls = cls_scores.argmax(1)
        score = cls_scores[np.arange(len(cls)), cls]
        m = score >= conf
        if not m.any():
            out.append(Detections())
            continue
        p, cls, score = pred[m], cls[m], score[m]
        xyxy = np.stack([p[:, 0] - p[:, 2] / 2, p[:, 1] - p[:, 3] / 2, p[:, 0] + p[:, 2] / 2, p[:, 1] + p[:, 3] / 2], 1)
        offset = cls[:, None].astype(np.float32) * 4096.0  # class-aware NMS in one call
        keep = nms(xyxy + offset, score, iou)[:max_det]
        xyxy = (xyxy[keep] - [left, top, left, top]) / scale
        xyxy[:, [0, 2]] = xyxy[:, [0, 2]].clip(0, w)
        xyxy[:, [1, 3]] = xyxy[:, [1, 3]].clip(0, h)
        out.append(Detections(xyxy.astype(np.float32), score[keep].astype(np.float32),
                              tuple(classes[int(c)] for c in cls[keep])))
    return out


def preprocess(images: list[np.ndarray], size: int, rect: bool = False) -> tuple[np.ndarray, list]:
    """Letterbox RGB uint8 images into a float32 NCHW batch in [0, 1] plus the metas ``decode`` needs. ``rect``: the
    batch's canvas is the smallest multiple of 32 that holds its images (``rect_canvas``), else ``size`` square."""
    ch, cw = rect_canvas([im.shape[:2] for im in images], size) if rect else (size, size)
    batch = np.empty((len(images), 3, ch, cw), np.float32)
    metas = []
    for i, im in enumerate(images):
        canvas, scale, pad = letterbox(im, size, canvas_hw=(ch, cw))
        batch[i] = canvas.transpose(2, 0, 1)
        metas.append((scale, pad, im.shape[:2]))
    batch *= 1.0 / 255.0
    return batch, metas


def load_yolo_model(cfg: dict):
    """Return ``(nn.Module, class names)`` for a YOLO config: trained weights if given, else the architecture yaml
    built with ``len(classes)`` outputs (untrained; what tests use)."""
    ultralytics_offline()
    weights = resolve_path(cfg["weights"]) or resolve_path(cfg["pretrained"])
    if weights is not None:
        if not weights.exists():
            raise FileNotFoundError(f"detector weights not found: {weights}")
        from ultralytics import YOLO

        model = YOLO(str(weights)).model
        names = [model.names[i] for i in range(len(model.names))]
        return model, names
    from ultralytics.nn.tasks import DetectionModel

    return DetectionModel(cfg["model"], nc=len(cfg["classes"]), verbose=False), list(cfg["classes"])


class YoloDetector:
    """Ultralytics YOLO network run by PyTorch with batched letterbox pre-processing and numpy NMS."""

    def __init__(self, cfg: dict, device: str = "cpu"):
        import torch

        self.cfg = cfg
        model, self.classes = load_yolo_model(cfg)
        self.device = torch.device(device)
        self.half = bool(cfg["half"]) and self.device.type == "cuda"
        model = model.float().eval()
        if hasattr(model, "fuse"):
            model = model.fuse(verbose=False)  # conv + batch-norm folded: same outputs, faster
        for p in model.parameters():
            p.requires_grad_(False)
        self.model = (model.half() if self.half else model).to(self.device)
        self.name = f"yolo:{Path(cfg['weights'] or cfg['model']).name}@{cfg['imgsz']}"

    def detect(self, images: list[np.ndarray], imgsz: int | None = None) -> list[Detections]:
        """See the ``detection`` module contract; ``imgsz`` overrides the config's input size (multiple of 32)."""
        import torch

        if not images:
            return []
        batch, metas = preprocess(images, imgsz or self.cfg["imgsz"], self.cfg["rect"])
        x = torch.from_numpy(batch).to(self.device)
        with torch.inference_mode():
            y = self.model(x.half() if self.half else x)
        raw = (y[0] if isinstance(y, (list, tuple)) else y).float().cpu().numpy()
        return decode(raw, self.classes, metas, self.cfg["conf"], self.cfg["iou"], self.cfg["max_det"])


class OnnxYoloDetector:
    """A YOLO network exported to ONNX (dynamic batch), run by ONNX Runtime or OpenVINO (config ``runtime``); same
    pre/post-processing."""

    def __init__(self, cfg: dict, device: str = "cpu"):

        self.cfg = cfg
        path = resolve_path(cfg["weights"] or cfg["model"])
        if path is None or not path.exists():
            raise FileNotFoundError(f"ONNX detector not found: {path}")
        self.session = onnx_session(path, device, "detector", cfg["runtime"])
        meta = self.session.get_modelmeta().custom_metadata_map
        names = meta.get("names")
        if names:
            import ast

            d = ast.literal_eval(names)
            self.classes = [d[i] for i in range(len(d))]
        else:
            self.classes = list(cfg["classes"])
        self.input_name = self.session.get_inputs()[0].name
        self.name = f"onnx:{path.name}@{cfg['imgsz']}" + runtime_tag(cfg["runtime"])

    def detect(self, images: list[np.ndarray], imgsz: int | None = None) -> list[Detections]:
        """See the ``detection`` module contract; ``imgsz`` overrides the config's input size (multiple of 32)."""
        if not images:
            return []
        batch, metas = preprocess(images, imgsz or self.cfg["imgsz"], self.cfg["rect"])
        raw = self.session.run(None, {self.input_name: batch})[0]
        return decode(raw, self.classes, metas, self.cfg["conf"], self.cfg["iou"], self.cfg["max_det"])


def export_onnx(weights: Path, imgsz: int, out: Path) -> Path:
    """Export trained YOLO weights to ONNX with dynamic batch and image axes; returns the written path. Ultralytics
    writes next to the weights, so the export runs on a temporary copy: nothing beside ``weights`` is touched."""
    import tempfile

    ultralytics_offline()
    from ultralytics import YOLO

    out = Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / Path(weights).name
        shutil.copyfile(weights, copy)
        path = Path(YOLO(str(copy)).export(format="onnx", imgsz=imgsz, dynamic=True, simplify=False, nms=False,
                                           opset=17, verbose=False))
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(path), out)
    return out


# Output convolutions of the YOLOv8 head (box distribution, class scores, DFL) stay in float: quantizing them costs
# box precision for almost no time.
HEAD_OUTPUT_CONVS = [f"/model.22/cv{a}.{i}/cv{a}.{i}.2/Conv" for a in (2, 3) for i in range(3)] + \
    ["/model.22/dfl/conv/Conv"]
# Convolutions kept in float besides the head's outputs: the last one of the neck's stride-8 block, whose output
# the small-object head reads. With it quantized, OpenVINO runs the QDQ model less exactly than ONNX Runtime
# (BCCD test platelets AP50 0.842 -> 0.808, AP50-95 0.376 -> 0.297; bisected over the neck's blocks); with it in
# float both runtimes give the float model's AP, and OpenVINO is 1.5x faster than with the float model.
FLOAT_CONVS = HEAD_OUTPUT_CONVS + ["/model.15/cv2/conv/Conv"]


def quantize_onnx(src: Path, out: Path, calibration: list[np.ndarray], imgsz: int, rect: bool = True) -> Path:
    """Static int8 quantization (QDQ, per-channel weights, MinMax activation ranges from ``calibration`` images,
    RGB uint8 fields letterboxed like at inference) of an exported YOLO ONNX model. Convolutions only; those of
    ``FLOAT_CONVS`` (the head's outputs, one of the neck) stay in float. Weights use 7 bits (``reduce_range``): on
    x86 CPUs without VNNI (AVX2 only) ONNX Runtime's uint8 x int8 kernels saturate with 8-bit weights (measured on
    BCCD test: mAP50 0.812 against 0.866 in float, platelets 0.667 against 0.839); with 7 bits 0.866 at the same
    speed, on any x86 CPU (int8 activations and weights instead: 0.867, but twice as slow there; in OpenVINO int8
    activations lose platelets: 0.65 mAP50). Returns ``out``."""
    import tempfile

    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, \
        quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src, out = Path(src), Path(out)
    graph = onnx.load(str(src), load_external_data=False).graph
    input_name, conv_names = graph.input[0].name, {n.name for n in graph.node if n.op_type == "Conv"}

    class _Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(calibration)

        def get_next(self):
            im = next(self._it, None)
            return None if im is None else {input_name: preprocess([im], imgsz, rect)[0]}

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(out), _Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv"],
                        nodes_to_exclude=[n for n in FLOAT_CONVS if n in conv_names], per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, reduce_range=True)
    return out
