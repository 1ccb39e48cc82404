"""Training a fleet: `train --jobs 2` and a Dask LocalCluster of 2 workers give the bundles sequential training
gives (sha256 of model.tflite), and one id with a broken file fails alone under --strict."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_monitor.commands import main
from edge_monitor.core.model import Bundle, sha256_file
from training.synth import generate_dataset

pytestmark = pytest.mark.slow

IDS = ("fan-id_00", "fan-id_02", "fan-id_04", "fan-id_06")
BROKEN = "fan-id_06"
ARGS = ("--epochs", "2", "--no-cache", "--strict")


@pytest.fixture(scope="module")
def fleet_data(tmp_path_factory) -> Path:
    """4 machine ids, 8 normal 2-s clips each; id_06 also has a truncated WAV."""
    pytest.importorskip("tensorflow", reason="training tests need the train extra: pip install '.[train]'")
    root = tmp_path_factory.mktemp("fleet")
    generate_dataset(root, kinds=("fan",), ids=(0, 2, 4, 6), n_train=8, n_test_normal=0, n_test_anomaly=0,
                     duration=2.0, seed=5)
    (root / "fan" / "train" / "normal_id_06_broken.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt ")
    return root


def _train(data: Path, out: Path, capsys, *extra: str) -> dict[str, str]:
    """Train with ``extra``; check the broken id failed alone; sha256 of each written model.tflite."""
    capsys.readouterr()
    assert main(["--log-level", "warning", "train", str(data), "--out", str(out), *extra, *ARGS]) == 2
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("edge-monitor: error:")]
    assert len(errors) == 1 and BROKEN in errors[0] and "normal_id_06_broken.wav" in errors[0], captured.err
    assert "Traceback" not in captured.err
    assert "3 of 4 bundles written; failed: fan-id_06" in captured.err
    assert "[3/4 done, 0 running, 0 queued, 1 failed" in captured.out
    written = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert written == sorted(set(IDS) - {BROKEN}), written  # no half-written bundle of the failed id
    assert not [p for p in out.iterdir() if p.name.endswith(".staging")]
    for key in written:
        Bundle.load(out / key)
    return {key: sha256_file(out / key / "model.tflite") for key in written}


def test_sequential_jobs_and_dask_give_identical_bundles(fleet_data, tmp_path, capsys):
    sequential = _train(fleet_data, tmp_path / "seq", capsys, "--jobs", "1")
    jobs = _train(fleet_data, tmp_path / "jobs", capsys, "--jobs", "2")
    assert jobs == sequential

    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        on_dask = _train(fleet_data, tmp_path / "dask", capsys, "--dask", cluster.scheduler_address)
    assert on_dask == sequential
    assert len(set(sequential.values())) == 3  # three different models, not one copied


def test_unreachable_dask_scheduler_is_one_line(fleet_data, tmp_path, capsys):
    pytest.importorskip("distributed")
    assert main(["train", str(fleet_data), "--out", str(tmp_path / "m"), "--dask", "tcp://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert "--dask tcp://127.0.0.1:9: cannot reach the scheduler" in err and "Traceback" not in err
