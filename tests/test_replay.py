"""``edge-monitor replay`` and ``check`` as a plant engineer runs them: real WAVs, the bundled model."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_audio import (
    BAD,  # the loader's bad-file catalogue: replay must refuse each one the same way
)

from edge_monitor import DEMO_DIR
from edge_monitor.core.events import validate
from edge_monitor.core.model import Bundle
from edge_monitor.core.wav import write_wav
from training.data import Clip
from training.evaluate import evaluate_bundle

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = DEMO_DIR / "fan-id_00"
CLIPS = DEMO_DIR / "clips"
ANOMALY = CLIPS / "anomaly_id_00_demo.wav"
NORMAL = CLIPS / "normal_id_00_demo.wav"


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_monitor", *map(str, args)], capture_output=True,
                          text=True, timeout=300, cwd=cwd)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("edge-monitor: error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def test_demo_anomaly_alerts_with_exit_1_and_explains(tmp_path):
    events_path = tmp_path / "events.jsonl"
    proc = cli("replay", ANOMALY, "--jsonl", events_path)
    assert proc.returncode == 1, proc.stderr
    assert "ANOMALY from" in proc.stdout and " Hz (" in proc.stdout
    events = [json.loads(line) for line in events_path.read_text().splitlines()]
    assert [e["type"] for e in events] == ["anomaly_start", "anomaly_end"]
    for e in events:
        assert validate(e) == [], e
        assert e["source"] == str(ANOMALY) and e["model"]["sha256"] == Bundle.load(BUNDLE).sha256
    assert events[0]["id"] == events[1]["id"]
    assert events[1]["anomaly"]["reason"] == "end_of_stream"


def test_demo_normal_is_quiet_with_exit_0():
    proc = cli("replay", NORMAL)
    assert proc.returncode == 0, proc.stderr
    assert "no anomaly" in proc.stdout and "ANOMALY" not in proc.stdout
    assert re.search(r"^fan-id_00 scoring: \w+, (batched|single)", proc.stdout, re.MULTILINE), proc.stdout


def test_jsonl_to_stdout_keeps_the_summary_on_stderr():
    proc = cli("replay", ANOMALY, "--jsonl", "-")
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert lines and all(validate(json.loads(line)) == [] for line in lines)
    assert "ANOMALY from" in proc.stderr


def test_scores_csv_equals_edge_monitor_evaluate(tmp_path):
    """The replay's clip score is exactly the int8 score `edge-monitor evaluate` gives the same file."""
    files = [NORMAL, ANOMALY]
    proc = cli("replay", *files, "--scores", tmp_path / "scores.csv", "--quiet")
    assert proc.returncode == 1, proc.stderr
    with open(tmp_path / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    bundle = Bundle.load(BUNDLE)
    clips = [Clip(path, "fan", "id_00", int("anomaly" in path.name)) for path in files]
    result = evaluate_bundle(bundle, clips, tmp_path / "evaluation")
    evaluated = {Path(f["file"]).name: f["score_int8"] for f in result["files"]}
    assert len(rows) == 2
    for row in rows:
        assert float(row["clip_score"]) == evaluated[Path(row["file"]).name]  # exactly equal
        assert row["model_sha256"] == bundle.sha256
    assert [int(r["anomalies"]) for r in rows] == [0, 1]


def test_resampled_stereo_24bit_file_with_channel(tmp_path):
    """A 48-kHz, 24-bit stereo recording: channel 1 holds a bearing fault, channel 0 the normal machine."""
    from training.synth import synth_clip

    rng = np.random.default_rng(3)
    normal = synth_clip("fan", 0, 6.0, 48000, rng=rng)
    faulty = synth_clip("fan", 0, 6.0, 48000, rng=rng, fault="bearing", severity=0.5)
    path = tmp_path / "stereo48k.wav"
    write_wav(path, np.stack([normal, faulty], axis=1), 48000, "pcm24")
    assert cli("replay", path, "--channel", "0").returncode == 0
    assert cli("replay", path, "--channel", "1").returncode == 1


def test_several_files_and_one_bad_one_are_all_reported(tmp_path):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"not audio at all" * 10)
    proc = cli("replay", NORMAL, bad, ANOMALY)
    line = one_error_line(proc)
    assert "broken.wav" in line and "not a WAV file (no RIFF header)" in line, line
    assert proc.stdout.count("monitor fan-id_00") == 2  # the good files were still replayed and summarised


