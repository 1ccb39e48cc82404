"""The one feature implementation: batch == streaming, both == librosa, and the edge cases."""

from __future__ import annotations

import numpy as np
import pytest

from edge_monitor.core.errors import FeatureError
from edge_monitor.core.features import (
    LOG_OFFSET,
    FeatureParams,
    StreamingLogMel,
    log_mel,
    mel_band_edges,
    mel_filterbank,
    n_frames,
    windows,
)
from edge_monitor.core.wav import load_audio

try:
    import librosa
except ImportError:  # the comparisons with librosa skip; the rest (block invariance, edge cases) runs,
    librosa = None   # e.g. in the arm64 stage, where librosa's numba JIT is far too slow under emulation
needs_librosa = pytest.mark.skipif(librosa is None, reason="librosa is a test dependency: pip install '.[test]'")

P = FeatureParams()


def librosa_log_mel(x: np.ndarray, p: FeatureParams = P) -> np.ndarray:
    mel = librosa.feature.melspectrogram(
        y=x, sr=p.sample_rate, n_fft=p.n_fft, hop_length=p.hop_length, n_mels=p.n_mels,
        fmin=p.fmin, fmax=p.f_max, power=p.power, center=False,
    )
    return (10 * np.log10(mel + LOG_OFFSET)).T


def synthetic(seconds: float = 3.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * P.sample_rate)) / P.sample_rate
    tones = sum(0.1 / k * np.sin(2 * np.pi * 97 * k * t + rng.uniform(0, 6)) for k in range(1, 12))
    chirp = 0.05 * np.sin(2 * np.pi * (200 + 1500 * t) * t)
    return (tones + chirp + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


def assert_close_where_audible(ours: np.ndarray, reference: np.ndarray) -> None:
    assert ours.shape == reference.shape
    audible = reference > -80
    assert audible.mean() > 0.5, "the test signal should be mostly above -80 dB"
    assert np.max(np.abs(ours - reference)[audible]) <= 0.01


def test_defaults_are_dcase2020():
    assert (P.sample_rate, P.n_fft, P.hop_length, P.n_mels, P.frames, P.power) == (16000, 1024, 512, 128, 5, 2.0)
    assert P.window_size == 640
    # except the upper mel edge: 75 % of Nyquist, below resamplers' roll-off (tests/test_capture_chain.py)
    assert P.f_max == 6000 and FeatureParams(sample_rate=22050).f_max == pytest.approx(0.75 * 11025)


@needs_librosa
@pytest.mark.parametrize("fmax", [None, 8000.0])
def test_filterbank_matches_librosa_slaney(fmax):
    p = FeatureParams(fmax=fmax)
    ours = mel_filterbank(p)
    ref = librosa.filters.mel(sr=16000, n_fft=1024, n_mels=128, fmin=0, fmax=p.f_max)
    np.testing.assert_allclose(ours.T, ref, atol=1e-7)
    assert not ours.flags.writeable
    edges = mel_band_edges(p)
    assert edges[0] == 0 and edges[-1] == pytest.approx(p.f_max)


@needs_librosa
def test_log_mel_matches_librosa_on_synthetic_signals():
    for seed in range(3):
        x = synthetic(seed=seed)
        assert_close_where_audible(log_mel(x), librosa_log_mel(x))


@needs_librosa
def test_log_mel_matches_librosa_with_other_parameters():
    p = FeatureParams(sample_rate=22050, n_fft=2048, hop_length=256, n_mels=64, fmin=50.0, fmax=10000.0)
    x = np.random.default_rng(1).standard_normal(22050).astype(np.float32) * 0.1
    assert_close_where_audible(log_mel(x, p), librosa_log_mel(x, p))


@needs_librosa
def test_log_mel_matches_librosa_on_real_recordings(mimii):
    files = sorted((mimii / "normal").glob("*.wav"))[:2] + sorted((mimii / "abnormal").glob("*.wav"))[:2]
    for path in files:
        x = load_audio(path, 16000)
        ours = log_mel(x)
        assert ours.shape == (311, 128)
        assert_close_where_audible(ours, librosa_log_mel(x))


@pytest.mark.parametrize("seed", range(6))
def test_streaming_equals_batch_for_random_block_sizes(seed):
    rng = np.random.default_rng(seed)
    x = synthetic(seconds=4.0, seed=seed)
    expected = log_mel(x)
    stream = StreamingLogMel(P, initial_block=int(rng.integers(1, 3000)))
    max_block = [3, 700, 5000, 40000, 70000, 100][seed]
    got, i = [], 0
    while i < len(x):
        n = int(rng.integers(1, max_block + 1))
        got.append(stream.push(x[i : i + n]))  # push returns an array the caller owns: no copy needed
        i += n
    got = np.concatenate(got)
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)  # bit for bit: the block size must not matter
    assert stream.frames_emitted == n_frames(len(x), P)
    assert stream._fill < P.n_fft  # keeps only what the next frame needs


