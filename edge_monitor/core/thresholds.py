"""Thresholds from scores of normal audio: a gamma fit (loc fixed at 0) and its upper quantile.

One implementation for training (the bundle's clip and decision thresholds, ``training/train.py``)
and for the node (``edge-monitor calibrate``): the same fit, the same quantile function.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class GammaFit:
    """A gamma distribution fitted to ``count`` scores (loc 0) and its ``quantile``: ``value``."""

    shape: float
    scale: float
    quantile: float
    value: float
    count: int

    def exceed_probability(self, threshold: float) -> float:
        """P(score > threshold) under the fit."""
        import scipy.stats

        return float(scipy.stats.gamma.sf(threshold, self.shape, loc=0.0, scale=self.scale))


def gamma_fit(scores: np.ndarray, quantile: float) -> GammaFit:
    """Fit a gamma (loc 0, ``scipy.stats.gamma.fit``) to positive ``scores``; its ``quantile`` is the threshold."""
    import scipy.stats  # not at module level: it would slow every edge-monitor start by 0.5 s

    scores = np.asarray(scores, dtype=np.float64)
    shape, _loc, scale = scipy.stats.gamma.fit(scores, floc=0.0)
    value = float(scipy.stats.gamma.ppf(quantile, shape, loc=0.0, scale=scale))
    return GammaFit(float(shape), float(scale), float(quantile), value, int(scores.size))
