"""The cells a classifier's familiarity score (``classification.ood``) is fitted on, and the fit itself: shared by
``tools/fit_familiarity.py`` (the shipped score) and ``tools/eval_guard.py`` (leave-one-laboratory-out refits)."""

from __future__ import annotations

import datetime

import numpy as np

from classification.data import harmonized_array, load_samples, source_of
from classification.ood import fit_ood
from classification.taxonomies import label_sets
from classification.train import train_labels
from core.io import read_image


def fit_cells(clf, split: str = "val", cell_set_splits: tuple[str, ...] = ("train", "val")) -> dict:
    """The checkpoint's own training laboratories' cells, prepared at its input size: the ``split`` of its
    ``train.sources`` with the harmonized copies it was selected on, and the ``cell_set_splits`` of its
    ``cell_sets`` (few cells each; a set's laboratory is its name). Returns ``{"x": uint8 NHWC, "y": label
    indices (train_labels), "groups": laboratory per cell, "n_samples": cells before the harmonized copies}``."""
    tcfg = clf.meta.get("training", {}).get("config", {}).get("train", {})
    task = clf.task
    samples = load_samples(task, split, tcfg.get("sources"))
    groups = [source_of(p) or "own" for p, _ in samples]
    for name, csv_path in (tcfg.get("cell_sets") or {}).items():  # a cell set's laboratory is its name
        for s in cell_set_splits:
            more = load_samples(task, s, [], {name: csv_path})
            samples += more
            groups += [name] * len(more)
    labels = train_labels(task)
    x = clf.preprocess([read_image(p) for p, _ in samples])
    y = np.array([labels.index(lab) for _, lab in samples])
    groups = np.array(groups)
    for source, reference in (tcfg.get("harmonize") or {}).items():
        hx, hy = harmonized_array(samples, labels, clf.input_size, source, reference)
        x, y = np.concatenate([x, clf.prepare_resized(hx)]), np.concatenate([y, hy])
        groups = np.concatenate([groups, np.full(len(hy), reference)])
    return {"x": x, "y": y, "groups": groups, "n_samples": len(samples)}


def fit_familiarity(clf, feats: np.ndarray, probs: np.ndarray, y: np.ndarray, groups: np.ndarray, dims: int = 64,
                    quantile: float = 0.99) -> dict:
    """The ``ood`` dict for features ``feats`` (N, D) with network probabilities ``probs`` (N, K), labels ``y``
    (indices into ``train_labels``) and laboratories ``groups``: one mean per class and laboratory, with the true
    class, or for coarse labels (BCCD's ``neutrophil``, TXL-PBC's ``mature_leukocyte``) the predicted fine class;
    coarse-labelled cells the network got wrong stay out."""
    labels = train_labels(clf.task)
    pred = probs.argmax(1)
    sets = label_sets(labels, clf.classes)
    cls = np.where(y < len(clf.classes), y, pred)
    keep = (y < len(clf.classes)) | sets[y, pred].astype(bool)
    ood = fit_ood(feats[keep], cls[keep], dims=dims, quantile=quantile, groups=groups[keep])
    ood["fitted_on"] = {"cells": int(keep.sum()), "quantile": quantile, "means_per": "class and laboratory",
                        "laboratories": sorted(set(groups[keep].tolist())),
                        "date": datetime.date.today().isoformat()}
    return ood
