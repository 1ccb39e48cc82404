"""Synthetic machine sounds in the DCASE 2020 Task 2 layout, for tests and demos.

Each machine kind is a small physical model rendered with vectorised numpy:

* ``fan``      shaft harmonics, blade-pass tone and harmonics, aerodynamic noise through two
               duct resonances, weakly modulated at blade-pass rate.
* ``pump``     periodic pressure pulses at the vane/plunger rate (broadband flow noise
               amplitude-modulated by a sharp pulse train) plus low pulsation harmonics and
               2x-mains motor hum.
* ``gearbox``  gear-mesh harmonics with sidebands at input- and output-shaft rate
               (phase-locked to the shaft), housing-resonance noise.

The machine id seeds the machine's own constants (speed, harmonic recipe, resonances, noise
colour, bearing geometry).  Every clip adds speed offset, slow drift and jitter, slow amplitude
wobble, a factory background (pink..brown noise at a random SNR, occasional clanks and air
bursts from elsewhere) and a random overall gain of +-3 dB.

Faults (any kind), strength set by ``severity`` in [0, 1]:

* ``bearing``   jittered impulse train at a non-integer multiple of shaft rate ringing a
                damped 2-5 kHz structural resonance, load-zone modulated by rotation.
* ``imbalance`` stronger 1x shaft component and amplitude modulation at shaft rate.
* ``whine``     a new tone at a non-harmonic multiple of shaft rate with slight FM.
* ``rubbing``   intermittent broadband friction bursts at a fixed rotation angle.
* ``clog``      speed drop, steeper flow-noise spectral tilt, deeper pulsation.

A faulty machine is renormalised to the normal machine's RMS, so anomalies cannot be found by
loudness.  With ``fault_onset`` the clip is sample-identical to the normal clip before the onset.
"""

from __future__ import annotations

import argparse
import math
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from edge_monitor.core.errors import UserError

KINDS: tuple[str, ...] = ("fan", "pump", "gearbox")
FAULTS: tuple[str, ...] = ("bearing", "imbalance", "whine", "rubbing", "clog")

_LEVEL_DBFS = -26.0  # mean clip RMS level
_GAIN_DB = 3.0  # +- random overall gain
_RAMP_S = 0.25  # fade-in of a fault after its onset
_LIMIT_KNEE, _LIMIT_PEAK = 0.8, 0.9  # soft limiter: identity below the knee, never above the peak
# split -> (folder, label, code used in the per-file seed)
_SPLITS = {
    "train": ("train", "normal", 0),
    "test_normal": ("test", "normal", 1),
    "test_anomaly": ("test", "anomaly", 2),
}
_TWO_PI = 2.0 * np.pi


# ---------------------------------------------------------------------------------------- helpers


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x)))) if x.size else 0.0


def _colour(white: np.ndarray, exponent: float, sr: int, f_lo: float = 20.0) -> np.ndarray:
    """Shape white noise to a ``1/f**exponent`` power spectrum (pink 1, brown 2, blue < 0), unit RMS.

    Below ``f_lo`` the spectrum is flat and DC is removed, so brown noise does not wander off.
    """
    spec = np.fft.rfft(white)
    spec *= np.maximum(np.fft.rfftfreq(white.size, 1.0 / sr), f_lo) ** (-exponent / 2.0)
    spec[0] = 0.0
    out = np.fft.irfft(spec, white.size)
    return out / max(_rms(out), 1e-12)


def _resonate(x: np.ndarray, sr: int, freq: float, q: float) -> np.ndarray:
    """A second-order resonance (unit gain at ``freq``, bandwidth ``freq / q``) driven by ``x``.

    Causal: an input that is zero up to some sample gives an output that is zero up to it.
    """
    from scipy import signal  # lazily: keeps `edge-monitor` start-up fast

    b, a = signal.iirpeak(min(freq, 0.45 * sr), q, fs=sr)
    return signal.lfilter(b, a, x)


