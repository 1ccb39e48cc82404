"""AUC and pAUC agree with scikit-learn's roc_auc_score, which the DCASE baselines call."""

from __future__ import annotations

import numpy as np
import pytest

from training.metrics import auc, pauc, roc_curve

sklearn_metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn is a test dependency")


@pytest.mark.parametrize("seed", range(8))
def test_auc_and_pauc_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    n0, n1 = rng.integers(5, 200, size=2)
    labels = np.r_[np.zeros(n0), np.ones(n1)]
    scores = np.r_[rng.normal(0, 1, n0), rng.normal(rng.uniform(0, 2), 1, n1)]
    if seed % 2:
        scores = np.round(scores, 1)  # ties
    assert auc(labels, scores) == pytest.approx(sklearn_metrics.roc_auc_score(labels, scores), abs=1e-12)
    for p in (0.1, 0.05, 0.3):
        expected = sklearn_metrics.roc_auc_score(labels, scores, max_fpr=p)
        assert pauc(labels, scores, p) == pytest.approx(expected, abs=1e-12)


def test_perfect_and_inverted_detectors():
    labels = np.array([0, 0, 0, 1, 1])
    assert auc(labels, np.array([1, 2, 3, 4, 5])) == 1.0
    assert pauc(labels, np.array([1, 2, 3, 4, 5])) == 1.0
    assert auc(labels, np.array([5, 4, 3, 2, 1])) == 0.0


def test_roc_needs_both_classes():
    with pytest.raises(ValueError, match="both"):
        roc_curve(np.zeros(4), np.arange(4))
