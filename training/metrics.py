"""Detection metrics as DCASE reports them: ROC AUC and partial AUC (max FPR 0.1, McClish-standardised,
the value ``sklearn.metrics.roc_auc_score(..., max_fpr=0.1)`` gives, which the DCASE baselines call)."""

from __future__ import annotations

import numpy as np


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds), thresholds descending; ties handled as one step."""
    labels = np.asarray(labels, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.all() or not labels.any():
        raise ValueError("ROC needs both normal and anomalous clips")
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    tps = np.cumsum(labels)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    tpr = np.r_[0.0, tps / labels.sum()]
    fpr = np.r_[0.0, fps / (~labels).sum()]
    return fpr, tpr, np.r_[np.inf, scores[last_of_tie]]


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    """Area under a piecewise-linear curve (numpy 1.x has no ``np.trapezoid``; nodes run numpy 1 with tflite-runtime)."""
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    fpr, tpr, _ = roc_curve(labels, scores)
    return _trapezoid(tpr, fpr)


def pauc(labels: np.ndarray, scores: np.ndarray, max_fpr: float = 0.1) -> float:
    """Standardised partial AUC over FPR ∈ [0, max_fpr] (McClish correction: 0.5 = chance, 1 = perfect)."""
    fpr, tpr, _ = roc_curve(labels, scores)
    stop = np.searchsorted(fpr, max_fpr, side="right")
    x = np.r_[fpr[:stop], max_fpr]
    y = np.r_[tpr[:stop], np.interp(max_fpr, fpr[stop - 1 : stop + 1], tpr[stop - 1 : stop + 1])]
    partial = _trapezoid(y, x)
    min_area = 0.5 * max_fpr**2
    return 0.5 * (1 + (partial - min_area) / (max_fpr - min_area))