_Modes = tuple[tuple[float, float, float], ...]  # resonant modes (Hz, Q, gain)


def _flow(white: np.ndarray, sr: int, exponent: float, resonances: _Modes) -> np.ndarray:
    """Broadband flow/structure noise: coloured noise plus its resonant modes (Hz, Q, gain), unit RMS."""
    base = _colour(white, exponent, sr)
    out = base + sum(g * _resonate(base, sr, f, q) for f, q, g in resonances)
    return out / max(_rms(out), 1e-12)


def _slow(rng: np.random.Generator, t: np.ndarray, max_hz: float, k: int = 4) -> np.ndarray:
    """A smooth random curve within [-1, 1]: a few sinusoids below ``max_hz`` (drift, wobble)."""
    freqs, phases, amps = rng.uniform(0.02, max_hz, k), rng.uniform(0, _TWO_PI, k), rng.uniform(0.5, 1.0, k)
    return (amps[:, None] * np.sin(_TWO_PI * freqs[:, None] * t + phases[:, None])).sum(0) / amps.sum()


def _jitter(rng: np.random.Generator, n: int, sr: int, cutoff_hz: float = 5.0) -> np.ndarray:
    """Low-pass random fluctuation with unit standard deviation (speed jitter)."""
    from scipy import signal

    alpha = 1.0 - math.exp(-_TWO_PI * cutoff_hz / sr)
    out = signal.lfilter([alpha], [1.0, alpha - 1.0], rng.standard_normal(n))
    return (out - out.mean()) / max(float(out.std()), 1e-12)


def _pulse_mean(sharpness: float) -> float:
    """Mean of ``((1 + cos x) / 2) ** p`` over a period: Gamma(p + 1/2) / (sqrt(pi) Gamma(p + 1))."""
    return math.exp(math.lgamma(sharpness + 0.5) - math.lgamma(sharpness + 1.0)) / math.sqrt(math.pi)


# ---------------------------------------------------------------------------------------- machines


@dataclass(frozen=True)
class _Machine:
    """Constants of one machine (kind + id): what stays the same from clip to clip."""

    shaft_hz: float
    tones: tuple[tuple[float, float], ...]  # (multiple of shaft rate, amplitude)
    hum: tuple[tuple[float, float], ...]  # (fixed frequency in Hz, amplitude): mains hum
    tonal_fraction: float  # share of machine power in tones
    noise_exponent: float  # flow-noise colour
    resonances: _Modes  # flow-noise modes
    pulse_mult: float  # pulsation rate / shaft rate
    pulse_depth: float  # flow-noise modulation depth at pulsation rate
    pulse_sharpness: float  # exponent of the pulse shape ((1 + cos) / 2) ** p
    bearing_ratio: float  # bearing defect rate / shaft rate (non-integer)
    bearing_res_hz: float  # structural resonance rung by bearing impacts
    whine_mult: float  # whine frequency / shaft rate (non-integer)
    rub_res_hz: float  # centre of the friction noise


