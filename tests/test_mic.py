"""The microphone path with real parts: a private PulseAudio server (null sink ``edge_test``), PortAudio's
ALSA ``pulse`` device, real sounddevice streams, real WAVs played with paplay.

Tests that need the server skip (one reason: pulseaudio not installed) through the ``pulse_server``
fixture; the resampler tests run everywhere. Two tests use a stand-in, each says why.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import resample_poly

from edge_monitor.commands import devices as devices_command
from edge_monitor.core.errors import UserError
from edge_monitor.core.resample import StreamResampler
from edge_monitor.core.wav import write_wav
from edge_monitor.node import mic
from edge_monitor.node.mic import Capture, resolve_device
from edge_monitor.node.ring import RingBuffer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pulse import PulseServer, pulse_server  # noqa: E402, F401  (pulse_server is a fixture)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def pulse(request) -> PulseServer:
    """The server, with PortAudio in this process re-initialised so that it lists the ``pulse`` device."""
    server = request.getfixturevalue("pulse_server")
    assert mic.rescan_devices(), "a Capture of an earlier test is still open"
    return server


def tone(freq: float, seconds: float, rate: int, amp: float) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def dominant(x: np.ndarray, rate: int) -> float:
    """Frequency of the spectral peak (Hann window, zero-padded FFT: resolution well under 1 Hz)."""
    n = 1 << 18
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)), n))
    return float(np.argmax(spec) * rate / n)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def drain(ring: RingBuffer) -> np.ndarray:
    out = np.zeros(ring.capacity, dtype=np.float32)
    n, _ = ring.read(out)
    return out[:n].copy()


def wait_for(predicate, timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def supervise_until(cap: Capture, want: bool, timeout: float) -> tuple[list, float]:
    """Call ``supervise`` every 0.2 s (as the daemon does every 0.5 s) until a change ``want`` arrives."""
    seen: list[tuple[bool, str]] = []
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        seen += cap.supervise()
        if any(ok is want for ok, _ in seen):
            return seen, time.monotonic() - start
        time.sleep(0.2)
    raise AssertionError(f"no ({want}, ...) from supervise within {timeout} s; saw {seen}")


def started(cap: Capture, timeout: float = 8.0) -> None:
    """Wait for the first blocks (a fresh null-sink monitor stream may take ~2 s to deliver)."""
    assert wait_for(lambda: cap.frames > 0, timeout), f"no audio from {cap.device_name} within {timeout} s"
    assert cap.supervise() == []


# -- devices ---------------------------------------------------------------------------------------


def test_devices_command_lists_the_pulse_device(pulse, capsys):
    assert devices_command.run(argparse.Namespace(all=False)) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if " pulse " in line]
    assert rows, out
    assert "ALSA" in rows[0] and "44100 Hz" in rows[0]
    assert any(line.startswith("*") for line in out.splitlines()), out  # the default input is marked
    header = out.splitlines()[0]
    for column in ("index", "name", "host API", "inputs", "default rate"):
        assert column in header


def test_device_resolution(pulse):
    dev = resolve_device("PULS")  # case-insensitive substring
    assert dev.name == "pulse" and dev.hostapi == "ALSA" and dev.channels >= 2
    assert resolve_device(dev.index) == dev
    assert resolve_device(str(dev.index)) == dev  # digits from the command line are an index
    assert resolve_device("pulse, alsa") == dev  # "name, host API" as sounddevice spells it
    assert resolve_device(None).is_default

    def one_line_error(device, channels=1) -> str:
        with pytest.raises(UserError) as err:
            resolve_device(device, channels)
        msg = str(err.value)
        assert "\n" not in msg
        return msg

    msg = one_line_error("no-such-microphone")
    assert "'no-such-microphone'" in msg and "edge-monitor devices" in msg
    msg = one_line_error("ul")  # "pULse" and "defaULt"
    assert "ambiguous" in msg and "pulse" in msg and "default" in msg
    msg = one_line_error(9999)
    assert "9999" in msg and "edge-monitor devices" in msg
    msg = one_line_error("pulse", channels=dev.channels + 1)
    assert f"{dev.channels} input channel(s)" in msg and "pulse" in msg and "edge-monitor devices" in msg


def test_capture_errors_are_one_line(pulse):
    ring = RingBuffer(1000)
    with pytest.raises(UserError) as err:
        Capture("pulse", 16000, 99, 0.032, [(98, ring)]).start()
    assert "99 are needed" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserError) as err:
        Capture("missing-usb-mic", 16000, 1, 0.032, [(0, ring)]).start()
    assert "no input device matches 'missing-usb-mic'" in str(err.value)
    with pytest.raises(ValueError):
        Capture("pulse", 16000, 1, 0.032, [(1, ring)])  # a bug of the caller, not a user error


def test_sounddevice_is_imported_lazily():
    code = "import sys, edge_monitor.node.mic; assert 'sounddevice' not in sys.modules; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.stdout.strip() == "ok", out.stderr


def test_missing_portaudio_is_a_one_line_error():
    """Stand-in: PortAudio is installed here, so a finder makes ``import sounddevice`` fail the way it
    does without libportaudio2 (sounddevice raises ``OSError('PortAudio library not found')``)."""
    code = (
        "import sys\n"
        "class NoPortAudio:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'sounddevice':\n"
        "            raise OSError('PortAudio library not found')\n"
        "sys.meta_path.insert(0, NoPortAudio())\n"
        "from edge_monitor.core.errors import UserError\n"
        "from edge_monitor.node.mic import resolve_device\n"
        "try:\n"
        "    resolve_device('usb')\n"
        "except UserError as exc:\n"
        "    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                         check=False)
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1 and "libportaudio2" in lines[0], (out.stdout, out.stderr)


# -- audio end to end -------------------------------------------------------------------------------


def test_played_tones_arrive_through_the_microphone(pulse, tmp_path):
    """paplay → null sink → its monitor → ALSA pulse → PortAudio → callback → ring: the tones come out."""
    play_rate = 48000
    signal = np.concatenate([np.zeros(int(0.2 * play_rate), np.float32), tone(1000, 1.0, play_rate, 0.5),
                             tone(2500, 1.0, play_rate, 0.25), np.zeros(int(0.2 * play_rate), np.float32)])
    wav = tmp_path / "tones.wav"
    write_wav(wav, signal, play_rate)

    rate = 16000
    ring = RingBuffer(30 * rate)
    cap = Capture("pulse", rate, 1, 0.032, [(0, ring)], name="test")
    cap.start()
    try:
        assert cap.rate == rate and not cap.resampling and cap.device_name == "pulse"
        started(cap)
        drain(ring)  # silence before playback
        pulse.play(wav)
        time.sleep(0.5)
        assert cap.supervise() == []
        x = drain(ring)
    finally:
        cap.stop()
    assert ring.dropped == 0
    assert cap.frames >= ring.written  # one channel tapped: every frame went into the ring

    hop = rate // 20  # 50 ms frames
    frames = x[: len(x) // hop * hop].reshape(-1, hop)
    loud = np.flatnonzero(np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1)) > 0.05)
    assert len(loud) > 0, f"only silence recorded (max |x| = {np.abs(x).max():.4f})"
    active = x[loud[0] * hop:(loud[-1] + 1) * hop]
    assert 1.8 < len(active) / rate < 2.3, len(active) / rate  # 2 s of tones
    first, second = active[int(0.2 * rate):int(0.8 * rate)], active[int(1.2 * rate):int(1.8 * rate)]
    assert abs(dominant(first, rate) - 1000) < 3
    assert abs(dominant(second, rate) - 2500) < 3
    # levels: a 0.5 sine has RMS 0.354, 0.25 → 0.177 (sink and stream volumes are 100 %)
    assert rms(first) == pytest.approx(0.5 / np.sqrt(2), rel=0.1)
    assert rms(second) == pytest.approx(0.25 / np.sqrt(2), rel=0.1)


def test_unsupported_rate_falls_back_to_the_device_rate_and_resamples(pulse, tmp_path):
    """The pulse plugin takes every usual rate, so an absurd one (1 MHz, refused by check_input_settings)
    stands for "the card does not offer the model's rate": capture at the device's default rate and
    resample in the consumer, with real audio through it."""
    wav = tmp_path / "tone.wav"
    write_wav(wav, tone(1000, 1.5, 48000, 0.5), 48000)
    ring = RingBuffer(30 * 48000)
    cap = Capture("pulse", 1_000_000, 1, 0.05, [(0, ring)])
    cap.start()
    try:
        default_rate = int(resolve_device("pulse").default_rate)
        assert cap.requested_rate == 1_000_000 and cap.rate == default_rate and cap.resampling
        started(cap)
        drain(ring)
        pulse.play(wav)
        time.sleep(0.3)
        x = drain(ring)
    finally:
        cap.stop()
    resampler = StreamResampler(cap.rate, 16000)
    block = int(0.05 * cap.rate)
    y = np.concatenate([resampler.process(x[i:i + block]) for i in range(0, len(x), block)])
    loud = np.flatnonzero(np.abs(y) > 0.2)
    seg = y[loud[0] + 2000:loud[0] + 2000 + 12000]  # 0.75 s inside the tone
    assert abs(dominant(seg, 16000) - 1000) < 3
    assert rms(seg) == pytest.approx(0.354, rel=0.1)


# -- device loss and recovery ----------------------------------------------------------------------


@pytest.mark.parametrize("how", ["kill-server", "unload-sink"])
def test_lost_device_is_reported_and_reopened(pulse, how):
    ring = RingBuffer(30 * 16000)
    cap = Capture("pulse", 16000, 1, 0.032, [(0, ring)], name="loss")
    cap.start()
    try:
        started(cap)
        (pulse.kill if how == "kill-server" else pulse.unload_source)()
        seen, took = supervise_until(cap, False, timeout=5)
        assert took < 3, took
        assert len(seen) == 1
        msg = seen[0][1]
        assert msg.startswith("device 'pulse' stopped delivering audio: ") and "\n" not in msg
        assert cap.lost

        # while it is gone: retries fail quietly, nothing is raised, nothing more is reported
        end = time.monotonic() + 3.5
        while time.monotonic() < end:
            assert cap.supervise() == []
            time.sleep(0.2)
        assert cap.lost

        (pulse.start if how == "kill-server" else pulse.reload_source)()
        frames_before = cap.frames
        seen, took = supervise_until(cap, True, timeout=45)  # backoff 1, 2, 4, 8 s + first block ≤ 2 s
        assert seen == [(True, "device 'pulse' is back")]
        assert not cap.lost and cap.generation >= 2
        assert wait_for(lambda: cap.frames > frames_before + 16000, 5)  # a second of audio flows again
        assert cap.supervise() == []
    finally:
        cap.stop()
    assert not cap.running


class FlakyRing(RingBuffer):
    """Stand-in for a bug in the callback: the first ``fail`` writes raise (nothing real fails on demand)."""

    def __init__(self, capacity: int, fail: int) -> None:
        super().__init__(capacity)
        self.fail = fail

    def write(self, samples: np.ndarray) -> None:
        if self.fail > 0:
            self.fail -= 1
            raise RuntimeError("boom")
        super().write(samples)


def test_callback_error_is_reported_and_the_stream_reopened(pulse):
    ring = FlakyRing(16000 * 10, fail=1)
    cap = Capture("pulse", 16000, 1, 0.032, [(0, ring)])
    cap.start()
    try:
        seen, _ = supervise_until(cap, False, timeout=10)
        assert seen == [(False, ("device 'pulse' stopped delivering audio: the audio callback failed: "
                                 "RuntimeError: boom"))]
        seen, _ = supervise_until(cap, True, timeout=15)
        assert seen == [(True, "device 'pulse' is back")]
        assert ring.written > 0
    finally:
        cap.stop()


def test_two_captures_run_at_once_and_one_survives_the_others_loss(pulse):
    """Two streams of the same device; a callback error in one reopens it without touching the other
    (no PortAudio re-initialisation while another stream is open)."""
    good_ring, flaky_ring = RingBuffer(16000 * 10), FlakyRing(16000 * 10, fail=1)
    good = Capture("pulse", 16000, 1, 0.032, [(0, good_ring)], name="good")
    flaky = Capture("pulse", 16000, 2, 0.032, [(1, flaky_ring)], name="flaky")
    good.start()
    flaky.start()
    try:
        started(good)
        supervise_until(flaky, False, timeout=10)
        supervise_until(flaky, True, timeout=15)
        generation = good.generation
        before = good.frames
        assert wait_for(lambda: good.frames > before + 8000, 5)
        assert good.supervise() == [] and good.generation == generation == 1
    finally:
        good.stop()
        flaky.stop()


# -- the callback ----------------------------------------------------------------------------------


def test_callback_copies_without_allocating():
    import sounddevice as sd  # the callback is handed sounddevice's CallbackFlags

    block = 4096
    rings = [RingBuffer(block * 10), RingBuffer(block * 10)]
    cap = Capture(None, 16000, 3, block / 16000, [(2, rings[0]), (0, rings[1])])
    indata = np.random.default_rng(1).uniform(-1, 1, (block, 3)).astype(np.float32)
    ok, overflow = sd.CallbackFlags(), sd.CallbackFlags()
    overflow.input_overflow = True
    for _ in range(20):  # warm up (first-call caches)
        cap._callback(indata, block, None, ok)
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for i in range(2000):
            cap._callback(indata, block, None, overflow if i % 100 == 0 else ok)
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # one copied channel would be 16 KiB; views and ints are a few hundred bytes at most
    assert peak - base < 2048, peak - base
    assert current - base < 1024, current - base
    assert cap.frames == 2020 * block and cap.overflows == 20 and cap.other_flags == 0
    out = np.zeros(block, np.float32)
    rings[0].read(out)  # the oldest block still in the ring: the data of channel 2
    np.testing.assert_array_equal(out, indata[:, 2])
    rings[1].read(out)
    np.testing.assert_array_equal(out, indata[:, 0])


# -- resampling ------------------------------------------------------------------------------------


@pytest.mark.parametrize("rates", [(48000, 16000), (44100, 16000), (16000, 48000), (22050, 16000)])
def test_resampler_is_block_size_invariant_and_matches_resample_poly(rates):
    rng = np.random.default_rng(7)
    x = rng.standard_normal(40000).astype(np.float32) * 0.3
    whole = StreamResampler(*rates).process(x)
    r = StreamResampler(*rates)
    parts, i = [], 0
    while i < len(x):
        n = int(rng.choice([0, 1, 2, 7, 100, 1024, 4999]))
        parts.append(r.process(x[i:i + n]))
        i += n
    pieces = np.concatenate(parts)
    assert pieces.dtype == np.float32
    np.testing.assert_allclose(pieces, whole, atol=1e-6, rtol=0)
    # the same samples as resample_poly on the whole signal (replay's resampler); the stream holds back
    # `latency_samples` outputs whose input (the filter's look-ahead) has not arrived yet
    ref = resample_poly(x.astype(np.float64), r.up, r.down)
    assert len(pieces) == len(ref) - r.latency_samples
    np.testing.assert_allclose(pieces, ref[:len(pieces)], atol=1e-6, rtol=0)


@pytest.mark.parametrize("from_rate", [48000, 44100])
def test_resampler_keeps_a_tones_frequency(from_rate):
    r = StreamResampler(from_rate, 16000)
    x = tone(1234.5, 2.0, from_rate, 0.5)
    y = np.concatenate([r.process(x[i:i + 1000]) for i in range(0, len(x), 1000)])
    assert abs(len(y) - 32000) <= r.latency_samples + 1
    assert abs(dominant(y[2000:30000], 16000) - 1234.5) < 0.5
    assert rms(y[2000:30000]) == pytest.approx(0.5 / np.sqrt(2), rel=0.01)
    assert r.latency_samples == 11 and r.latency_seconds == pytest.approx(11 / 16000)


def test_resampler_identity_and_reset():
    x = tone(440, 0.1, 16000, 0.5)
    r = StreamResampler(16000, 16000)
    assert r.identity and r.process(x) is x and r.latency_samples == 0
    r = StreamResampler(48000, 16000)
    a = r.process(x)
    r.reset()
    np.testing.assert_array_equal(r.process(x), a)
    with pytest.raises(ValueError):
        StreamResampler(0, 16000)


def test_pulse_env_reaches_portaudio_in_a_subprocess(pulse):
    """What an end-to-end test of the daemon relies on: the helper's env alone makes a fresh process list
    and record from the null sink's monitor."""
    code = ("import sounddevice as sd, numpy as np\n"
            "names = [d['name'] for d in sd.query_devices()]\n"
            "x = sd.rec(8000, samplerate=16000, channels=1, device='pulse', blocking=True)\n"
            "print(names, x.shape)\n")
    out = subprocess.run([sys.executable, "-c", code], env=pulse.env, capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert "'pulse'" in out.stdout and "(8000, 1)" in out.stdout
    assert os.environ["PULSE_SERVER"] == pulse.env["PULSE_SERVER"]  # and this process has it too
