"""Shared fixtures: the real MIMII clips from ../shared/data, and a small model trained by the project."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MIMII = Path(os.environ.get("EDGE_MONITOR_MIMII", REPO.parent / "shared" / "data" / "mimii-fan-id00"))


@pytest.fixture(scope="session")
def mimii() -> Path:
    """The real MIMII fan recordings, read in place (never copied into the repository)."""
    if not (MIMII / "normal").is_dir():
        pytest.skip(f"real recordings not found at {MIMII} (set EDGE_MONITOR_MIMII or put shared/ beside the repo)")
    return MIMII


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    """A small synthetic DCASE-layout data set: fan id_00, 24 normal training clips, 6+6 test clips, 4 s each."""
    from training.synth import generate_dataset

    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root, kinds=("fan",), ids=(0,), n_train=24, n_test_normal=6, n_test_anomaly=6,
                     duration=4.0, severity=0.8, seed=3)
    return root


@pytest.fixture(scope="session")
def trained(synth_data, tmp_path_factory) -> Path:
    """A real int8 bundle trained with `edge-monitor train` on the synthetic set (needs TensorFlow)."""
    pytest.importorskip("tensorflow", reason="training tests need the train extra: pip install '.[train]'")
    from edge_monitor.commands import main

    out = tmp_path_factory.mktemp("models")
    # one damaged clip among the normal ones: training must name it, skip it and record it
    (synth_data / "fan" / "train" / "normal_id_00_broken.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt ")
    assert main(["train", str(synth_data), "--out", str(out), "--epochs", "8", "--no-cache"]) == 0
    return out / "fan-id_00"


@pytest.fixture(scope="session")
def trained_idnn(tmp_path_factory) -> Path:
    """A tiny interpolation-network (idnn) bundle: 8 synthetic fan clips of 3 s, 2 epochs (seconds to train)."""
    pytest.importorskip("tensorflow", reason="training tests need the train extra: pip install '.[train]'")
    from edge_monitor.commands import main
    from training.synth import generate_dataset

    root = tmp_path_factory.mktemp("synth-idnn")
    generate_dataset(root, kinds=("fan",), ids=(0,), n_train=8, n_test_normal=2, n_test_anomaly=2,
                     duration=3.0, severity=0.8, seed=5)
    out = tmp_path_factory.mktemp("models-idnn")
    assert main(["--log-level", "warning", "train", str(root), "--out", str(out), "--epochs", "2", "--no-cache",
                 "--architecture", "idnn"]) == 0
    return out / "fan-id_00"