@lru_cache(maxsize=64)
def _machine(kind: str, machine_id: int) -> _Machine:
    """Deterministic constants for (kind, id); fault geometry comes from its own stream."""
    key = zlib.crc32(kind.encode())
    rng, frng = np.random.default_rng([key, machine_id, 0]), np.random.default_rng([key, machine_id, 1])
    u = rng.uniform
    if kind == "fan":
        shaft, blades = u(20, 50), int(rng.integers(5, 12))
        tones = [(k, u(0.3, 1.0) / k) for k in range(1, 7)] + [(blades * k, u(1.0, 2.0) / k) for k in range(1, 5)]
        hum = [(rng.choice([100.0, 120.0]), u(0.05, 0.2))]
        frac, expo = u(0.15, 0.35), u(0.3, 1.0)
        res = ((u(300, 1200), u(1.5, 4), u(0.5, 1.5)), (u(1500, 3500), u(2, 6), u(0.3, 1.0)))
        pulse = (blades, u(0.05, 0.2), u(1, 3))
    elif kind == "pump":
        shaft, vanes = u(24, 48), int(rng.integers(3, 8))
        tones = [(1, u(0.2, 0.5)), (2, u(0.1, 0.3))] + [(vanes * k, u(0.5, 1.0) / k) for k in range(1, 5)]
        mains = rng.choice([50.0, 60.0])
        hum = [(2 * mains * k, u(0.3, 0.8) / k) for k in range(1, 4)]
        frac, expo = u(0.25, 0.45), u(0.8, 1.6)
        res = ((u(200, 800), u(1.5, 3), u(0.5, 1.5)), (u(1000, 2500), u(2, 5), u(0.3, 1.0)))
        pulse = (vanes, u(0.4, 0.7), u(2, 6))
    elif kind == "gearbox":
        shaft, z1 = u(15, 40), int(rng.integers(17, 41))
        ratio = z1 / int(rng.integers(z1 + 7, 2 * z1 + 10))  # output shaft rate / input shaft rate
        tones = [(1, u(0.1, 0.3)), (2, u(0.05, 0.2))]
        for h in range(1, 4):
            amp, s_in, s_out = u(0.6, 1.0) / h, u(0.15, 0.4), u(0.1, 0.3)
            tones.append((z1 * h, amp))
            for j in range(1, 4):
                tones += [(z1 * h + sign * j, amp * s_in**j) for sign in (-1, 1)]
                tones += [(z1 * h + sign * j * ratio, amp * s_out**j) for sign in (-1, 1)]
        hum = [(rng.choice([100.0, 120.0]), u(0.05, 0.2))]
        frac, expo = u(0.5, 0.7), u(0.5, 1.2)
        res = ((u(800, 2500), u(3, 8), u(0.5, 1.5)), (u(2500, 4500), u(3, 8), u(0.3, 1.0)))
        pulse = (1.0, u(0.05, 0.15), 1.0)
    else:  # pragma: no cover - callers validate
        raise UserError(f"unknown machine kind {kind!r}")
    return _Machine(
        shaft_hz=float(shaft),
        tones=tuple((float(m), float(a)) for m, a in tones),
        hum=tuple((float(f), float(a)) for f, a in hum),
        tonal_fraction=float(frac),
        noise_exponent=float(expo),
        resonances=tuple(tuple(map(float, r)) for r in res),
        pulse_mult=float(pulse[0]),
        pulse_depth=float(pulse[1]),
        pulse_sharpness=float(pulse[2]),
        bearing_ratio=float(frng.integers(3, 6) + frng.uniform(0.15, 0.85)),
        bearing_res_hz=float(frng.uniform(2000, 5000)),
        whine_mult=float(np.floor(frng.uniform(500, 3000) / shaft) + frng.uniform(0.2, 0.8)),
        rub_res_hz=float(frng.uniform(1500, 4000)),
    )


