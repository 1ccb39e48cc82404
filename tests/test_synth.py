"""Synthetic machine sounds: data set layout, determinism, fault physics, level, onset, CLI."""

from __future__ import annotations

import argparse
import itertools
import re

import numpy as np
import pytest

from edge_monitor.core.errors import UserError
from edge_monitor.core.features import log_mel
from edge_monitor.core.wav import read_wav
from training.synth import (
    FAULTS,
    KINDS,
    add_arguments,
    generate_dataset,
    run,
    synth_clip,
)

SR = 16000
NAME = re.compile(r"(normal|anomaly)_id_\d{2}_\d{8}\.wav")


def clip(kind="fan", machine_id=0, duration=2.0, seed=0, **kw) -> np.ndarray:
    return synth_clip(kind, machine_id, duration, SR, rng=np.random.default_rng(seed), **kw)


def level_db(x: np.ndarray) -> float:
    return 10 * np.log10(np.mean(np.square(x, dtype=np.float64)))


def spectrum_shape(x: np.ndarray) -> np.ndarray:
    """Time-averaged log-mel spectrum with the overall level removed (dB)."""
    mean = log_mel(x).mean(0)
    return mean - mean.mean()


def band_change_db(a: np.ndarray, b: np.ndarray) -> float:
    """Largest mean |log-mel difference| of any mel band between two time-aligned clips (dB)."""
    return float(np.abs(log_mel(a) - log_mel(b)).mean(0).max())