def test_realtime_paces_like_a_microphone(tmp_path):
    path = tmp_path / "short.wav"
    write_wav(path, np.zeros(16000 * 2, np.float32) + 0.01 * np.random.default_rng(0).standard_normal(32000), 16000)
    import time

    started = time.monotonic()
    proc = cli("replay", path, "--realtime")
    assert proc.returncode in (0, 1), proc.stderr
    assert time.monotonic() - started >= 1.9  # 2 s of audio took at least 2 s


def test_config_replay_uses_the_config_monitors(tmp_path):
    config = tmp_path / "node.yaml"
    config.write_text(f"node: test-node\nmonitors:\n  - name: fan-a\n    model: {BUNDLE}\n"
                      f"  - name: fan-b\n    model: {BUNDLE}\n    threshold: 5.0\n")
    proc = cli("replay", ANOMALY, "--config", config, "--jsonl", tmp_path / "e.jsonl")
    assert proc.returncode == 1, proc.stderr
    events = [json.loads(line) for line in (tmp_path / "e.jsonl").read_text().splitlines()]
    assert {e["monitor"] for e in events} == {"fan-a"}  # fan-b's threshold 5.0 is never reached
    assert all(e["node"] == "test-node" for e in events)
    only_b = cli("replay", ANOMALY, "--config", config, "--monitor", "fan-b")
    assert only_b.returncode == 0, only_b.stderr


def test_check_prints_what_would_run():
    proc = cli("check", ROOT / "config.yaml")
    assert proc.returncode == 0, proc.stderr
    assert "monitor fan-1: device default channel 0 → fan-id_00" in proc.stdout
    assert "calibrated for 1-s decisions" in proc.stdout
    # the scorer's self-test, in one line (single on an interpreter whose batches round differently)
    assert re.search(r"^  scoring: \w+, (batched \(64 windows per call\)|single \(batch differs on this "
                     r"interpreter\) \(1 window per call instead of 64\)) in replay", proc.stdout, re.MULTILINE), proc.stdout


@pytest.mark.parametrize("extra, phrase", [
    ("audio:\n  ring_seconds: 100000\n", "audio.ring_seconds: expected a number in [1, 120.0], got 100000"),
    ("audio:\n  ring_seconds: 1.0e+300\n", "audio.ring_seconds: expected a number in [1, 120.0], got 1e+300"),
    ("events_jsonl: {tmp}\n", "cannot open it for appending (Is a directory)"),
    ("mqtt:\n  enabled: true\n  username: u\n  password_file: /dev/zero\n",
     "mqtt.password_file /dev/zero: longer than 4096 bytes"),
])
def test_check_refuses_what_run_could_not_start(tmp_path, extra, phrase):
    """What ``check`` accepts, ``run`` can start (issue 15): each of these passed check and then killed run."""
    config = tmp_path / "c.yaml"
    config.write_text(f"node: n\nmonitors:\n  - name: m\n    model: {BUNDLE}\n" + extra.format(tmp=tmp_path))
    line = one_error_line(cli("check", config))
    assert phrase in line, line


# ------------------------------------------------------------------ bad inputs: one line, exit 2

def _bundle_copy(tmp_path: Path, edit=None) -> Path:
    target = tmp_path / "bundle"
    shutil.copytree(BUNDLE, target)
    if edit:
        manifest = json.loads((target / "model.json").read_text())
        edit(manifest)
        (target / "model.json").write_text(json.dumps(manifest))
    return target


def _wav(tmp_path: Path, name: str, samples: np.ndarray, rate: int = 16000, encoding: str = "pcm16") -> Path:
    path = tmp_path / name
    write_wav(path, samples, rate, encoding)
    return path


def _set(path: str, value):
    def edit(manifest):
        *parents, last = path.split(".")
        node = manifest
        for p in parents:
            node = node[p]
        node[last] = value
    return edit