def test_push_returns_frames_the_caller_owns_and_push_view_is_the_hot_path():
    """numpy's convention: ``push`` returns a new array; the next push must not change it (defect 4 of
    issue 9). ``push_view`` is the documented no-copy variant whose result the next push overwrites."""
    x = synthetic(seconds=1.0)
    stream = StreamingLogMel(P)
    first = stream.push(x[:8000])
    kept = first.copy()
    stream.push(x[8000:])
    np.testing.assert_array_equal(first, kept)
    assert first.flags.owndata
    view_stream = StreamingLogMel(P)
    view = view_stream.push_view(x[:8000])
    before = view.copy()
    view_stream.push_view(x[8000:])
    assert not np.array_equal(view, before)  # the documented hazard of the hot path, so push must copy


def test_streaming_one_sample_at_a_time():
    x = synthetic(seconds=0.3)
    stream = StreamingLogMel(P)
    got = np.concatenate([stream.push(x[i : i + 1]).copy() for i in range(len(x))])
    np.testing.assert_array_equal(got, log_mel(x))


def test_streaming_minutes_in_one_block():
    x = np.tile(synthetic(seconds=5.0), 24)  # two minutes
    got = StreamingLogMel(P).push(x)
    np.testing.assert_array_equal(got, log_mel(x))


def test_streaming_reset_restarts_framing():
    x = synthetic(seconds=1.0)
    stream = StreamingLogMel(P)
    stream.push(x[:700])
    stream.reset()
    np.testing.assert_array_equal(stream.push(x), log_mel(x))


def test_signal_shorter_than_one_frame():
    assert log_mel(np.zeros(P.n_fft - 1, np.float32)).shape == (0, 128)
    assert log_mel(np.zeros(0, np.float32)).shape == (0, 128)
    assert log_mel(np.zeros(P.n_fft, np.float32)).shape == (1, 128)
    assert StreamingLogMel(P).push(np.zeros(P.n_fft - 1, np.float32)).shape == (0, 128)
    assert windows(log_mel(np.zeros(P.n_fft * 2, np.float32))).shape == (0, 640)


def test_silence_gives_the_floor():
    out = log_mel(np.zeros(16000, np.float32))
    assert out.shape == (30, 128)
    np.testing.assert_allclose(out, 10 * np.log10(LOG_OFFSET), atol=1e-4)  # -156.6 dB everywhere


@needs_librosa
def test_full_scale_clipping_is_finite_and_loud():
    x = np.sign(synthetic(seconds=1.0)).astype(np.float32)  # square-ish wave at ±1
    out = log_mel(x)
    assert np.isfinite(out).all()
    assert out.max() > 20
    assert_close_where_audible(out, librosa_log_mel(x))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples_are_rejected(bad):
    x = synthetic(seconds=0.5)
    x[1234] = bad
    with pytest.raises(FeatureError, match="sample 1234"):
        log_mel(x)
    with pytest.raises(FeatureError, match="sample 1234"):
        StreamingLogMel(P).push(x)


