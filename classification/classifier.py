"""Classifier inference from a self-describing checkpoint (``classification.models.save_checkpoint``)."""

from __future__ import annotations

import numpy as np

from pipelines.config import ConfigError, validate, resolve_path


def check_classifier_config(cfg: dict, where: str = "classifier config") -> dict:
    """Validate a classifier config (``classification.train.CLASSIFIER_SCHEMA``) and return it with defaults."""
    from classification.models import BACKBONES
    from classification.taxonomies import TAXONOMIES
    from classification.train import CLASSIFIER_SCHEMA, TRAIN_SCHEMA

    cfg = validate(cfg, CLASSIFIER_SCHEMA, where)
    if cfg["task"] not in TAXONOMIES:
        raise ConfigError(f"{where}: unknown task '{cfg['task']}'; valid: {sorted(TAXONOMIES)}")
    if cfg["arch"] not in BACKBONES:
        raise ConfigError(f"{where}: unknown arch '{cfg['arch']}'; valid: {sorted(BACKBONES)}")
    if not 0.0 <= cfg["min_confidence"] <= 1.0:
        raise ConfigError(f"{where}: min_confidence must be in [0, 1]")
    validate(cfg["train"], TRAIN_SCHEMA, f"{where}: train")
    return cfg


class Classifier:
    """A trained classifier. ``classes``, ``task``, ``input_size`` and ``temperature`` come from the checkpoint."""

    def __init__(self, weights, device: str = "cpu", batch: int = 64, half: bool = False):
        import torch

        from classification.models import load_checkpoint

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

    def preprocess(self, crops: list[np.ndarray]) -> np.ndarray:
        """Crops -> uint8 NHWC at the input size (border-replicated to square, then resized)."""
        from pipelines.io import square_resize

        out = np.empty((len(crops), self.input_size, self.input_size, 3), np.uint8)
        for i, c in enumerate(crops):
            out[i] = square_resize(c, self.input_size)
        return out

    def classify(self, crops: list[np.ndarray]) -> np.ndarray:
        """Probabilities (N, K) for RGB uint8 crops; (0, K) for none."""
        if not len(crops):
            return np.zeros((0, len(self.classes)), np.float32)
        return self.classify_prepared(self.preprocess(crops))

    def classify_prepared(self, x: np.ndarray) -> np.ndarray:
        """Probabilities for crops already at the input size (uint8 NHWC)."""
        import torch

        out = []
        with torch.inference_mode():
            for i in range(0, len(x), self.batch):
                t = torch.from_numpy(x[i:i + self.batch]).to(self.device).permute(0, 3, 1, 2).float().div_(255)
                t = (t - self._mean) / self._std
                logits = self.model(t.half() if self.half else t).float() / self.temperature
                out.append(torch.softmax(logits, 1).cpu().numpy())
        return np.concatenate(out).astype(np.float32)
