"""Classification metrics as in the papers: accuracy, per-class sensitivity / specificity / precision, confusion
matrix; calibration (ECE) and accuracy against coverage for the ``unidentified`` rule. Pure numpy."""

from __future__ import annotations

import numpy as np


def confusion(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    """Confusion matrix ``C[true, pred]`` (int64, k x k)."""
    c = np.zeros((k, k), np.int64)
    np.add.at(c, (np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)), 1)
    return c


def per_class(c: np.ndarray, classes: list[str]) -> dict[str, dict[str, float]]:
    """Per-class support, sensitivity (recall), specificity, precision and F1 from a confusion matrix.

    A class with no support has ``sensitivity`` None; one never predicted has ``precision`` None.
    """
    total = c.sum()
    out = {}
    for i, name in enumerate(classes):
        tp = c[i, i]
        fn = c[i].sum() - tp
        fp = c[:, i].sum() - tp
        tn = total - tp - fn - fp
        sens = tp / (tp + fn) if tp + fn else None
        prec = tp / (tp + fp) if tp + fp else None
        spec = tn / (tn + fp) if tn + fp else None
        f1 = 2 * prec * sens / (prec + sens) if sens and prec else (0.0 if sens is not None else None)
        out[name] = {"support": int(tp + fn), "sensitivity": _r(sens), "specificity": _r(spec),
                     "precision": _r(prec), "f1": _r(f1)}
    return out


def _r(x):
    return None if x is None else round(float(x), 4)


def ece(probs: np.ndarray, y_true: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error of the top-1 probability (equal-width bins)."""
    conf = probs.max(1)
    correct = probs.argmax(1) == y_true
    edges = np.linspace(0, 1, bins + 1)
    e = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            e += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(e)


def coverage_curve(probs: np.ndarray, y_true: np.ndarray, thresholds=(0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)):
    """Accuracy of the cells kept at each confidence threshold and the share kept (coverage)."""
    conf, correct = probs.max(1), probs.argmax(1) == y_true
    rows = []
    for t in thresholds:
        m = conf >= t
        rows.append({"threshold": t, "coverage": round(float(m.mean()), 4),
                     "accuracy": round(float(correct[m].mean()), 4) if m.any() else None})
    return rows


def summarize(probs: np.ndarray, y_true: np.ndarray, classes: list[str]) -> dict:
    """All figures for a model card: accuracy, mean per-class sensitivity, per-class table, confusion, ECE,
    accuracy against coverage. Classes without support are left out of the mean."""
    y_pred = probs.argmax(1)
    c = confusion(y_true, y_pred, len(classes))
    pc = per_class(c, classes)
    sens = [v["sensitivity"] for v in pc.values() if v["sensitivity"] is not None]
    return {"n": int(len(y_true)), "accuracy": round(float((y_pred == y_true).mean()), 4) if len(y_true) else None,
            "mean_class_accuracy": round(float(np.mean(sens)), 4) if sens else None,
            "ece": round(ece(probs, y_true), 4), "per_class": pc, "confusion": c.tolist(), "classes": list(classes),
            "coverage": coverage_curve(probs, y_true)}


def fit_temperature(logits: np.ndarray, y_true: np.ndarray) -> float:
    """Temperature T minimizing the NLL of ``softmax(logits / T)`` (Guo et al. 2017), by golden-section search
    on log T in [-3, 3]."""
    def nll(log_t):
        z = logits / np.exp(log_t)
        z = z - z.max(1, keepdims=True)
        lp = z - np.log(np.exp(z).sum(1, keepdims=True))
        return -lp[np.arange(len(y_true)), y_true].mean()

    a, b, g = -3.0, 3.0, (np.sqrt(5) - 1) / 2
    for _ in range(60):
        c, d = b - g * (b - a), a + g * (b - a)
        if nll(c) < nll(d):
            b = d
        else:
            a = c
    return float(np.exp((a + b) / 2))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature``."""
    z = logits / temperature
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def format_report(m: dict) -> str:
    """Plain-text table of ``summarize`` output, as printed by the evaluation tools."""
    lines = [f"n {m['n']}  accuracy {m['accuracy']}  mean class accuracy {m['mean_class_accuracy']}  ECE {m['ece']}",
             f"{'class':24s} {'support':>7s} {'sens':>7s} {'spec':>7s} {'prec':>7s}"]
    for name, v in m["per_class"].items():
        f = lambda x: "   -   " if x is None else f"{x:7.4f}"  # noqa: E731
        lines.append(f"{name:24s} {v['support']:7d} {f(v['sensitivity'])} {f(v['specificity'])} {f(v['precision'])}")
    w = max(len(c) for c in m["classes"])
    lines.append("confusion (rows true, columns predicted): " + " ".join(c[:6] for c in m["classes"]))
    for name, row in zip(m["classes"], m["confusion"]):
        lines.append(f"{name:>{w}s} " + " ".join(f"{v:6d}" for v in row))
    lines.append("coverage: " + "  ".join(f">={r['threshold']}: {r['coverage']:.3f} cov, acc {r['accuracy']}"
                                          for r in m["coverage"]))
    return "\n".join(lines)


def mean_class_of_labels(truth: list[str], pred: list[str]) -> float:
    """Mean over the true classes (label strings) of the share predicted right, rounded to 4 places."""
    return round(float(np.mean([np.mean([p == t for tt, p in zip(truth, pred) if tt == t]) for t in set(truth)])), 4)