def test_wrong_shapes_and_types_are_rejected():
    with pytest.raises(FeatureError, match="mono"):
        log_mel(np.zeros((100, 2), np.float32))
    with pytest.raises(FeatureError, match="float"):
        log_mel(np.zeros(2048, np.int16))
    with pytest.raises(FeatureError, match="shape"):
        windows(np.zeros((10, 64), np.float32))


def test_windows_are_frame_major_stride_one():
    frames = np.arange(8 * 128, dtype=np.float32).reshape(8, 128)
    w = windows(frames)
    assert w.shape == (4, 640)
    for i in range(4):
        np.testing.assert_array_equal(w[i], frames[i : i + 5].reshape(-1))
    # the DCASE 2020 baseline's own loop, on the (n_mels, n_frames) layout it uses
    lm = frames.T
    dcase = np.zeros((4, 640), np.float32)
    for t in range(5):
        dcase[:, 128 * t : 128 * (t + 1)] = lm[:, t : t + 4].T
    np.testing.assert_array_equal(w, dcase)


@pytest.mark.parametrize(
    "kwargs, field",
    [({"n_fft": 0}, "n_fft"), ({"hop_length": 2048}, "hop_length"), ({"fmax": 9000.0}, "fmax"),
     ({"power": 3.0}, "power"), ({"n_mels": 1.5}, "n_mels"), ({"fmin": -1.0}, "fmin")],
)
def test_bad_parameters_name_the_field(kwargs, field):
    with pytest.raises(FeatureError, match=f"features.{field}"):
        FeatureParams(**kwargs)


def test_params_round_trip_through_dict():
    assert FeatureParams.from_dict(P.to_dict()) == P == FeatureParams(fmax=6000.0)
    # a manifest written before the default moved keeps its own edge
    assert FeatureParams.from_dict({**P.to_dict(), "fmax": 8000.0}).f_max == 8000.0
    with pytest.raises(FeatureError, match="unknown parameter"):
        FeatureParams.from_dict({**P.to_dict(), "center": True})


def test_the_lightweight_fft_is_scipys_own():
    """features loads scipy's pocketfft extension directly (less memory); it must equal scipy.fft.rfft."""
    import scipy.fft

    from edge_monitor.core import features

    assert features._FFT_NAME == "pypocketfft"  # the memory saving is in effect with this scipy
    x = np.random.default_rng(4).standard_normal((37, P.n_fft)).astype(np.float32)
    np.testing.assert_array_equal(features._rfft(x), scipy.fft.rfft(x, axis=1))
    assert features._rfft(x).dtype == np.complex64


def test_every_fft_call_transforms_a_multiple_of_16_rows(monkeypatch):
    """On aarch64 pocketfft rounds a row's FFT differently in a SIMD group of rows (4, 8 or 16 with
    NEON/SSE2, AVX, AVX-512) than among the rows left over, so a row count that depends on the block
    size breaks live == replay there (the arm64 stage, tests/arm64.sh, shows it). x86 rounds both the
    same, so this checks the cause here: the rows handed to the FFT, whatever the blocks."""
    from edge_monitor.core import features

    rows: list[int] = []
    real = features._rfft

    def counting(x: np.ndarray) -> np.ndarray:
        rows.append(x.shape[0])
        return real(x)

    monkeypatch.setattr(features, "_rfft", counting)
    x = synthetic(seconds=3.0, seed=5)
    expected = log_mel(x)
    for block in (1, 513, 1024, 7000):
        stream = StreamingLogMel(P)
        got = np.concatenate([stream.push(x[i : i + block]).copy() for i in range(0, len(x), block)])
        np.testing.assert_array_equal(got, expected)
    assert len(set(rows)) > 1 and all(n % 16 == 0 for n in rows), sorted(set(rows))
    assert features._CHUNK_FRAMES % features._FFT_ROWS == 0
