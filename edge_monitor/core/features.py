"""Log-mel features: the one implementation used by training, evaluation, replay and the daemon.

DCASE 2020 Task 2 settings by default (16 kHz, n_fft 1024, hop 512, 128 mels, 5 stacked frames) except
the upper mel edge (``DEFAULT_FMAX_FRACTION`` of Nyquist, not Nyquist itself),
periodic Hann window, Slaney mel scale with Slaney area normalisation (librosa's defaults), power
spectrum, and ``10·log10(mel + 2.2e-16)``. Frames are "valid" frames: frame ``i`` covers samples
``[i·hop, i·hop + n_fft)`` with no centre padding, so a stream cut into any blocks and the whole
file give the same frames.

``log_mel`` (whole signals) and ``StreamingLogMel`` (blocks) both end in ``_FrameKernel``, so the
batch and the streaming path cannot drift apart.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from edge_monitor.core.errors import FeatureError

LOG_OFFSET = 2.2e-16
"""Added to the mel power before the log (the DCASE baseline's ``sys.float_info.epsilon``)."""

_CHUNK_FRAMES = 2048
"""Frames computed per FFT call in ``log_mel``: bounds the temporary memory for long signals."""

_FFT_ROWS = 16
"""Every FFT call transforms a multiple of this many rows (the last ones zero padding).

pocketfft transforms rows in SIMD groups of ``vlen`` (4 floats with SSE2 or NEON, 8 with AVX, 16
with AVX-512) and the rows left over one by one in scalar code. On x86 both give the same bits; on
aarch64 the compiler fuses multiply-adds differently in the two, so a row's spectrum depended on its
position in the call: a live stream (1-2 frames per call) and a whole file gave different frames
(36 of 37 rows differed under arm64 emulation). With a multiple of 16 every row takes the SIMD path
on every build. Must stay a divisor of ``_CHUNK_FRAMES``.
"""


DEFAULT_FMAX_FRACTION = 0.75
"""Default upper mel edge as a fraction of Nyquist (6000 Hz at 16 kHz), below the roll-off of the
resamplers a capture chain puts between the machine and the model: sox ends its passband at 95 % of
Nyquist, ``scipy.signal.resample_poly`` and ``StreamResampler`` are -0.3 dB at 86 %, PulseAudio 16's
default resampler (a 16-kHz client of a 48-kHz device) is -1 dB at 71 % for a round trip. With bands up
to Nyquist (the DCASE setting, and the default before) a normal clip that went through a 44.1/48-kHz
stage and back scored as an anomaly; see README "The capture chain" and ``bench/capture_chain.py``.
Bundles made before keep the ``fmax`` their manifest records."""


@dataclass(frozen=True)
class FeatureParams:
    """Feature parameters; a model bundle's manifest records them and the runtime must match."""

    sample_rate: int = 16000
    n_fft: int = 1024
    hop_length: int = 512
    n_mels: int = 128
    fmin: float = 0.0
    # None: DEFAULT_FMAX_FRACTION · sample_rate / 2 (stored as that number, so equal sets compare equal)
    fmax: float | None = None
    power: float = 2.0
    frames: int = 5

    def __post_init__(self) -> None:
        def bad(field: str, why: str) -> FeatureError:
            return FeatureError(f"features.{field}: {why}, got {getattr(self, field)!r}")

        for name in ("sample_rate", "n_fft", "hop_length", "n_mels", "frames"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise bad(name, "expected a positive integer")
        for name in ("fmin", "fmax", "power"):
            value = getattr(self, name)
            if not (value is None and name == "fmax") and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value)
            ):
                raise bad(name, "expected a number")
        if self.hop_length > self.n_fft:
            raise bad("hop_length", f"must not exceed n_fft ({self.n_fft})")
        if self.n_fft % 2:
            raise bad("n_fft", "expected an even FFT size")
        if self.fmax is None:
            object.__setattr__(self, "fmax", default_fmax(self.sample_rate))
        if not (self.fmin < self.fmax <= self.sample_rate / 2):
            raise bad("fmax", f"expected fmin < fmax <= sample_rate/2 ({self.sample_rate / 2})")
        if not 0 <= self.fmin < self.sample_rate / 2:
            raise bad("fmin", f"expected 0 <= fmin < sample_rate/2 ({self.sample_rate / 2})")
        if self.power not in (1.0, 2.0):
            raise bad("power", "expected 1.0 (magnitude) or 2.0 (power)")
        object.__setattr__(self, "fmin", float(self.fmin))
        object.__setattr__(self, "fmax", float(self.fmax))

    @property
    def f_max(self) -> float:
        return float(self.fmax)  # never None after __post_init__

    @property
    def window_size(self) -> int:
        """Length of one model input: ``frames · n_mels``."""
        return self.frames * self.n_mels

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> FeatureParams:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise FeatureError(f"features: unknown parameter(s) {', '.join(unknown)}")
        return cls(**data)


