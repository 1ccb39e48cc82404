"""A machine switched off: neither an anomaly nor a sensor fault (``core/machine.py``).

Real parts: the committed demo bundle (its manifest records the level distribution of its training
audio) and WAV files written here from the committed demo clip. We have no recording of the demo fan
switched off, so the "stopped" sound is made the way the room would sound: the running clip
attenuated by 25 dB (what is left of the fan in a room background 22-30 dB below it) plus a low noise
floor (gaussian, -80 dBFS) so that it is never digital silence. The real MIMII fans are measured the
same way in ``bench/machine_state.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from edge_monitor import DEMO_DIR
from edge_monitor.core.errors import BundleError
from edge_monitor.core.events import validate
from edge_monitor.core.machine import pieces_frames
from edge_monitor.core.manifest import Manifest
from edge_monitor.core.model import Bundle
from edge_monitor.core.monitor import Monitor
from edge_monitor.core.wav import load_audio, write_wav
from edge_monitor.node.settings import MachineSettings, MonitorSettings

BUNDLE_DIR = DEMO_DIR / "fan-id_00"
SR = 16000
HOLD = 5.0  # the default machine.hold_seconds
RUN1, STOP, RUN2 = 12, 15, 12  # seconds of each part


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    return Bundle.load(BUNDLE_DIR)


def running(seconds: int) -> np.ndarray:
    clip = load_audio(DEMO_DIR / "clips" / "normal_id_00_demo.wav", SR)
    return np.tile(clip, -(-seconds * SR // len(clip)))[: seconds * SR]


def stopped(seconds: int, db: float = -25.0, seed: int = 1) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, 10 ** (-80 / 20), seconds * SR)
    return (running(seconds) * 10 ** (db / 20) + noise).astype(np.float32)


def on_off_on() -> np.ndarray:
    return np.concatenate([running(RUN1), stopped(STOP), running(RUN2)]).astype(np.float32)


def monitor(bundle: Bundle, **settings) -> Monitor:
    return Monitor(MonitorSettings(name="fan-1", model=str(bundle.path), **settings), bundle, node="n1",
                   source="test", live=False)


def feed(m: Monitor, samples: np.ndarray, sizes) -> list:
    events, start = [], 0
    for size in sizes:
        if start >= len(samples):
            break
        events += m.process(samples[start : start + size])
        start += size
    return events + m.finish()


def slack(bundle: Bundle) -> float:
    """hold + one level piece + one FFT frame: how late a change may be reported."""
    p = bundle.params
    return HOLD + pieces_frames(bundle.manifest.level.window_seconds, p) * p.hop_length / SR + p.n_fft / SR


def test_demo_bundle_records_its_level_and_the_clips_run_above_it(bundle):
    level = bundle.manifest.level
    assert level is not None and level.pieces == 800 and level.p1 <= level.p50 <= level.p99
    m = monitor(bundle)
    assert m.machine is not None and m.machine.limit_db == pytest.approx(level.p1 - 10.0)
    events = feed(m, running(RUN1), [SR] * 100)
    assert [e.type for e in events if e.type.startswith("machine")] == [] and m.state == "normal"


def test_replay_running_stopped_running_reports_the_machine_not_an_anomaly(bundle, tmp_path):
    wav = tmp_path / "on_off_on.wav"
    write_wav(wav, on_off_on(), SR)
    jsonl = tmp_path / "events.jsonl"
    proc = subprocess.run([sys.executable, "-m", "edge_monitor", "replay", str(wav), "--jsonl", str(jsonl)],
                          capture_output=True, text=True, check=False, timeout=120, env=os.environ)
    assert proc.returncode == 0, proc.stderr  # no anomaly
    events = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [e["type"] for e in events] == ["machine_stopped", "machine_running"], events
    assert all(validate(e) == [] for e in events)
    stop, run = events
    assert stop["id"] == run["id"] and stop["decisions_suspended"] and not run["decisions_suspended"]
    assert RUN1 + HOLD <= stop["audio_position_s"] <= RUN1 + slack(bundle)
    assert RUN1 + STOP + HOLD <= run["audio_position_s"] <= RUN1 + STOP + slack(bundle)
    info = stop["machine_state"]
    assert info["state"] == "stopped" and info["level_db"] < info["limit_db"]
    assert RUN1 - 1.0 <= info["since_position_s"] <= RUN1 + 1.1  # the first piece mostly past the stop
    assert "machine stopped at" in proc.stdout and "machine running at" in proc.stdout, proc.stdout


def test_the_same_events_for_any_block_size(bundle):
    samples = on_off_on()
    rng = np.random.default_rng(5)
    runs = [feed(monitor(bundle), samples, sizes) for sizes in
            ([8 * SR] * 100, [1024] * 2000, iter(lambda: int(rng.integers(1, 9000)), None))]
    shapes = [[(e.type, round(e.audio_position_s, 6), e.machine_state.level_db) for e in r] for r in runs]
    assert shapes[0] == shapes[1] == shapes[2] and len(shapes[0]) == 2
    # with a threshold the running fan exceeds, decisions resume exactly at machine_running for any block size
    runs = [feed(monitor(bundle, threshold=0.5), samples, sizes) for sizes in
            ([8 * SR] * 100, [1024] * 2000, iter(lambda: int(rng.integers(1, 9000)), None))]
    shapes = [[(e.type, round(e.audio_position_s, 6)) for e in r] for r in runs]
    assert shapes[0] == shapes[1] == shapes[2]
    assert [t for t, _ in shapes[0]] == ["anomaly_start", "machine_stopped", "anomaly_end", "machine_running",
                                         "anomaly_start", "anomaly_end"], shapes[0]


def test_an_open_anomaly_ends_when_the_machine_stops_and_state_says_stopped(bundle):
    m = monitor(bundle, threshold=0.5)  # below the demo's normal scores: the running fan "alarms"
    events = feed(m, np.concatenate([running(RUN1), stopped(STOP)]), [SR // 4] * (4 * (RUN1 + STOP) - 8))
    types = [e.type for e in events]
    # like a health fault: the cause first, then the anomaly it ends
    assert types[0] == "anomaly_start" and types[-2:] == ["machine_stopped", "anomaly_end"], types
    stop, end = events[-2:]
    assert end.anomaly.reason == "machine_stopped" and end.audio_position_s == stop.audio_position_s
    assert m.state == "stopped" and m.detector.state == "suspended"
    assert not [e for e in events if e.type == "health"]  # a stopped machine is no sensor fault


def test_digital_zeros_stay_a_dead_input_not_a_stopped_machine(bundle):
    # a machine hold shorter than the health hold: precedence is by rule, not by timing
    m = monitor(bundle, machine=MachineSettings(hold_seconds=0.5))
    events = feed(m, np.concatenate([running(RUN1), np.zeros(10 * SR, np.float32)]), [SR // 2] * 1000)
    assert [(e.type, e.health.condition, e.health.status) for e in events] == [("health", "dead_input", "bad")]
    assert m.state == "sensor_fault" and not m.machine.stopped
    # stopped first, then the input goes dead: the sensor fault comes first in the state
    m = monitor(bundle)
    events = feed(m, np.concatenate([running(RUN1), stopped(10), np.zeros(5 * SR, np.float32)]), [SR] * 100)
    assert [e.type for e in events] == ["machine_stopped", "health"] and m.state == "sensor_fault"


def test_short_dropouts_below_the_limit_are_gaps_not_a_stop(bundle):
    parts = []
    for i in range(6):  # 0.5 s of the stopped sound every 2 s: far below the limit, never for hold_seconds
        parts += [running(2), stopped(1)[: SR // 2]]
    events = feed(monitor(bundle), np.concatenate(parts), [4096] * 1000)
    assert events == []


def without_level(tmp_path) -> Bundle:
    old = tmp_path / "old-bundle"
    shutil.copytree(BUNDLE_DIR, old)
    data = json.loads((old / "model.json").read_text())
    del data["level"]
    (old / "model.json").write_text(json.dumps(data))
    return Bundle.load(old)


def test_a_bundle_without_a_level_distribution_behaves_as_before(bundle, tmp_path):
    old = without_level(tmp_path)
    assert old.manifest.level is None and old.sha256 == bundle.sha256
    samples = on_off_on()
    m = monitor(old)
    events = feed(m, samples, [SR] * 100)
    assert m.machine is None and not [e for e in events if e.type.startswith("machine")]
    # exactly what the bundle with a level gives when the machine judgement is switched off
    off = feed(monitor(bundle, machine=MachineSettings(enabled=False)), samples, [SR] * 100)
    assert [(e.type, e.audio_position_s, e.score) for e in events] == [(e.type, e.audio_position_s, e.score)
                                                                      for e in off]
    # and a machine switched off far down is today's silence health fault
    m = monitor(old)
    feed(m, np.concatenate([running(RUN1), stopped(10, db=-60.0)]), [SR] * 100)
    assert m.health.bad_conditions == ["silence"] and m.state == "sensor_fault"


DAMAGE = {  # what is done to the level field → the field the error must name
    "not_an_object": (lambda lv: [1, 2], "field 'level' should be an object"),
    "descending": (lambda lv: {**lv, "p5": lv["p1"] - 1}, "field 'level.p5' is"),
    "not_finite": (lambda lv: {**lv, "p50": float("nan")}, "field 'level.p50' is nan, not a finite number"),
    "missing": (lambda lv: {k: v for k, v in lv.items() if k != "p99"}, "field 'level.p99' is missing"),
    "out_of_range": (lambda lv: {**lv, "p1": -1e6}, "field 'level.p1' is -1e+06"),
    "window": (lambda lv: {**lv, "window_seconds": 0}, "field 'level.window_seconds' is 0"),
    "pieces": (lambda lv: {**lv, "pieces": 1.5}, "field 'level.pieces' should be an integer"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_damaged_level_is_refused_with_its_name(tmp_path, case):
    data = json.loads((BUNDLE_DIR / "model.json").read_text())
    damage, phrase = DAMAGE[case]
    data["level"] = damage(data["level"])
    with pytest.raises(BundleError) as caught:
        Manifest.from_dict(data, where="model.json")
    assert phrase in str(caught.value), str(caught.value)
    if case == "descending":  # and the commands say it in one line, exit 2
        bad = tmp_path / "bad"
        shutil.copytree(BUNDLE_DIR, bad)
        (bad / "model.json").write_text(json.dumps(data))
        proc = subprocess.run([sys.executable, "-m", "edge_monitor", "replay", "--model", str(bad),
                               str(DEMO_DIR / "clips" / "normal_id_00_demo.wav")], capture_output=True, text=True, check=False,
                              timeout=120)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and "level.p5" in lines[0], proc.stderr


def test_the_level_survives_a_write_and_read(bundle, tmp_path):
    path = tmp_path / "model.json"
    bundle.manifest.write(path)
    assert Manifest.read(path).level == bundle.manifest.level


def test_machine_settings_are_checked():
    from edge_monitor.core.checks import Invalid

    with pytest.raises(Invalid, match="MachineSettings.margin_db"):
        MachineSettings(margin_db=0)
    with pytest.raises(Invalid, match="MachineSettings.hold_seconds"):
        MachineSettings(hold_seconds=-1)


def test_replay_mqtt_state_says_stopped(tmp_path):
    from mqtt_helpers import Broker, Subscriber

    wav = tmp_path / "on_off_on.wav"
    write_wav(wav, on_off_on(), SR)
    env = {**os.environ, "HOME": str(tmp_path)}
    broker = Broker(tmp_path / "broker").start()
    sub = Subscriber(broker.port, "edge-monitor/#")
    try:
        proc = subprocess.run([sys.executable, "-m", "edge_monitor", "replay", str(wav), "--node", "n1",
                               "--mqtt", f"mqtt://127.0.0.1:{broker.port}"], capture_output=True, text=True, check=False,
                              timeout=120, env=env)
        assert proc.returncode == 0, proc.stderr
        topic = "edge-monitor/n1/fan-id_00/state"
        assert sub.wait_for(lambda ms: [m.json()["state"] for m in ms if m.topic == topic][-1:] == ["unknown"]
                            and sum(m.topic == topic for m in ms) >= 5, 10)
        states = [m.json()["state"] for m in sub.messages if m.topic == topic]
        assert states == ["unknown", "normal", "stopped", "normal", "unknown"], states
        events = sub.events()
        assert [e["type"] for e in events] == ["machine_stopped", "machine_running"]
        assert all(validate(e) == [] for e in events)
    finally:
        sub.close()
        broker.stop()


def test_with_a_level_distribution_a_deep_drop_is_a_stopped_machine_not_silence(bundle):
    m = monitor(bundle)
    events = feed(m, np.concatenate([running(RUN1), stopped(10, db=-60.0)]), [SR] * 100)
    assert [e.type for e in events] == ["machine_stopped"] and m.health.bad_conditions == []
    assert m.state == "stopped"


def test_the_log_line_names_the_machine_state(bundle):
    import structlog

    from edge_monitor.node.sinks import NodeSink

    events = feed(monitor(bundle), np.concatenate([running(RUN1), stopped(10)]), [SR] * 100)
    with structlog.testing.capture_logs() as logs:
        NodeSink(log_events=True).event(events[0])
    (line,) = logs
    assert line["event"] == "machine_stopped" and line["log_level"] == "info" and line["monitor"] == "fan-1"
    assert line["level_db"] < line["limit_db"] and "machine stopped" in line["message"]


def test_check_says_which_machine_judgement_is_in_force(tmp_path):
    old = without_level(tmp_path)
    config = tmp_path / "config.yaml"
    config.write_text(f"node: n1\nmonitors:\n  - name: new\n    model: {BUNDLE_DIR}\n"
                      f"  - name: old\n    model: {old.path}\n"
                      f"  - name: disabled\n    model: {BUNDLE_DIR}\n    machine:\n      enabled: false\n")
    proc = subprocess.run([sys.executable, "-m", "edge_monitor", "check", str(config)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = [line.strip() for line in proc.stdout.splitlines() if "machine state" in line]
    level = Bundle.load(BUNDLE_DIR).manifest.level
    assert lines[0].startswith(f"machine state: stopped below {level.p1 - 10:.1f} dB for 5 s"), lines
    assert "records no level distribution" in lines[1] and "machine.enabled: false" in lines[2], lines
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"node: n1\nmonitors:\n  - name: m\n    model: {BUNDLE_DIR}\n    machine:\n      margin_db: -3\n")
    proc = subprocess.run([sys.executable, "-m", "edge_monitor", "check", str(bad)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 2 and "monitors[0].machine.margin_db" in proc.stderr, proc.stderr