def files_under(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


# ----------------------------------------------------------------------------- data set


def test_dataset_layout_names_and_format(tmp_path):
    paths = generate_dataset(
        tmp_path, kinds=("fan", "gearbox"), ids=(0, 2), n_train=2, n_test_normal=1, n_test_anomaly=2, duration=0.5
    )
    expected = sorted(
        f"{kind}/{folder}/{label}_id_{i:02d}_{n:08d}.wav"
        for kind in ("fan", "gearbox")
        for i in (0, 2)
        for folder, label, count in (("train", "normal", 2), ("test", "normal", 1), ("test", "anomaly", 2))
        for n in range(count)
    )
    assert files_under(tmp_path) == expected
    assert sorted(p.relative_to(tmp_path).as_posix() for p in paths) == expected
    for path in paths:
        assert NAME.fullmatch(path.name)
        samples, info = read_wav(path)
        assert (info.sample_rate, info.channels, info.frames, info.encoding) == (SR, 1, SR // 2, "pcm16")
        assert 0.001 < np.sqrt(np.mean(samples**2)) and np.abs(samples).max() < 0.9


def test_dataset_is_deterministic_per_seed(tmp_path):
    kw = dict(kinds=("pump",), ids=(0,), n_train=1, n_test_normal=1, n_test_anomaly=1, duration=0.5)
    a, b, c = (generate_dataset(tmp_path / name, seed=seed, **kw) for name, seed in (("a", 3), ("b", 3), ("c", 4)))
    for pa, pb, pc in zip(a, b, c):
        assert pa.read_bytes() == pb.read_bytes()
        assert pa.read_bytes() != pc.read_bytes()


def test_dataset_files_do_not_depend_on_what_else_is_generated(tmp_path):
    small = generate_dataset(
        tmp_path / "small", kinds=("pump",), ids=(2,), n_train=1, n_test_normal=0, n_test_anomaly=1, duration=0.5
    )
    big = generate_dataset(
        tmp_path / "big", kinds=("fan", "pump"), ids=(0, 2), n_train=3, n_test_normal=2, n_test_anomaly=3, duration=0.5
    )
    by_name = {p.relative_to(tmp_path / "big"): p for p in big}
    for path in small:
        assert path.read_bytes() == by_name[path.relative_to(tmp_path / "small")].read_bytes()


def test_anomalies_cycle_through_the_given_faults(tmp_path):
    kw = dict(kinds=("fan",), ids=(0,), n_train=0, n_test_normal=0, n_test_anomaly=3, duration=0.5)
    one = generate_dataset(tmp_path / "one", faults=("whine",), **kw)
    two = generate_dataset(tmp_path / "two", faults=("whine", "bearing"), **kw)
    same = [a.read_bytes() == b.read_bytes() for a, b in zip(one, two)]
    assert same == [True, False, True]  # whine, bearing, whine


# ----------------------------------------------------------------------------- clips


@pytest.mark.parametrize("kind", KINDS)
def test_clip_contract(kind):
    for fault in (None, *FAULTS):
        x = clip(kind, duration=1.5, fault=fault, severity=1.0)
        assert x.dtype == np.float32 and x.shape == (int(1.5 * SR),)
        assert np.isfinite(x).all()
        assert np.abs(x).max() <= 0.9 and np.sqrt(np.mean(x.astype(np.float64) ** 2)) > 0.01


@pytest.mark.parametrize("fault", FAULTS)
def test_severity_zero_is_the_normal_clip(fault):
    for kind in KINDS:
        assert np.array_equal(clip(kind, seed=7, fault=fault, severity=0.0), clip(kind, seed=7))


@pytest.mark.parametrize("kind,fault", list(itertools.product(KINDS, FAULTS)))
def test_full_severity_fault_changes_the_spectrum(kind, fault):
    normal = clip(kind, duration=3.0, seed=11)
    strong = band_change_db(clip(kind, duration=3.0, seed=11, fault=fault, severity=1.0), normal)
    weak = band_change_db(clip(kind, duration=3.0, seed=11, fault=fault, severity=0.25), normal)
    assert strong > 2.0  # dB in the most affected mel band, same background and gain
    assert 0.0 < weak < strong


@pytest.mark.parametrize("kind", KINDS)
def test_anomalies_are_not_separable_by_loudness(kind):
    seeds = range(12)
    normal = np.array([level_db(clip(kind, seed=s)) for s in seeds])
    faulty = np.array([level_db(clip(kind, seed=s, fault=FAULTS[s % len(FAULTS)], severity=0.5)) for s in seeds])
    assert normal.max() - normal.min() > 2.0  # the random gain spreads normal levels
    assert np.abs(faulty - normal).max() < 0.5  # a fault keeps the clip's level
    assert normal.min() - 0.5 < faulty.min() and faulty.max() < normal.max() + 0.5


@pytest.mark.parametrize("fault", FAULTS)
def test_fault_onset_keeps_the_normal_sound_before_it(fault):
    onset = 1.5
    for kind in KINDS:
        normal = clip(kind, duration=3.0, seed=5)
        late = clip(kind, duration=3.0, seed=5, fault=fault, severity=1.0, fault_onset=onset)
        cut = int(onset * SR)
        assert np.array_equal(late[:cut], normal[:cut])
        after = int((onset + 0.3) * SR)  # past the fade-in
        assert band_change_db(late[after:], normal[after:]) > 2.0


def test_machine_ids_are_different_machines():
    """Every clip's spectrally nearest other clip comes from the same machine id."""
    for kind in KINDS:
        keys = [(i, s) for i in (0, 2) for s in (1, 2, 3)]
        shapes = {k: spectrum_shape(clip(kind, k[0], duration=3.0, seed=k[1])) for k in keys}
        for key in keys:
            nearest = min((k for k in keys if k != key), key=lambda k: np.abs(shapes[k] - shapes[key]).mean())
            assert nearest[0] == key[0], (kind, key, nearest)


def test_normal_clips_vary():
    a, b = clip("gearbox", seed=1), clip("gearbox", seed=2)
    assert not np.array_equal(a, b)
    assert abs(level_db(a) - level_db(b)) > 0.1 or np.abs(spectrum_shape(a) - spectrum_shape(b)).mean() > 0.1


# ----------------------------------------------------------------------------- errors and CLI


@pytest.mark.parametrize(
    "kw",
    [
        dict(kind="toaster"),
        dict(fault="meltdown"),
        dict(severity=1.5),
        dict(severity=-0.1),
        dict(duration=0.0),
        dict(duration=float("nan")),
        dict(machine_id=100),
        dict(fault="whine", fault_onset=5.0),
        dict(sample_rate=100),
    ],
)
def test_synth_clip_rejects_bad_arguments(kw):
    args = dict(kind="fan", machine_id=0, duration=1.0, sample_rate=SR, rng=np.random.default_rng(0)) | kw
    with pytest.raises(UserError):
        synth_clip(**args)


@pytest.mark.parametrize(
    "kw",
    [
        dict(kinds=("fan", "toaster")),
        dict(faults=("clog", "x")),
        dict(ids=(-1,)),
        dict(n_train=-1),
        dict(seed=-3),
        dict(kinds=()),
    ],
)
def test_generate_dataset_rejects_bad_arguments(tmp_path, kw):
    with pytest.raises(UserError):
        generate_dataset(tmp_path, **(dict(n_train=1, n_test_normal=0, n_test_anomaly=0, duration=0.1) | kw))
    assert not any(tmp_path.iterdir())


def parse(*argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_cli_writes_and_reports(tmp_path, capsys):
    args = parse(str(tmp_path), "--kinds", "pump", "--ids", "1,3", "--train", "2", "--test-normal", "1",
                 "--test-anomaly", "1", "--duration", "0.5", "--faults", "clog")  # fmt: skip
    assert run(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("pump id_01") and lines[1].startswith("pump id_03")
    assert "2 train" in lines[0] and "2 s" in lines[0]
    assert len(files_under(tmp_path)) == 8


def test_cli_defaults():
    args = parse("out")
    assert (args.kinds, args.ids, args.faults) == (",".join(KINDS), "0,2", ",".join(FAULTS))
    assert (args.train, args.test_normal, args.test_anomaly) == (100, 20, 20)
    assert (args.duration, args.sample_rate, args.severity, args.seed) == (10.0, SR, 0.5, 0)


@pytest.mark.parametrize(
    "argv", [("--kinds", "fan,blender"), ("--ids", "a"), ("--severity", "2"), ("--duration", "0"), ("--faults", "rust")]
)
def test_cli_rejects_bad_arguments(tmp_path, argv):
    with pytest.raises(UserError):
        run(parse(str(tmp_path / "out"), "--train", "1", *argv))