def _render(m: _Machine, n: int, sr: int, rng: np.random.Generator, clog: np.ndarray | None = None):
    """The machine alone (unit RMS): returns (signal, shaft phase in radians, shaft rate in Hz).

    ``clog`` (per-sample strength, 0 = healthy) slows the machine, steepens the flow-noise tilt and
    deepens the pulsation.  All random draws happen before it is used, so a clog that is zero up to
    some sample leaves the signal sample-identical up to there.
    """
    t = np.arange(n) / sr
    speed = m.shaft_hz * (1 + rng.uniform(-0.015, 0.015))
    speed = speed * (1 + rng.uniform(0.005, 0.015) * _slow(rng, t, 0.3) + 0.002 * _jitter(rng, n, sr))
    tone_phases = rng.uniform(0, _TWO_PI, len(m.tones) + len(m.hum))
    white = rng.standard_normal(n)
    tone_wobble, flow_wobble = 1 + 0.08 * _slow(rng, t, 0.5), 1 + 0.08 * _slow(rng, t, 0.5)
    depth = m.pulse_depth
    if clog is not None:
        speed = speed * (1 - 0.05 * clog)
        depth = depth + (1 - depth) * 0.6 * clog
    phase = _TWO_PI * np.cumsum(speed) / sr

    nyquist_guard = 0.45 * sr
    parts = [(a, mult * phase) for mult, a in m.tones if mult * m.shaft_hz < nyquist_guard]
    parts += [(a, _TWO_PI * f * t) for f, a in m.hum if f < nyquist_guard]
    tonal = sum(a * np.cos(arg + p) for (a, arg), p in zip(parts, tone_phases))
    tonal = tonal / math.sqrt(sum(a * a for a, _ in parts) / 2)

    flow = _flow(white, sr, m.noise_exponent, m.resonances)
    if clog is not None:
        flow = (1 - clog) * flow + clog * _flow(white, sr, m.noise_exponent + 0.4, m.resonances)
    pulses = ((1 + np.cos(m.pulse_mult * phase)) / 2) ** m.pulse_sharpness / _pulse_mean(m.pulse_sharpness)
    flow = flow * (1 + depth * (pulses - 1))

    x = math.sqrt(m.tonal_fraction) * tonal * tone_wobble + math.sqrt(1 - m.tonal_fraction) * flow * flow_wobble
    return x, phase, speed


def _fault(
    fault: str,
    x: np.ndarray,
    phase: np.ndarray,
    speed: np.ndarray,
    m: _Machine,
    sr: int,
    rng: np.random.Generator,
    strength: np.ndarray,
) -> np.ndarray:
    """Add a non-clog fault to the machine signal ``x``; ``strength`` is severity x onset ramp per sample."""
    n = x.size
    if fault == "imbalance":
        once = np.cos(phase + rng.uniform(0, _TWO_PI))
        return x * (1 + 0.5 * strength * once) + 0.8 * strength * once

    if fault == "whine":
        t = np.arange(n) / sr
        fm = 1 + 0.004 * np.sin(_TWO_PI * rng.uniform(2, 6) * t + rng.uniform(0, _TWO_PI))
        freq = np.minimum(m.whine_mult * speed * fm, 0.45 * sr)
        return x + 0.3 * math.sqrt(2) * strength * np.cos(_TWO_PI * np.cumsum(freq) / sr + rng.uniform(0, _TWO_PI))

    if fault == "bearing":
        cycles = np.cumsum(m.bearing_ratio * speed) / sr
        hits = np.flatnonzero(np.diff(np.floor(cycles))) + 1
        spread = 0.02 * sr / (m.bearing_ratio * m.shaft_hz)  # 2 % of a defect period
        hits = np.clip(hits + np.round(rng.normal(0, spread, hits.size)).astype(int), 0, n - 1)
        amps = rng.lognormal(0, 0.4, hits.size) * (0.6 + 0.4 * np.cos(phase[hits]))  # load zone
        impulses = np.zeros(n)
        np.add.at(impulses, hits, amps)
        burst = _resonate(impulses * (strength > 0), sr, m.bearing_res_hz, rng.uniform(20, 40))
        level = 0.35
    elif fault == "rubbing":
        angle = phase - rng.uniform(0, _TWO_PI) + np.pi  # contact point in the middle of a "revolution"
        rev = np.floor(angle / _TWO_PI).astype(int)
        rev -= rev.min()
        touches = (rng.random(rev.max() + 1) < rng.uniform(0.4, 0.8)) * rng.lognormal(0, 0.3, rev.max() + 1)
        gate = np.exp(-0.5 * ((angle - _TWO_PI * np.floor(angle / _TWO_PI) - np.pi) / rng.uniform(0.3, 0.6)) ** 2)
        noise = _flow(rng.standard_normal(n), sr, -0.5, ((m.rub_res_hz, 1.0, 2.0),))
        burst = noise * gate * touches[rev] * (strength > 0)
        level = 0.5
    else:  # pragma: no cover - callers validate
        raise UserError(f"unknown fault {fault!r}")
    active = strength > 0
    return x + level * strength * burst / max(_rms(burst[active]), 1e-12)


