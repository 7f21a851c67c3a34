"""Crops as networks take them: resized uint8 NHWC, float tensors, input normalization, test-time views.

Image convention: RGB uint8 HxWx3 crops in, uint8 (N, S, S, 3) prepared batches, float NCHW in [0, 1] tensors.
"""

from __future__ import annotations

import numpy as np

from core.io import square_resize

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

TTA_VIEWS = (1, 2, 4, 8)


def resize_crops(crops: list[np.ndarray], size: int) -> np.ndarray:
    """Crops -> uint8 NHWC at ``size`` (border-replicated to square, then resized)."""
    out = np.empty((len(crops), size, size, 3), np.uint8)
    for i, c in enumerate(crops):
        out[i] = square_resize(c, size)
    return out


def background_white(x: np.ndarray, step: int = 4) -> np.ndarray:
    """Each crop's background white (N, 3) float: per channel, the 90th percentile of its brightest third of pixels
    (by mean of R, G, B; every ``step``-th pixel per axis). The background and pale red-cell centres are the
    brightest parts of a smear crop; their colour is the illuminant's (a yellow or blue cast of the lamp or camera),
    not the stain's."""
    f = x[:, ::step, ::step].reshape(len(x), -1, 3).astype(np.float32)
    n = f.shape[1]
    k = max(1, n // 3)
    top = np.argpartition(f.mean(2), n - k, axis=1)[:, n - k:]
    return np.percentile(np.take_along_axis(f, top[:, :, None], axis=1), 90, axis=1).astype(np.float32)


def white_balance(x: np.ndarray, reference) -> np.ndarray:
    """uint8 NHWC crops with an illuminant cast beyond ``reference`` corrected to it (von Kries: the same per-channel
    gains for background and cell). ``reference`` (RGB) is the most tinted background white the classifier was
    trained on: a channel of a crop's ``background_white``, as a share of its brightest channel, is raised to the
    reference's share where it falls below it, and left as it is otherwise. Backgrounds between neutral and the
    reference (the training laboratories' range) are unchanged; a yellow, blue or green cast beyond it is brought
    back to its edge."""
    ref = np.asarray(reference, np.float32)
    w = np.maximum(background_white(x), 1.0)
    share = w / w.max(1, keepdims=True)
    gains = np.maximum(share, (ref / ref.max())[None]) / share
    cast = np.flatnonzero((gains > 1.0 + 1e-3).any(1))
    if not len(cast):
        return x
    out = x.copy()
    for i in cast:
        out[i] = scale_channels(x[i], gains[i])
    return out


def scale_channels(image: np.ndarray, gains) -> np.ndarray:
    """An RGB uint8 image with each channel multiplied by its gain, rounded and clipped to 0-255 (one lookup table
    per channel: far faster than float arithmetic per pixel)."""
    import cv2

    lut = np.arange(256, dtype=np.float32)[:, None] * np.asarray(gains, np.float32)[None] + 0.5
    return cv2.LUT(np.ascontiguousarray(image), np.clip(lut, 0, 255).astype(np.uint8).reshape(1, 256, 3))


def nucleus_od_direction(x: np.ndarray, share: float = 0.05) -> np.ndarray:
    """Each crop's stain colour of its darkest part (the nucleus, in a leukocyte crop): the unit optical-density
    vector (R, G, B) of the mean of its ``share`` darkest pixels (by summed optical density). uint8 NHWC -> (N, 3).
    Laboratories differ here by 10-30 degrees (docs/RESULTS.md "Stain colour")."""
    od = -np.log(np.clip(x.reshape(len(x), -1, 3).astype(np.float32) / 255.0, 1e-3, 1.0))
    k = max(1, int(round(od.shape[1] * share)))
    dark = np.argpartition(od.sum(2), od.shape[1] - k, axis=1)[:, -k:]
    v = np.take_along_axis(od, dark[:, :, None], axis=1).mean(1)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-6)


def to_tensor(x_uint8: np.ndarray):
    """uint8 NHWC -> float NCHW in [0, 1]."""
    import torch

    return torch.from_numpy(x_uint8).permute(0, 3, 1, 2).float().div_(255)


def normalize(x, mean=MEAN, std=STD):
    """Float NCHW in [0, 1] -> the network's input (``(x - mean) / std``; see ``models.normalization``)."""
    import torch

    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def tta_views(x: np.ndarray, n: int) -> list[np.ndarray]:
    """``n`` views of uint8 NHWC crops for test-time augmentation, ``x`` itself first: 2 = + horizontal mirror,
    4 = the rotations by 90 degrees, 8 = the rotations and their mirror images (a cell has no orientation on a
    smear; training rotates by any angle and flips)."""
    if n not in TTA_VIEWS:
        raise ValueError(f"tta must be one of {list(TTA_VIEWS)} views, not {n!r}")
    if n == 1:
        return [x]
    if n == 2:
        return [x, x[:, :, ::-1]]
    rot = [x] + [np.rot90(x, k, axes=(1, 2)) for k in (1, 2, 3)]
    return rot if n == 4 else rot + [r[:, :, ::-1] for r in rot]


def mean_logit_probs(probs: list[np.ndarray]) -> np.ndarray:
    """Combine per-view probabilities softmax(logits_v / T) into softmax(mean_v(logits_v) / T): the normalized
    geometric mean (log-probabilities differ from logits / T by a per-view constant)."""
    logp = np.mean([np.log(np.clip(p.astype(np.float64), 1e-30, None)) for p in probs], axis=0)
    e = np.exp(logp - logp.max(1, keepdims=True))
    return (e / e.sum(1, keepdims=True)).astype(np.float32)
