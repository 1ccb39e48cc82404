"""A model must not mistake a resampler's roll-off for a fault.

Normal clips that went through a 48-kHz stage and back (the daemon's ``StreamResampler`` behind a
48-kHz device, and sox) must score like the originals with a model trained with the default feature
parameters. The control: the same clips through a model whose mel bands reach Nyquist (the default
before, ``--fmax nyquist``) ARE flagged, so the chain in this test is harsh enough to catch the old
default coming back. Two small real int8 models, trained here on synthetic clips (pristine digital
sound, full band up to 8 kHz, as a 16-kHz recording of a broadband machine is).
"""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edge_monitor.commands import main
from edge_monitor.core.features import FeatureParams
from edge_monitor.core.model import Bundle, WindowScorer
from edge_monitor.core.resample import StreamResampler
from edge_monitor.core.wav import load_audio, resample, write_wav

RATE = 16000
N_TEST = 4


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from training.synth import generate_dataset

    root = tmp_path_factory.mktemp("chain-synth")
    generate_dataset(root, kinds=("fan",), ids=(0,), n_train=20, n_test_normal=N_TEST, n_test_anomaly=0,
                     duration=4.0, severity=0.8, seed=11)
    return root


def _train(data: Path, out: Path, *flags: str) -> Bundle:
    pytest.importorskip("tensorflow", reason="training tests need the train extra: pip install '.[train]'")
    assert main(["--log-level", "warning", "train", str(data), "--out", str(out), "--epochs", "8", "--no-cache",
                 *flags]) == 0
    return Bundle.load(out / "fan-id_00")


@pytest.fixture(scope="module")
def default_bundle(data, tmp_path_factory) -> Bundle:
    return _train(data, tmp_path_factory.mktemp("chain-default"))


@pytest.fixture(scope="module")
def nyquist_bundle(data, tmp_path_factory) -> Bundle:
    return _train(data, tmp_path_factory.mktemp("chain-nyquist"), "--fmax", "nyquist")


def _stream48(src: Path, dst: Path) -> None:
    """16 kHz → 48 kHz (the project's file resampler) → 16 kHz by the daemon's StreamResampler, 0.1-s blocks."""
    high = resample(load_audio(src, RATE), RATE, 48000)
    stream = StreamResampler(48000, RATE)
    y = np.concatenate([stream.process(high[i:i + 4800]) for i in range(0, len(high), 4800)])
    write_wav(dst, y, RATE)


def _sox48(src: Path, dst: Path) -> None:
    if not shutil.which("sox"):
        pytest.skip("sox not installed (apt-get install sox)")
    mid = dst.with_suffix(".48k.wav")
    subprocess.run(["sox", str(src), "-r", "48000", str(mid)], check=True)
    subprocess.run(["sox", str(mid), "-r", str(RATE), str(dst)], check=True)


CHAINS = {"stream48": _stream48, "sox48": _sox48}


@pytest.fixture(scope="module", params=sorted(CHAINS))
def chained(request, data, tmp_path_factory) -> tuple[str, list[Path], list[Path]]:
    """(chain, the normal test clips, the same clips through the chain)."""
    originals = sorted((data / "fan" / "test").glob("normal_*.wav"))
    assert len(originals) == N_TEST
    out = tmp_path_factory.mktemp(f"chain-{request.param}")
    copies = [out / p.name for p in originals]
    for src, dst in zip(originals, copies, strict=True):
        CHAINS[request.param](src, dst)
    return request.param, originals, copies


def _scores(bundle: Bundle, files: list[Path]) -> np.ndarray:
    scorer = WindowScorer(bundle)
    return np.array([scorer.clip_score(load_audio(f, RATE)) for f in files])


def _replay_alarms(bundle: Bundle, files: list[Path]) -> int:
    """Exit code of ``edge-monitor replay`` over the files: 0 no anomaly anywhere, 1 an anomaly."""
    with contextlib.redirect_stdout(io.StringIO()):
        return main(["--log-level", "warning", "replay", *map(str, files), "--model", str(bundle.path), "--quiet"])


def _relative_change(bundle: Bundle, originals: list[Path], copies: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    native, through = _scores(bundle, originals), _scores(bundle, copies)
    print(f"fmax {bundle.params.f_max:g} Hz threshold {bundle.threshold:.3f} native {np.round(native, 3)} "
          f"chained {np.round(through, 3)}")
    return through, (through - native) / native


@pytest.mark.slow
def test_new_bundles_keep_their_mel_edge_below_the_resampler_roll_off(default_bundle, nyquist_bundle):
    assert default_bundle.params == FeatureParams()
    assert default_bundle.params.f_max < 0.9 * RATE / 2  # resample_poly is -0.3 dB at 0.85, -6 dB at 1.0
    assert default_bundle.manifest.to_dict()["features"]["fmax"] == default_bundle.params.f_max
    assert nyquist_bundle.params.f_max == RATE / 2


def test_bundles_made_before_keep_their_own_edge():
    """The demo bundle predates the new default: it loads with the edge its manifest records, and replays."""
    from edge_monitor import DEMO_DIR

    demo = Bundle.load(DEMO_DIR / "fan-id_00")
    assert demo.params.f_max == RATE / 2 and demo.params != FeatureParams()
    assert _replay_alarms(demo, [DEMO_DIR / "clips" / "normal_id_00_demo.wav"]) == 0
    assert _replay_alarms(demo, [DEMO_DIR / "clips" / "anomaly_id_00_demo.wav"]) == 1


@pytest.mark.slow
def test_round_tripped_normal_clips_score_as_the_originals(default_bundle, chained):
    chain, originals, copies = chained
    through, change = _relative_change(default_bundle, originals, copies)
    # measured: within 0.5 % of the originals' scores (a model with bands up to Nyquist: +3 to +13 %)
    assert np.max(np.abs(change)) < 0.02, f"{chain}: the round trip moved normal clip scores by {change}"
    assert np.all(through < default_bundle.threshold), f"{chain}: normal clips flagged after the round trip"
    assert _replay_alarms(default_bundle, copies) == 0


@pytest.mark.slow
def test_control_bands_up_to_nyquist_see_the_round_trip(nyquist_bundle, chained):
    """Without it the test above could pass on a chain too mild to matter: with the old default
    (bands up to Nyquist) the same round trip raises every normal clip's score."""
    chain, originals, copies = chained
    through, change = _relative_change(nyquist_bundle, originals, copies)
    # measured: stream48 +3 to +13 %; sox48 (passband ends at 7.6 kHz) +85 to +120 %, every clip flagged
    assert np.all(change > 0.02) and np.mean(change) > 0.04, f"{chain}: {change}"
    if chain == "sox48":
        assert np.all(through > nyquist_bundle.threshold)
        assert _replay_alarms(nyquist_bundle, copies) == 1


@pytest.mark.parametrize("value", ["9000", "0", "-5", "lots"])
def test_bad_fmax_is_one_line_and_exit_2(value, tmp_path, capsys):
    code = main(["train", str(tmp_path), "--out", str(tmp_path / "m"), "--fmax", value])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--fmax" in err[0] and "nyquist" in err[0], err