# name → (build args from tmp_path, phrase the error line must contain)
BAD_RUNS = {
    "file_missing": (lambda t: ["replay", t / "nope.wav"], "nope.wav: no such file"),
    "folder_as_file": (lambda t: ["replay", t], "no such file"),
    "too_short": (lambda t: ["replay", _wav(t, "short.wav", np.zeros(8000, np.float32))],
                  "0.50 s of audio is shorter than the 1-s decision window"),
    "channel_missing": (lambda t: ["replay", _wav(t, "mono.wav", np.zeros(32000, np.float32)), "--channel", "1"],
                        "channel 1 does not exist"),
    "channel_garbage": (lambda t: ["replay", ANOMALY, "--channel", "left"], "expected a channel index"),
    "model_missing": (lambda t: ["replay", ANOMALY, "--model", t / "no-bundle"], "no-bundle"),
    "model_sha_edited": (lambda t: ["replay", ANOMALY, "--model", _bundle_copy(t, _set("model.sha256", "0" * 64))],
                         "sha256"),
    "model_window_mismatch": (lambda t: ["replay", ANOMALY, "--model", _bundle_copy(t, _set("window.size", 512))],
                              "field 'window.size' is 512 but features give 5×128=640"),
    # the features against the window the model reads (not the window-size field alone) ...
    "model_feature_mismatch": (lambda t: ["replay", ANOMALY, "--model", _bundle_copy(t, _set("features.n_mels", 64))],
                               "field 'window.size' is 640 but features give 5×64=320"),
    # ... and the feature parameters themselves
    "model_feature_invalid": (lambda t: ["replay", ANOMALY, "--model",
                                         _bundle_copy(t, _set("features.hop_length", 2048))],
                              "field 'features' is not a valid feature parameter set: features.hop_length: must not "
                              "exceed n_fft (1024), got 2048"),
    "threshold_negative": (lambda t: ["replay", ANOMALY, "--threshold", "-1"], "--threshold must be > 0"),
    "monitor_without_config": (lambda t: ["replay", ANOMALY, "--monitor", "x"], "--monitor goes with --config"),
    "config_and_model": (lambda t: ["replay", ANOMALY, "--config", "a.yaml", "--model", "b"], "not allowed with"),
    "config_missing_key": (lambda t: ["replay", ANOMALY, "--config", _text(
        t, "c.yaml", f"monitors:\n  - name: a\n    model: {BUNDLE}\n")], "node"),
    "config_unknown_monitor": (lambda t: ["replay", ANOMALY, "--config", ROOT / "config.yaml", "--monitor", "pump"],
                               "no monitor 'pump'"),
    "config_slow_capture": (lambda t: ["replay", ANOMALY, "--config", _text(
        t, "c.yaml", f"node: n\naudio:\n  sample_rate: 8000\nmonitors:\n  - name: a\n    model: {BUNDLE}\n")],
        "needs 16000 Hz audio but audio.sample_rate is 8000"),
    "block_zero": (lambda t: ["replay", ANOMALY, "--block-seconds", "0"], "--block-seconds must be in"),
    "jsonl_unwritable": (lambda t: ["replay", ANOMALY, "--jsonl", t / "no" / "dir" / "e.jsonl"], "cannot open"),
    "no_files": (lambda t: ["replay"], "the following arguments are required: FILE"),
    "check_missing_config": (lambda t: ["check", t / "none.yaml"], "none.yaml"),
}


