"""Scoring variants measured beside the plain mean squared error, on a trained bundle (bench helper).

``band``: the per-band standardised error (the error of each mel band divided by its mean over the
held-out normal clips' windows, then averaged over bands), a whitening of the error vector in the
spirit of the Mahalanobis scores of the DCASE 2020/2021 systems, with a diagonal covariance so it
stays as cheap as the plain score on a node. The band statistics come from the bundle's held-out
clips (named in its manifest), never from the test clips. Scores use the runtime's ``WindowScorer``
(band errors), int8 and float.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_monitor.core.features import log_mel, windows
from edge_monitor.core.model import Bundle, WindowScorer
from edge_monitor.core.wav import load_audio
from training.metrics import auc, pauc


def _band_errors(scorer: WindowScorer, path: Path) -> np.ndarray:
    bundle = scorer.bundle
    w = windows(log_mel(load_audio(path, bundle.params.sample_rate), bundle.params), bundle.params)
    bands = np.empty((len(w), bundle.params.n_mels), dtype=np.float32)
    scorer.errors(w, band_errors=bands)
    return bands


def variant_figures(bundle_dir: Path, train_dir: Path, test: list[tuple[Path, int]]) -> dict:
    """{(variant, 'int8'|'float'): (auc, pauc)} for the plain and the band-standardised score."""
    bundle = Bundle.load(bundle_dir)
    held_out = [train_dir / name for name in bundle.manifest.training["held_out_files"]]
    labels = np.array([label for _, label in test])
    out = {}
    for side, use_float in (("int8", False), ("float", True)):
        scorer = WindowScorer(bundle, batch_size=256, use_float=use_float)
        reference = np.concatenate([_band_errors(scorer, p) for p in held_out]).mean(axis=0)
        plain, band = [], []
        for path, _ in test:
            e = _band_errors(scorer, path)
            plain.append(e.sum(axis=1).mean())
            band.append((e / reference).mean())
        for name, scores in (("mse", plain), ("band", band)):
            out[(name, side)] = (auc(labels, np.array(scores)), pauc(labels, np.array(scores)))
    return out
