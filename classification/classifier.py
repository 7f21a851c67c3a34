"""Classifier inference from a self-describing checkpoint (``classification.models.save_checkpoint``), in PyTorch
(``.pt``) or in ONNX Runtime / OpenVINO (``.onnx`` written by ``export_onnx``: the same network with normalization,
temperature and softmax inside the graph, uint8 NHWC crops in, probabilities out, the checkpoint's metadata
alongside). ``load_classifier`` picks PyTorch or ONNX by the file's suffix; all give the same interface."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from classification.harmonize import stain_normalize
from classification.models import BACKBONES, features_and_logits, load_checkpoint
from classification.ood import ood_head
from classification.preprocess import TTA_VIEWS, mean_logit_probs, resize_crops, tta_views, white_balance  # noqa: F401
from classification.schema import CLASSIFIER_SCHEMA, TRAIN_SCHEMA
from classification.taxonomies import TAXONOMIES, VIEWS, refines
from core.config import ConfigError, resolve_path, validate
from core.onnxrt import onnx_session, runtime_tag


def check_classifier_config(cfg: dict, where: str = "classifier config") -> dict:
    """Validate a classifier config (``classification.train.CLASSIFIER_SCHEMA``) and return it with defaults."""

    cfg = validate(cfg, CLASSIFIER_SCHEMA, where)
    if cfg["task"] not in TAXONOMIES:
        raise ConfigError(f"{where}: unknown task '{cfg['task']}'; valid: {sorted(TAXONOMIES)}")
    if cfg["arch"] not in BACKBONES:
        raise ConfigError(f"{where}: unknown arch '{cfg['arch']}'; valid: {sorted(BACKBONES)}")
    validate(cfg["train"], TRAIN_SCHEMA, f"{where}: train")
    return cfg


def check_tta(tta: int, tta_below: float, where: str = "classifier") -> None:
    """Raise ``ConfigError`` for test-time augmentation settings ``tta_views`` cannot run."""
    if tta not in TTA_VIEWS:
        raise ConfigError(f"{where}: tta must be one of {list(TTA_VIEWS)} views, not {tta!r}")
    if not 0.0 <= tta_below <= 1.0:
        raise ConfigError(f"{where}: tta_below must be in [0, 1], not {tta_below!r}")


def refinement_map(source_classes: list[str], target_classes: list[str]) -> np.ndarray:
    """(S, T) 0/1 matrix: source class s -> the target class it is or refines (``taxonomies.refines``: wang11's
    band_neutrophil -> pbc8's neutrophil, lymphocyte -> lymphocyte); rows of source classes without one are zero."""

    m = np.zeros((len(source_classes), len(target_classes)), np.float64)
    for i, s in enumerate(source_classes):
        for j, t in enumerate(target_classes):
            if refines(s, t):
                m[i, j] = 1.0
                break
    return m


def fuse_probs(target: np.ndarray, target_classes: list[str], source: np.ndarray, source_classes: list[str],
               weight: float = 1.0) -> np.ndarray:
    """Join a finer classifier's probabilities (``source``, e.g. wang11) into a coarser one's (``target``, e.g. pbc8)
    for the same cells: a product of experts over the target classes both know.

    The source's probabilities are summed onto the target class each refines (``refinement_map``); over those shared
    classes both distributions are renormalized, multiplied (the source's raised to ``weight``: 0 leaves the target
    unchanged, 1 is the plain product) and renormalized to the target's own probability mass on them. Target classes
    the source has no class for (pbc8's erythroblast and platelet) keep their probabilities; source classes without
    a target class (wang11's blast) do not vote. Returns (N, T) float32."""
    m = refinement_map(source_classes, target_classes)
    shared = m.sum(0) > 0
    if not shared.any():
        raise ValueError(f"no class of {source_classes} refines one of {target_classes}: nothing to fuse")
    eps = 1e-12
    t = np.asarray(target, np.float64)
    a = t[:, shared]
    q = (np.asarray(source, np.float64) @ m)[:, shared]
    mass = a.sum(1, keepdims=True)
    log_r = (np.log(a / np.clip(mass, eps, None) + eps)
             + weight * np.log(q / np.clip(q.sum(1, keepdims=True), eps, None) + eps))
    r = np.exp(log_r - log_r.max(1, keepdims=True))
    out = t.copy()
    out[:, shared] = r / r.sum(1, keepdims=True) * mass
    return out.astype(np.float32)


def load_classifier(weights, device: str = "cpu", batch: int = 64, half: bool = False, tta: int = 1,
                    tta_below: float = 1.0, white_balance=None, runtime: str = "onnxruntime"):
    """A ``Classifier`` (``.pt`` checkpoint) or ``OnnxClassifier`` (``.onnx`` export) for ``weights``; ``tta`` /
    ``tta_below``: test-time augmentation (see ``_CropClassifier.classify_prepared``); ``white_balance``: reference
    background white of the crops (``_CropClassifier.prepare_resized``), None = off; ``runtime``: what runs an
    ``.onnx`` export (``core.onnxrt.onnx_session``)."""
    check_tta(tta, tta_below)
    CLASSIFIER_SCHEMA["white_balance"].check("white_balance", None if white_balance is None else list(white_balance),
                                             "classifier")
    white_balance = None if white_balance is None else tuple(float(v) for v in white_balance)
    path = resolve_path(weights)
    if path is not None and path.suffix.lower() == ".onnx":
        clf = OnnxClassifier(path, device=device, batch=batch, runtime=runtime)
    else:
        clf = Classifier(path, device=device, batch=batch, half=half)
    clf.tta, clf.tta_below, clf.white_reference = tta, tta_below, white_balance
    if tta > 1:  # runs record it (fields.jsonl "versions")
        clf.name += f":tta{tta}<{tta_below:g}"
    if white_balance is not None:
        clf.name += ":wb" + "/".join(f"{v:g}" for v in white_balance)
    return clf


def _normalize_stain(x: np.ndarray, stain: dict | None) -> np.ndarray:
    """Reinhard-normalize resized crops to ``stain`` when the model was trained so; else ``x`` itself."""
    if not stain:
        return x

    return stain_normalize(x, stain["lab_mean"], stain["lab_std"])


def preprocess_key(clf) -> tuple:
    """Classifiers with equal keys take the same prepared crops (the pipeline prepares them once; classifiers of the
    same input size share the resize, see ``_CropClassifier.prepare_resized``)."""
    st = getattr(clf, "meta", {}).get("stain_reference")
    return (clf.input_size, None if not st else (tuple(st["lab_mean"]), tuple(st["lab_std"])),
            getattr(clf, "white_reference", None))


class _CropClassifier:
    """What both runtimes share: crops -> prepared uint8 NHWC -> probabilities (``classify_prepared``)."""

    input_size: int
    classes: list[str]
    meta: dict
    tta: int = 1  # test-time views, see tta_views
    tta_below: float = 1.0  # extra views only for cells whose single-view top probability is below this
    white_reference: tuple[float, float, float] | None = None  # background white the crops are balanced to

    @property
    def views(self) -> dict[str, list[str]]:
        """Taxonomies whose verdicts this classifier's output also gives (``taxonomies.VIEWS``: a fine13 network
        answers pbc8 and wang11), name -> classes; empty for a classifier of one taxonomy."""

        return {v: TAXONOMIES[v] for v in VIEWS.get(self.task, [])}

    def preprocess(self, crops: list[np.ndarray]) -> np.ndarray:
        """Crops -> uint8 NHWC at the input size (border-replicated to square, then resized; stain-normalized when
        the checkpoint has a ``stain_reference``)."""
        return self.prepare_resized(resize_crops(crops, self.input_size))

    def prepare_resized(self, x: np.ndarray) -> np.ndarray:
        """``preprocess`` for crops already resized to the input size (``resize_crops``): the white balance (when
        ``white_reference`` is set) and the stain step."""
        if self.white_reference is not None and len(x):
            x = white_balance(x, self.white_reference)
        return _normalize_stain(x, self.meta.get("stain_reference"))

    def classify(self, crops: list[np.ndarray]) -> np.ndarray:
        """Probabilities (N, K) for RGB uint8 crops; (0, K) for none."""
        if not len(crops):
            return np.zeros((0, len(self.classes)), np.float32)
        return self.classify_prepared(self.preprocess(crops))

    def classify_prepared(self, x: np.ndarray, with_ood: bool = False):
        """Probabilities (N, K) for crops already at the input size (uint8 NHWC). With ``tta`` > 1, cells whose
        top probability on ``x`` is below ``tta_below`` are classified on all ``tta`` views (``tta_views``) and
        get the views' mean-logit probabilities (``mean_logit_probs``); the others keep the single view's.
        ``with_ood``: returns ``(probs, ood)``, ``ood`` the familiarity scores (N,) of the crops as given
        (``classification.ood``), or None when the checkpoint has no fitted score."""
        if not len(x):
            p = np.zeros((0, len(self.classes)), np.float32)
            return (p, np.zeros((0,), np.float32) if self.has_ood else None) if with_ood else p
        p, ood = self._forward(x)
        if self.tta > 1:
            sel = np.flatnonzero(p.max(1) < self.tta_below)
            if len(sel):
                views = tta_views(x[sel], self.tta)
                p[sel] = mean_logit_probs([p[sel]] + [self._probs(np.ascontiguousarray(v)) for v in views[1:]])
        return (p, ood) if with_ood else p

    @property
    def has_ood(self) -> bool:
        """Whether the checkpoint carries a fitted familiarity score (``meta['ood']``)."""
        return bool(self.meta.get("ood"))

    def _probs(self, x: np.ndarray) -> np.ndarray:
        return self._forward(x)[0]

    def _forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities and familiarity scores (None without a fitted score) for uint8 NHWC crops at the input
        size, one view (the runtime's forward pass)."""
        raise NotImplementedError


class Classifier(_CropClassifier):
    """A trained classifier. ``classes``, ``task``, ``input_size`` and ``temperature`` come from the checkpoint."""

    def __init__(self, weights, device: str = "cpu", batch: int = 64, half: bool = False):
        import torch


        path = resolve_path(weights)
        if path is None or not path.exists():
            raise FileNotFoundError(f"classifier weights not found: {path}")
        self.device = torch.device(device)
        self.model, self.meta = load_checkpoint(path, str(self.device))
        self.half = half and self.device.type == "cuda"
        if self.half:
            self.model.half()
        self.task, self.classes = self.meta["task"], list(self.meta["classes"])
        self.input_size, self.temperature = int(self.meta["input_size"]), float(self.meta["temperature"])
        self.batch = batch
        self._mean = torch.tensor(self.meta["mean"], device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(self.meta["std"], device=self.device).view(1, 3, 1, 1)
        self.name = f"{self.task}:{self.meta['arch']}@{self.input_size}:{path.name}"
        self.path = path
        self._ood = None
        if self.has_ood:

            self._ood = ood_head(self.meta["ood"]).to(self.device)

    def features(self, crops: list[np.ndarray]) -> np.ndarray:
        """Penultimate-layer features (N, D) of RGB uint8 crops: the input of the network's last linear layer, what
        the classes are read from (for embeddings maps and the familiarity score)."""
        return self.features_prepared(self.preprocess(crops))

    def features_prepared(self, x: np.ndarray, with_probs: bool = False):
        """``features`` of crops already prepared at the input size (uint8 NHWC). ``with_probs``: returns
        ``(features, probabilities)``, the probabilities (one view, temperature-scaled) from the same forward pass."""
        import torch

        feats, probs = [], []
        with torch.inference_mode():
            for i in range(0, len(x), self.batch):
                f, logits = features_and_logits(self.model, self._tensor(x[i:i + self.batch]))
                feats.append(f.float().cpu())
                probs.append(torch.softmax(logits.float() / self.temperature, 1).cpu())
        f = torch.cat(feats).flatten(1).numpy() if feats else np.zeros((0, 0), np.float32)
        if not with_probs:
            return f
        return f, (torch.cat(probs).numpy() if probs else np.zeros((0, len(self.classes)), np.float32))

    def _tensor(self, x: np.ndarray):
        import torch

        t = torch.from_numpy(np.ascontiguousarray(x)).to(self.device).permute(0, 3, 1, 2).float().div_(255)
        t = (t - self._mean) / self._std
        return t.half() if self.half else t

    def _forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        import torch


        out, ood = [], []
        with torch.inference_mode():
            for i in range(0, len(x), self.batch):
                t = self._tensor(x[i:i + self.batch])
                if self._ood is not None:
                    f, logits = features_and_logits(self.model, t)
                    ood.append(self._ood(f).float().cpu().numpy())
                else:
                    logits = self.model(t)
                out.append(torch.softmax(logits.float() / self.temperature, 1).cpu().numpy())
        return np.concatenate(out).astype(np.float32), (np.concatenate(ood).astype(np.float32) if ood else None)


ONNX_META_KEY = "leukodiff_classifier"


class OnnxClassifier(_CropClassifier):
    """A classifier exported by ``export_onnx``, run by ONNX Runtime or OpenVINO (``runtime``); the interface of
    ``Classifier``."""

    def __init__(self, path, device: str = "cpu", batch: int = 64, runtime: str = "onnxruntime"):
        import json


        path = resolve_path(path)
        if path is None or not path.exists():
            raise FileNotFoundError(f"classifier weights not found: {path}")
        self.session = onnx_session(path, device, "classifier", runtime)
        raw = self.session.get_modelmeta().custom_metadata_map.get(ONNX_META_KEY)
        if raw is None:
            raise ValueError(f"{path}: not a leukodiff classifier export (no '{ONNX_META_KEY}' metadata); write it "
                             "with tools/export_onnx.py --classifier")
        self.meta = json.loads(raw)
        self.task, self.classes = self.meta["task"], list(self.meta["classes"])
        self.input_size, self.temperature = int(self.meta["input_size"]), float(self.meta["temperature"])
        self.batch = batch
        self.name = f"{self.task}:{self.meta['arch']}@{self.input_size}:{path.name}" + runtime_tag(runtime)
        self.path = path

    def _forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        out = [self.session.run(None, {"crops": np.ascontiguousarray(x[i:i + self.batch])})
               for i in range(0, len(x), self.batch)]
        probs = np.concatenate([o[0] for o in out]).astype(np.float32)
        return probs, (np.concatenate([o[1] for o in out]).astype(np.float32) if len(out[0]) > 1 else None)


def export_onnx(checkpoint, out, opset: int = 17) -> Path:
    """Export a ``.pt`` classifier checkpoint to ONNX for ``OnnxClassifier``: input ``crops`` uint8 (N, S, S, 3),
    output ``probs`` float32 (N, K) = softmax(logits / temperature) (and ``ood`` float32 (N,), the familiarity
    score, when the checkpoint has one), metadata = the checkpoint's (without weights and training history) plus the
    source file's name and sha256. Returns the written path."""
    import hashlib
    import json

    import onnx
    import torch


    checkpoint, out = Path(resolve_path(checkpoint)), Path(out)
    model, meta = load_checkpoint(checkpoint)


    class _Export(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model
            self.ood = ood_head(meta["ood"]) if meta.get("ood") else None
            self.register_buffer("mean", torch.tensor(meta["mean"]).view(1, 3, 1, 1) * 255)
            self.register_buffer("std", torch.tensor(meta["std"]).view(1, 3, 1, 1) * 255)

        def forward(self, crops):
            x = (crops.permute(0, 3, 1, 2).float() - self.mean) / self.std
            if self.ood is None:
                return torch.softmax(self.net(x) / float(meta["temperature"]), 1)
            f, logits = features_and_logits(self.net, x)
            return torch.softmax(logits / float(meta["temperature"]), 1), self.ood(f)

    s = int(meta["input_size"])
    example = torch.zeros((2, s, s, 3), dtype=torch.uint8)
    out.parent.mkdir(parents=True, exist_ok=True)
    import warnings

    with warnings.catch_warnings():  # the TorchScript exporter is deprecated but is the one that writes opset 17 here
        warnings.simplefilter("ignore", DeprecationWarning)
        names = ["probs", "ood"] if meta.get("ood") else ["probs"]
        torch.onnx.export(_Export().eval(), (example,), str(out), input_names=["crops"], output_names=names,
                          dynamic_axes={"crops": {0: "n"}, **{k: {0: "n"} for k in names}}, opset_version=opset,
                          dynamo=False)
    info = {k: meta[k] for k in ("arch", "task", "classes", "input_size", "mean", "std", "temperature", "date")}
    info["stain_reference"] = meta.get("stain_reference")
    if meta.get("ood"):  # the score's matrices are in the graph (output "ood"); its settings travel as metadata
        info["ood"] = {k: v for k, v in meta["ood"].items() if k not in ("means", "proj")}
    info["source"] = checkpoint.name
    info["source_sha256"] = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    info["metrics"] = {split: {k: meta["metrics"][split][k] for k in ("accuracy", "mean_class_accuracy", "ece")
                               if k in meta["metrics"][split]}
                       for split in ("val", "test") if isinstance(meta.get("metrics", {}).get(split), dict)}
    m = onnx.load(str(out))
    entry = m.metadata_props.add()
    entry.key, entry.value = ONNX_META_KEY, json.dumps(info)
    onnx.save(m, str(out))
    return out