def _text(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", list(BAD_RUNS))
def test_bad_invocations_are_one_line_exit_2(tmp_path, case):
    build, phrase = BAD_RUNS[case]
    line = one_error_line(cli(*build(tmp_path)))
    assert phrase in line, line


@pytest.mark.parametrize("case", [c for c in BAD if c != "missing"])
def test_every_bad_wav_the_loader_refuses_is_refused_by_replay(tmp_path, case):
    content, phrase = BAD[case]
    path = tmp_path / f"bad_{case}.wav"
    path.write_bytes(content)
    line = one_error_line(cli("replay", path))
    assert path.name in line and phrase in line, line


def test_replay_publishes_events_over_mqtt_and_keeps_them_when_the_broker_is_down(tmp_path):
    from mqtt_helpers import Broker, Subscriber

    env = {**os.environ, "HOME": str(tmp_path)}  # the replay outbox lives in ~/.cache/edge-monitor
    broker = Broker(tmp_path / "broker").start()
    sub = Subscriber(broker.port, "edge-monitor/#")
    try:
        proc = subprocess.run([sys.executable, "-m", "edge_monitor", "replay", str(ANOMALY), "--node", "bench",
                               "--mqtt", f"mqtt://127.0.0.1:{broker.port}"], capture_output=True, text=True,
                              timeout=120, env=env)
        assert proc.returncode == 1, proc.stderr
        assert sub.wait_for(lambda ms: sum(m.topic == "edge-monitor/bench/fan-id_00/event" for m in ms) == 2, 10)
        events = sub.events()
        assert [e["type"] for e in events] == ["anomaly_start", "anomaly_end"]
        assert all(validate(e) == [] and isinstance(e["seq"], int) for e in events)
        # the daemon's state topic too (one loop): not listening yet, the anomaly, normal after it, and
        # "unknown" once the file has ended (the monitor no longer listens)
        assert sub.wait_for(lambda ms: [m.json()["state"] for m in ms if m.topic.endswith("/state")][-1:]
                            == ["unknown"] and sum(m.topic.endswith("/state") for m in ms) == 4, 10)
        states = [m.json()["state"] for m in sub.messages if m.topic == "edge-monitor/bench/fan-id_00/state"]
        assert states == ["unknown", "anomaly", "normal", "unknown"]
        broker.stop()  # now the broker is down: the events wait in the outbox, and the exit code says so
        down = subprocess.run([sys.executable, "-m", "edge_monitor", "replay", str(ANOMALY), "--node", "bench",
                               "--mqtt", f"mqtt://127.0.0.1:{broker.port}"], capture_output=True, text=True,
                              timeout=120, env=env)
        line = one_error_line(down)
        assert "6 message(s) not acknowledged" in line and "replay-outbox.sqlite" in line  # 2 events, 4 states
        broker.start()  # the next replay delivers the kept events first
        again = subprocess.run([sys.executable, "-m", "edge_monitor", "replay", str(NORMAL), "--node", "bench",
                                "--mqtt", f"mqtt://127.0.0.1:{broker.port}"], capture_output=True, text=True,
                               timeout=120, env=env)
        assert again.returncode == 0, again.stderr
        assert sub.wait_for(lambda ms: len({e["event_id"] for e in sub.events()}) == 4, 15)


    finally:
        sub.close()
        broker.stop()

def test_replay_mqtt_publishes_telemetry_like_the_daemon(tmp_path):
    """Telemetry every ``mqtt.telemetry_seconds`` of audio, with the daemon's fields (one loop)."""
    from mqtt_helpers import Broker, Subscriber

    env = {**os.environ, "HOME": str(tmp_path)}
    broker = Broker(tmp_path / "broker").start()
    sub = Subscriber(broker.port, "edge-monitor/#")
    config = tmp_path / "c.yaml"
    config.write_text(f"node: t1\nmqtt:\n  enabled: true\n  host: 127.0.0.1\n  port: {broker.port}\n"
                      f"  telemetry_seconds: 2.0\n  outbox:\n    path: {tmp_path / 'outbox.sqlite'}\n"
                      f"monitors:\n  - name: fan\n    model: {DEMO_DIR / 'fan-id_00'}\n")
    try:
        proc = subprocess.run([sys.executable, "-m", "edge_monitor", "replay", str(NORMAL), "--config", str(config),
                               "--mqtt", "--block-seconds", "0.5"], capture_output=True, text=True, timeout=120,
                              env=env)
        assert proc.returncode == 0, proc.stderr
        assert sub.wait_for(lambda ms: sum(m.topic == "edge-monitor/t1/fan/telemetry" for m in ms) >= 3, 10)
        tele = [m.json() for m in sub.messages if m.topic == "edge-monitor/t1/fan/telemetry"]
        assert len(tele) == 3  # a 6-s clip, every 2 s of audio: at 2, 4 and 6 s
        assert {"state", "score_mean", "decisions", "threshold", "level_dbfs", "drops", "health"} <= set(tele[0])
        assert tele[0]["decisions"] > 0 and tele[0]["state"] == "normal"
    finally:
        sub.close()
        broker.stop()
