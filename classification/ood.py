"""Familiarity of a cell to the training laboratories: a Mahalanobis distance on the classifier's penultimate
features (Lee et al. 2018: class means, one shared covariance), fitted on the training labs' val cells and stored
in the checkpoint as ``ood``.

Score (``ood`` in fields.jsonl): ``min_k |P^T (f - mu_k)|^2 / r``, with ``P`` the whitening projection onto the
``r`` leading principal directions of the within-class scatter. On cells like the training laboratories' it is
about 1 (the fitted val cells: median ~1); cells unlike any of them score higher. ``threshold``: the score above
which a cell is ``unfamiliar`` (by default the 99th percentile of the val cells' scores). Pure numpy to fit; the
score itself runs inside the network's forward pass (``OodHead``: PyTorch and the ONNX export).
"""

from __future__ import annotations

import numpy as np

OOD_KEYS = ("means", "proj", "dims", "threshold", "val_quantiles", "fitted_on", "n")


def fit_ood(features: np.ndarray, labels: np.ndarray, dims: int = 64, min_per_class: int = 5,
            quantile: float = 0.99, shrinkage: float = 0.05, groups: np.ndarray | None = None) -> dict:
    """Fit the score on ``features`` (N, D) of in-distribution cells with class indices ``labels`` (N,).

    ``groups`` (N,): each cell's laboratory; then every (class, laboratory) pair gets its own mean, so that a
    training laboratory with few cells (BCCD) is as familiar as the one with many (PBC). Groups with fewer than
    ``min_per_class`` cells do not get a mean (their cells still shape the covariance through their group mean).
    The within-class covariance is shrunk towards its mean eigenvalue (``shrinkage``) and whitened on its ``dims``
    leading directions. Returns the checkpoint's ``ood`` dict (lists, JSON-able)."""
    f = np.asarray(features, np.float64)
    y = np.asarray(labels)
    if len(f) < 2 * dims:
        raise ValueError(f"fit_ood: {len(f)} cells are too few for {dims} dimensions (need >= {2 * dims})")
    key = y.astype(str) if groups is None else np.char.add(np.char.add(y.astype(str), "|"), np.asarray(groups, str))
    means, centred = [], []
    for k in np.unique(key):
        m = key == k
        mu = f[m].mean(0)
        centred.append(f[m] - mu)
        if m.sum() >= min_per_class:
            means.append(mu)
    c = np.concatenate(centred)
    cov = c.T @ c / max(1, len(c) - 1)
    cov = (1 - shrinkage) * cov + shrinkage * np.trace(cov) / len(cov) * np.eye(len(cov))
    w, v = np.linalg.eigh(cov)
    order = np.argsort(w)[::-1][:dims]
    proj = v[:, order] / np.sqrt(w[order])
    ood = {"means": np.asarray(means, np.float32).tolist(), "proj": proj.astype(np.float32).tolist(),
           "dims": int(len(order)), "n": int(len(f))}
    s = ood_scores(f, ood)
    ood["threshold"] = float(np.quantile(s, quantile))
    ood["val_quantiles"] = {str(q): round(float(np.quantile(s, q)), 4) for q in (0.5, 0.9, 0.95, 0.99)}
    return ood


def ood_scores(features: np.ndarray, ood: dict) -> np.ndarray:
    """Familiarity scores (N,) of features (N, D) under a fitted ``ood`` dict (higher = less familiar)."""
    means = np.asarray(ood["means"], np.float64)
    proj = np.asarray(ood["proj"], np.float64)
    z = np.asarray(features, np.float64) @ proj  # (N, r)
    zm = means @ proj  # (K, r)
    d = (z ** 2).sum(1, keepdims=True) - 2 * z @ zm.T + (zm ** 2).sum(1)[None]
    return (np.clip(d.min(1), 0, None) / proj.shape[1]).astype(np.float32)


def ood_head(ood: dict):
    """A ``torch.nn.Module`` mapping features (N, D) to the scores of ``ood_scores`` (for the forward pass and the
    ONNX export)."""
    import torch

    class OodHead(torch.nn.Module):
        def __init__(self):
            super().__init__()
            proj = torch.tensor(ood["proj"], dtype=torch.float32)
            self.register_buffer("proj", proj)
            self.register_buffer("zm", torch.tensor(ood["means"], dtype=torch.float32) @ proj)

        def forward(self, f):
            z = f.float() @ self.proj
            d = (z * z).sum(1, keepdim=True) - 2 * z @ self.zm.T + (self.zm * self.zm).sum(1)[None]
            return d.min(1).values.clamp_min(0) / self.proj.shape[1]

    return OodHead()
