"""The study's procedure for the prognosis threshold (Rodellar et al. 2022): ROC analysis of the per-smear share of
COVID-19 reactive lymphocytes, the Youden-optimal threshold, and a simulation of the 2% rule on the study's cohort.
Pure numpy."""

from __future__ import annotations

import numpy as np


def roc(shares: np.ndarray, groups: np.ndarray) -> dict:
    """ROC of the rule ``share >= t`` for every observed share t (plus +inf). Returns thresholds (descending), TPR,
    FPR and the AUC (trapezoid; equals the Mann-Whitney probability with ties counted 1/2)."""
    shares, groups = np.asarray(shares, float), np.asarray(groups, int)
    pos, neg = (groups == 1).sum(), (groups == 0).sum()
    if pos == 0 or neg == 0:
        raise ValueError("ROC needs smears of both groups (group 1 and group 0)")
    thr = np.concatenate([[np.inf], np.unique(shares)[::-1]])
    tpr = np.array([((shares >= t) & (groups == 1)).sum() / pos for t in thr])
    fpr = np.array([((shares >= t) & (groups == 0)).sum() / neg for t in thr])
    auc = float(np.sum((fpr[1:] - fpr[:-1]) * (tpr[1:] + tpr[:-1]) / 2))
    return {"thresholds": thr, "tpr": tpr, "fpr": fpr, "auc": auc}


def rule_metrics(shares, groups, t: float) -> dict:
    """Sensitivity, specificity, precision, accuracy of ``share >= t`` (group 1 = positive)."""
    shares, groups = np.asarray(shares, float), np.asarray(groups, int)
    pred = shares >= t
    tp, fp = int((pred & (groups == 1)).sum()), int((pred & (groups == 0)).sum())
    fn, tn = int((~pred & (groups == 1)).sum()), int((~pred & (groups == 0)).sum())
    div = lambda a, b: round(a / b, 4) if b else None  # noqa: E731
    return {"threshold": float(t), "tp": tp, "fp": fp, "fn": fn, "tn": tn, "sensitivity": div(tp, tp + fn),
            "specificity": div(tn, tn + fp), "precision": div(tp, tp + fp), "accuracy": div(tp + tn, len(groups))}


def youden(r: dict) -> float:
    """Threshold maximizing sensitivity + specificity - 1 (the smallest such observed share)."""
    j = r["tpr"] - r["fpr"]
    best = np.flatnonzero(j == j.max())
    return float(r["thresholds"][best[-1]])


# Study figures (Rodellar et al. 2022): cohort and the cell-level confusion matrix of its Figure 5.
STUDY_CLASSES = ("covid_rl", "classic_rl", "normal_lymphocyte")
STUDY_CONFUSION = np.array([[40, 2, 0], [13, 461, 9], [5, 5, 956]], float)  # rows true, columns predicted
STUDY_COHORT = {"positive": {"smears": 58, "covid_rl": 132, "classic_rl": 70, "normal_lymphocyte": 1604},
                "negative": {"smears": 34, "covid_rl": 0, "classic_rl": 12, "normal_lymphocyte": 420}}


def simulate_cohort(rng: np.random.Generator, cohort: dict = STUDY_COHORT, confusion: np.ndarray = STUDY_CONFUSION,
                    threshold: float = 0.02) -> dict:
    """One draw: spread each group's cells over its smears, pass every cell through the confusion matrix, apply the
    rule. Positive smears get at least one COVID-19 RL each (they are defined by having them); the rest of every
    class is spread uniformly at random (multinomial) over the group's smears."""
    rates = confusion / confusion.sum(1, keepdims=True)
    shares, groups = [], []
    for gname, g in cohort.items():
        m = g["smears"]
        per = np.zeros((m, 3), int)
        for ci, cname in enumerate(STUDY_CLASSES):
            total = g[cname]
            base = np.ones(m, int) if (cname == "covid_rl" and gname == "positive" and total >= m) else np.zeros(m, int)
            per[:, ci] = base + rng.multinomial(total - base.sum(), np.full(m, 1 / m))
        for row in per:
            pred = sum(rng.multinomial(row[ci], rates[ci]) for ci in range(3))
            n = int(pred.sum())
            shares.append(pred[0] / n if n else 0.0)
            groups.append(1 if gname == "positive" else 0)
    return rule_metrics(np.array(shares), np.array(groups), threshold)