def default_fmax(sample_rate: int) -> float:
    """The upper mel edge a new model gets at ``sample_rate``: ``DEFAULT_FMAX_FRACTION`` of Nyquist."""
    return float(DEFAULT_FMAX_FRACTION * sample_rate / 2)


# Slaney's Auditory Toolbox mel scale: linear below 1 kHz, logarithmic above.
_F_SP = 200.0 / 3
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = np.log(6.4) / 27.0


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    log_part = _MIN_LOG_MEL + np.log(np.maximum(hz, _MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOGSTEP
    return np.where(hz >= _MIN_LOG_HZ, log_part, hz / _F_SP)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(mel >= _MIN_LOG_MEL, _MIN_LOG_HZ * np.exp(_LOGSTEP * (mel - _MIN_LOG_MEL)), _F_SP * mel)


def mel_band_edges(params: FeatureParams) -> np.ndarray:
    """The ``n_mels + 2`` corner frequencies (Hz) of the triangular filters; band i spans [i, i+2]."""
    mels = np.linspace(_hz_to_mel(params.fmin), _hz_to_mel(params.f_max), params.n_mels + 2)
    return _mel_to_hz(mels)


@lru_cache(maxsize=8)
def mel_filterbank(params: FeatureParams) -> np.ndarray:
    """Slaney-normalised triangular mel filters, shape ``(n_fft//2 + 1, n_mels)``, float32 (read-only)."""
    fft_freqs = np.linspace(0, params.sample_rate / 2, params.n_fft // 2 + 1)
    edges = mel_band_edges(params)
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    out = np.ascontiguousarray(weights.T, dtype=np.float32)
    out.flags.writeable = False
    return out


@lru_cache(maxsize=8)
def _real_fft() -> tuple[str, Callable[[np.ndarray], np.ndarray]]:
    """The rows' real FFT: scipy's pocketfft extension, loaded on its own when possible.

    ``scipy.fft.rfft`` is a thin wrapper around ``pypocketfft.r2c``, but importing ``scipy.fft`` pulls
    in ~85 scipy modules: 10-20 MB of resident memory in the daemon, which needs nothing else of scipy.
    Loading the extension file directly gives the same function (same results, tested), without them;
    if the file is not where scipy keeps it, ``scipy.fft`` it is.
    """
    try:
        import importlib.machinery
        import importlib.util

        spec = importlib.util.find_spec("scipy")  # locates scipy without importing it
        if spec is not None and spec.submodule_search_locations:
            folder = Path(spec.submodule_search_locations[0]) / "fft" / "_pocketfft"
            for suffix in importlib.machinery.EXTENSION_SUFFIXES:
                path = folder / f"pypocketfft{suffix}"
                if path.is_file():
                    ext = importlib.util.spec_from_file_location("pypocketfft", path)
                    assert ext is not None and ext.loader is not None
                    module = importlib.util.module_from_spec(ext)
                    ext.loader.exec_module(module)
                    r2c = module.r2c
                    return "pypocketfft", lambda x: r2c(x, (1,), True, 0, None, 1)
    except (ImportError, OSError, AssertionError, AttributeError):
        pass
    import scipy.fft

    return "scipy.fft", lambda x: scipy.fft.rfft(x, axis=1)


_FFT_NAME, _rfft = _real_fft()


def _hann(n_fft: int) -> np.ndarray:
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)  # periodic Hann
    window.flags.writeable = False
    return window


class _FrameKernel:
    """Frames of samples → log-mel rows. The one place where the spectrum and the log are computed."""

    def __init__(self, params: FeatureParams):
        self.params = params
        self.window = _hann(params.n_fft)
        mel = mel_filterbank(params)
        # The mel projection as a sparse sum: each band adds its few non-zero bins in a fixed order.
        # A dense BLAS matmul rounds differently depending on how many frames it is given, so a live
        # stream (one frame per call) and a file (hundreds) would differ in the last bit; this way
        # every frame gets the same float32 result however the audio was cut into blocks.
        bins = [np.flatnonzero(mel[:, band]) for band in range(mel.shape[1])]
        self._bands = np.array([len(b) > 0 for b in bins])
        self._bins = np.concatenate(bins).astype(np.intp)
        self._weights = np.concatenate([mel[b, band] for band, b in enumerate(bins)]).astype(np.float32)
        sizes = [len(b) for b in bins if len(b)]
        self._starts = np.cumsum([0] + sizes[:-1]).astype(np.intp)

    def __call__(self, frames: np.ndarray, out: np.ndarray) -> None:
        """``frames``: (k, n_fft) float32 samples (a strided view is fine); writes (k, n_mels) into ``out``.

        Single precision throughout, as librosa computes it: twice as fast as double on a Pi and
        far inside the 0.01 dB agreement with librosa the tests demand.
        """
        count = frames.shape[0]
        padded = np.empty((-(-count // _FFT_ROWS) * _FFT_ROWS, frames.shape[1]), dtype=np.float32)
        np.multiply(frames, self.window, out=padded[:count])
        padded[count:] = 0.0  # padding rows: transformed, then dropped (see _FFT_ROWS)
        spectrum = _rfft(padded)[:count]  # float32 (k, n_fft) → complex64 (k, n_fft/2 + 1)
        mag = np.abs(spectrum)
        if self.params.power == 2.0:
            np.square(mag, out=mag)
        weighted = np.take(mag, self._bins, axis=1)
        weighted *= self._weights
        if self._bands.all():
            np.add.reduceat(weighted, self._starts, axis=1, out=out)
        else:  # bands narrower than an FFT bin get no energy
            out[:] = 0
            out[:, self._bands] = np.add.reduceat(weighted, self._starts, axis=1)
        out += np.float32(LOG_OFFSET)
        np.log10(out, out=out)
        out *= np.float32(10.0)


@lru_cache(maxsize=8)
def _kernel(params: FeatureParams) -> _FrameKernel:
    return _FrameKernel(params)


def _check_finite(samples: np.ndarray, where: str) -> None:
    if not np.isfinite(samples).all():
        index = int(np.flatnonzero(~np.isfinite(samples))[0])
        raise FeatureError(
            f"{where}: sample {index} is {samples[index]!r}; audio must be finite — check the source or file"
        )


def _as_mono(samples: np.ndarray, where: str) -> np.ndarray:
    samples = np.asarray(samples)
    if samples.ndim != 1:
        raise FeatureError(f"{where}: expected mono samples (1-D array), got shape {samples.shape}; pick one channel")
    if not np.issubdtype(samples.dtype, np.floating):
        raise FeatureError(f"{where}: expected float samples in [-1, 1], got dtype {samples.dtype}")
    return samples


def n_frames(n_samples: int, params: FeatureParams) -> int:
    """Number of valid frames in a signal of ``n_samples`` samples."""
    return 0 if n_samples < params.n_fft else 1 + (n_samples - params.n_fft) // params.hop_length


def _frame_view(samples: np.ndarray, params: FeatureParams, count: int) -> np.ndarray:
    """``count`` overlapping frames of a contiguous 1-D array as a read-only ``(count, n_fft)`` view."""
    step = samples.strides[0]
    return np.lib.stride_tricks.as_strided(samples, shape=(count, params.n_fft),
                                           strides=(params.hop_length * step, step), writeable=False)


def log_mel(samples: np.ndarray, params: FeatureParams = FeatureParams()) -> np.ndarray:
    """Log-mel spectrogram of a whole signal: float32 ``(n_frames, n_mels)``; 0 rows when shorter than n_fft."""
    samples = _as_mono(samples, "log_mel").astype(np.float32, copy=False)
    _check_finite(samples, "log_mel")
    count = n_frames(len(samples), params)
    out = np.empty((count, params.n_mels), dtype=np.float32)
    if count == 0:
        return out
    frames = _frame_view(samples, params, count)
    kernel = _kernel(params)
    for start in range(0, count, _CHUNK_FRAMES):
        stop = min(start + _CHUNK_FRAMES, count)
        kernel(frames[start:stop], out[start:stop])
    return out


class StreamingLogMel:
    """Incremental log-mel: ``push(block)`` returns only the frames the new samples completed.

    Keeps only the samples the next frame still needs (fewer than ``n_fft``) in a preallocated
    buffer that grows only when a block larger than any before arrives. Gives the same frames as
    ``log_mel`` on the concatenated blocks, for any block sizes.
    """

    def __init__(self, params: FeatureParams = FeatureParams(), initial_block: int = 4096):
        self.params = params
        self._kernel = _kernel(params)
        self._buf = np.zeros(params.n_fft + initial_block, dtype=np.float32)
        self._out = np.empty((self._max_frames(len(self._buf)), params.n_mels), dtype=np.float32)
        self._fill = 0  # samples held in _buf[:_fill], all after the start of the next frame
        self.frames_emitted = 0

    def _max_frames(self, n_samples: int) -> int:
        return max(1, n_frames(n_samples, self.params))

    def reset(self) -> None:
        """Forget the held samples (after a gap in the audio: frames must not straddle it)."""
        self._fill = 0

    def push(self, block: np.ndarray) -> np.ndarray:
        """Feed samples; returns the ``(k, n_mels)`` frames the new samples completed, as a new array the caller owns."""
        return self.push_view(block).copy()

    def push_view(self, block: np.ndarray) -> np.ndarray:
        """Like :meth:`push`, without the copy (the hot path): a view of an internal buffer that the
        next ``push``/``push_view`` overwrites. Use it only when the frames are consumed at once."""
        block = _as_mono(block, "StreamingLogMel.push")
        _check_finite(block, "StreamingLogMel.push")
        need = self._fill + len(block)
        if need > len(self._buf):
            grown = np.zeros(max(need, 2 * len(self._buf)), dtype=np.float32)
            grown[: self._fill] = self._buf[: self._fill]
            self._buf = grown
            self._out = np.empty((self._max_frames(len(grown)), self.params.n_mels), dtype=np.float32)
        self._buf[self._fill : need] = block
        self._fill = need
        count = n_frames(need, self.params)
        if count == 0:
            return self._out[:0]
        hop = self.params.hop_length
        frames = _frame_view(self._buf, self.params, count)
        out = self._out[:count]
        for start in range(0, count, _CHUNK_FRAMES):
            stop = min(start + _CHUNK_FRAMES, count)
            self._kernel(frames[start:stop], out[start:stop])
        consumed = count * hop
        self._fill = need - consumed
        self._buf[: self._fill] = self._buf[consumed:need]
        self.frames_emitted += count
        return out


def windows(frames: np.ndarray, params: FeatureParams = FeatureParams()) -> np.ndarray:
    """Stack ``params.frames`` consecutive frames (stride 1), frame-major: ``(n_windows, frames·n_mels)``.

    Row ``i`` is ``frames[i], frames[i+1], …`` concatenated — the DCASE 2020 baseline layout. In a
    C-contiguous frame array those are consecutive memory, so the result is a read-only view, no copy.
    """
    frames = np.ascontiguousarray(frames, dtype=np.float32)
    if frames.ndim != 2 or frames.shape[1] != params.n_mels:
        raise FeatureError(f"windows: expected frames of shape (n, {params.n_mels}), got {frames.shape}")
    count = frames.shape[0] - params.frames + 1
    if count <= 0:
        return np.empty((0, params.window_size), dtype=np.float32)
    row = frames.strides[0]
    return np.lib.stride_tricks.as_strided(frames, shape=(count, params.window_size),
                                           strides=(row, frames.strides[1]), writeable=False)