def _background(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Factory hall relative to a unit-RMS machine: pink..brown bed at 8-20 dB SNR, clanks, air bursts."""
    bed = _colour(rng.standard_normal(n), rng.uniform(1.0, 2.0), sr) * 10 ** (-rng.uniform(8, 20) / 20)
    for _ in range(rng.poisson(0.3 * n / sr)):
        start, length = int(rng.integers(n)), int(rng.uniform(0.05, 0.3) * sr)
        if rng.random() < 0.5:  # struck metal somewhere else: a decaying mode
            event = np.zeros(length)
            event[0] = 1.0
            event = _resonate(event, sr, rng.uniform(500, 4000), rng.uniform(10, 40))
        else:  # compressed-air burst
            event = _colour(rng.standard_normal(length), rng.uniform(-0.5, 1.0), sr) * np.hanning(length)
        event *= rng.uniform(0.3, 1.5) / max(float(np.abs(event).max()), 1e-12)
        bed[start : start + length] += event[: n - start]
    return bed


def _soft_limit(y: np.ndarray) -> np.ndarray:
    """Pointwise limiter: identity up to the knee, smoothly saturating to the peak (never reached)."""
    mag = np.abs(y)
    over = mag > _LIMIT_KNEE
    width = _LIMIT_PEAK - _LIMIT_KNEE
    y = y.copy()
    y[over] = np.sign(y[over]) * (_LIMIT_KNEE + width * np.tanh((mag[over] - _LIMIT_KNEE) / width))
    return y


# ---------------------------------------------------------------------------------------- public API


def _is_int(value: object, lo: int, hi: float = math.inf) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and lo <= value <= hi


def _validate(
    kinds: tuple[str, ...], faults: tuple[str, ...], severity: float, duration: float, sample_rate: int
) -> None:
    for kind in kinds:
        if kind not in KINDS:
            raise UserError(f"unknown machine kind {kind!r}; choose from {', '.join(KINDS)}")
    for fault in faults:
        if fault not in FAULTS:
            raise UserError(f"unknown fault {fault!r}; choose from {', '.join(FAULTS)}")
    if not 0.0 <= severity <= 1.0:
        raise UserError(f"severity must be within [0, 1], got {severity}")
    if not (math.isfinite(duration) and duration > 0):
        raise UserError(f"duration must be a positive number of seconds, got {duration}")
    if not _is_int(sample_rate, 8000, 192000):
        raise UserError(f"sample rate must be an integer between 8000 and 192000 Hz, got {sample_rate}")


def _validate_id(machine_id: int) -> None:
    if not _is_int(machine_id, 0, 99):
        raise UserError(f"machine id must be an integer from 0 to 99, got {machine_id!r}")


def synth_clip(
    kind: str,
    machine_id: int,
    duration: float,
    sample_rate: int = 16000,
    *,
    rng: np.random.Generator,
    fault: str | None = None,
    severity: float = 0.5,
    fault_onset: float | None = None,
) -> np.ndarray:
    """Render one clip of machine ``kind``/``machine_id``: float32 mono, peak below 0.9.

    ``fault`` (one of ``FAULTS``) with ``severity`` in [0, 1] (0 gives the normal clip exactly)
    makes an anomalous clip from the same random draws as the normal one; ``fault_onset`` in
    seconds starts the fault mid-clip (fading in over 0.25 s), the samples before it being exactly
    those of the normal clip.  The clip RMS is -26 dBFS +- 3 dB; a faulty clip has its normal twin's
    level (within a fraction of a dB), so loudness does not give it away.
    """
    _validate((kind,), () if fault is None else (fault,), severity, duration, sample_rate)
    _validate_id(machine_id)
    n = int(round(duration * sample_rate))
    if n < 1:
        raise UserError(f"duration {duration} s is shorter than one sample")
    if fault_onset is not None and not 0.0 <= fault_onset < duration:
        raise UserError(f"fault onset must be within [0, {duration}) s, got {fault_onset}")

    seeds = rng.integers(0, 2**63, size=4)  # machine, background, fault, gain: independent streams
    m = _machine(kind, int(machine_id))
    x_normal, phase, speed = _render(m, n, sample_rate, np.random.default_rng(seeds[0]))
    x = x_normal
    if fault is not None and severity > 0:
        ramp = np.ones(n)
        if fault_onset is not None:
            ramp = np.clip((np.arange(n) / sample_rate - fault_onset) / _RAMP_S, 0.0, 1.0)
            ramp = np.where(ramp > 0, 0.5 - 0.5 * np.cos(np.pi * ramp), 0.0)
        strength = severity * ramp
        if fault == "clog":
            x_fault = _render(m, n, sample_rate, np.random.default_rng(seeds[0]), clog=strength)[0]
        else:
            x_fault = _fault(fault, x_normal, phase, speed, m, sample_rate, np.random.default_rng(seeds[2]), strength)
        active = ramp > 0
        ratio = _rms(x_normal[active]) / max(_rms(x_fault[active]), 1e-12)
        x = x_fault * (1 + ramp * (ratio - 1))  # faulty machine at the healthy machine's level
    background = _background(n, sample_rate, np.random.default_rng(seeds[1]))
    gain_db = np.random.default_rng(seeds[3]).uniform(-_GAIN_DB, _GAIN_DB)
    scale = 10 ** ((_LEVEL_DBFS + gain_db) / 20) / _rms(x_normal + background)
    return _soft_limit((x + background) * scale).astype(np.float32)


def _file_rng(seed: int, kind: str, machine_id: int, split_code: int, index: int) -> np.random.Generator:
    """The random stream of one file: depends on nothing but its own coordinates."""
    entropy = [seed, zlib.crc32(kind.encode()), machine_id, split_code, index]
    return np.random.default_rng(np.random.SeedSequence(entropy))


def generate_dataset(
    out: Path,
    kinds: tuple[str, ...] = KINDS,
    ids: tuple[int, ...] = (0, 2),
    n_train: int = 100,
    n_test_normal: int = 20,
    n_test_anomaly: int = 20,
    duration: float = 10.0,
    sample_rate: int = 16000,
    severity: float = 0.5,
    faults: tuple[str, ...] = FAULTS,
    seed: int = 0,
    fault_onset: float | None = None,
) -> list[Path]:
    """Write a DCASE-2020-layout data set and return the written paths.

    ``out/<kind>/train/normal_id_XX_NNNNNNNN.wav`` and ``out/<kind>/test/{normal,anomaly}_id_XX_NNNNNNNN.wav``
    (16-bit PCM mono).  Anomaly ``i`` has fault ``faults[i % len(faults)]`` over the whole clip.
    Every file has its own random stream derived from (seed, kind, id, split, index), so a file's
    content does not depend on what else is generated. With ``fault_onset`` each anomalous clip is
    normal until that second and its onset is written beside it (``<clip>.json``, see ``training.plant``).
    """
    from edge_monitor.core.wav import (
        write_wav,  # the I/O layer; synth_clip itself needs only numpy/scipy
    )

    kinds, ids, faults = tuple(kinds), tuple(ids), tuple(faults)
    _validate(kinds, faults, severity, duration, sample_rate)
    if not kinds or not ids:
        raise UserError("need at least one machine kind and one machine id")
    for machine_id in ids:
        _validate_id(machine_id)
    counts = {"train": n_train, "test_normal": n_test_normal, "test_anomaly": n_test_anomaly}
    for name, count in counts.items():
        if not _is_int(count, 0):
            raise UserError(f"number of {name.replace('_', ' ')} clips must be a non-negative integer, got {count!r}")
    if n_test_anomaly and not faults:
        raise UserError("need at least one fault to make anomalous clips")
    if not _is_int(seed, 0):
        raise UserError(f"seed must be a non-negative integer, got {seed!r}")

    written = []
    for kind in dict.fromkeys(kinds):
        for machine_id in dict.fromkeys(int(i) for i in ids):
            for split, count in counts.items():
                folder, label, code = _SPLITS[split]
                for index in range(count):
                    fault = faults[index % len(faults)] if label == "anomaly" else None
                    rng = _file_rng(seed, kind, machine_id, code, index)
                    onset = fault_onset if fault is not None else None
                    clip = synth_clip(kind, machine_id, duration, sample_rate, rng=rng, fault=fault, severity=severity,
                                      fault_onset=onset)
                    path = Path(out) / kind / folder / f"{label}_id_{machine_id:02d}_{index:08d}.wav"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    write_wav(path, clip, sample_rate, encoding="pcm16")
                    if onset is not None:
                        from .plant import write_onset

                        write_onset(path, onset)
                    written.append(path)
    return written


# ---------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``edge-monitor synth``."""
    parser.add_argument("out", type=Path, metavar="OUT", help="output directory (DCASE 2020 layout)")
    kinds, faults = ",".join(KINDS), ",".join(FAULTS)
    parser.add_argument("--kinds", default=kinds, help=f"comma-separated machine kinds (default: {kinds})")
    parser.add_argument("--ids", default="0,2", help="comma-separated machine ids 0-99 (default: 0,2)")
    parser.add_argument("--train", type=int, default=100, help="normal training clips per machine (default: 100)")
    parser.add_argument("--test-normal", type=int, default=20, help="normal test clips per machine (default: 20)")
    parser.add_argument("--test-anomaly", type=int, default=20, help="anomalous test clips per machine (default: 20)")
    parser.add_argument("--duration", type=float, default=10.0, help="clip length in seconds (default: 10)")
    parser.add_argument("--sample-rate", type=int, default=16000, help="sample rate in Hz (default: 16000)")
    parser.add_argument("--severity", type=float, default=0.5, help="fault strength in [0, 1] (default: 0.5)")
    parser.add_argument("--faults", default=faults, help=f"comma-separated faults, cycled (default: {faults})")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--fault-onset", type=float, default=None, metavar="S",
                        help="anomalous clips are normal until S seconds, then the fault starts; the onset is "
                             "written beside each clip (<clip>.json) for evaluate's detection delay")


def _split_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def run(args: argparse.Namespace) -> int:
    """Generate the data set described by ``args`` and print one summary line per machine."""
    try:
        ids = tuple(int(i) for i in _split_list(args.ids))
    except ValueError:
        raise UserError(f"--ids must be comma-separated integers, got {args.ids!r}") from None
    faults = _split_list(args.faults)
    generate_dataset(
        args.out,
        kinds=_split_list(args.kinds),
        ids=ids,
        n_train=args.train,
        n_test_normal=args.test_normal,
        n_test_anomaly=args.test_anomaly,
        duration=args.duration,
        sample_rate=args.sample_rate,
        severity=args.severity,
        faults=faults,
        seed=args.seed,
        fault_onset=args.fault_onset,
    )
    n_clips = args.train + args.test_normal + args.test_anomaly
    for kind in dict.fromkeys(_split_list(args.kinds)):
        for machine_id in dict.fromkeys(ids):
            print(
                f"{kind} id_{machine_id:02d}: {args.train} train, {args.test_normal} normal +"
                f" {args.test_anomaly} anomalous test clips"
                f" (severity {args.severity:g}), {n_clips * args.duration:.0f} s of audio -> {Path(args.out) / kind}"
            )
    return 0
