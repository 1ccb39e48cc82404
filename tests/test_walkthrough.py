"""README "Commissioning a machine", step by step, as a plant engineer does it — real parts throughout: a
private PulseAudio server whose null sink runs at 48 kHz (an audio server's default rate, not the model's),
mosquitto on loopback, the daemon as a subprocess, TensorFlow training a model from what was recorded.

record (normal sound playing) → train (no flags) → calibrate live (normal sound playing) → check → run: normal
sound (no anomaly) → a fault (``anomaly_start``; ``anomaly_end`` with evidence whose WAV has the event's sha256
and holds the fault that was played) → label it.

One test, about four minutes (60 s of recording, 60 s of calibration, training, the run): the steps depend on
each other, as they do on a node.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from mqtt_helpers import Broker
from pulse import PulseServer, have_pulseaudio
from test_daemon import Node
from test_evidence_daemon import _best_match

from edge_monitor.core.events import validate
from edge_monitor.core.wav import read_wav, write_wav
from training.synth import synth_clip

pytestmark = [pytest.mark.skipif(not have_pulseaudio(), reason="pulseaudio is not installed"), pytest.mark.slow]

RATE = 16000
SINK_RATE = 48000


def cli(env: dict, *args, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_monitor", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_commissioning_a_machine_from_recording_to_a_labelled_alert(tmp_path):
    t0 = time.monotonic()
    rng = np.random.default_rng(7)
    sounds = tmp_path / "sounds"
    sounds.mkdir()
    # the machine: one synthetic fan, running normally for long stretches, then with a bearing fault
    normal_long = sounds / "normal_long.wav"
    write_wav(normal_long, synth_clip("fan", 0, 75.0, RATE, rng=rng), RATE)
    normal = sounds / "normal.wav"
    write_wav(normal, synth_clip("fan", 0, 20.0, RATE, rng=rng), RATE)
    fault = sounds / "fault.wav"
    write_wav(fault, synth_clip("fan", 0, 12.0, RATE, rng=rng, fault="bearing", severity=0.6), RATE)

    pulse = PulseServer(tmp_path / "pulse", rate=SINK_RATE, channels=1).start()
    broker = Broker(tmp_path / "broker").start()
    state = tmp_path / "state"
    models = tmp_path / "models"
    bundle = models / "fan-id_00"
    monitors = f"  - name: fan-1\n    model: {bundle}\n"
    audio = f"  sample_rate: {SINK_RATE}\n"  # capture at the audio server's rate: the node resamples (README)
    config = tmp_path / "config.yaml"
    config.write_text(f"node: e2e\naudio:\n  device: pulse\n{audio}monitors:\n{monitors}state_dir: {state}\n")
    env = {**os.environ, **pulse.env}
    node = None
    try:
        # 1. record 60 s of the machine running normally, through the daemon's own chain (no model yet)
        player = pulse.play(normal_long, wait=False)
        time.sleep(1.0)
        normal_set = state / "normal" / "fan-1"
        rec = cli(env, "record", "--config", config, "--monitor", "fan-1", "--seconds", 60, "--out", normal_set,
                  "--clip-seconds", 10, "--machine", "fan", "--id", "00")
        player.wait(timeout=30)
        assert rec.returncode == 0, rec.stderr
        recorded = sorted((normal_set / "fan" / "train").glob("normal_id_00_*.wav"))
        assert len(recorded) == 6, rec.stderr
        for path in recorded:
            _, info = read_wav(path)
            assert info.sample_rate == RATE and info.encoding == "pcm16"
        t_record = time.monotonic()

        # 2. train on what was recorded, no flags: the bundle is named after the machine
        tr = cli(env, "train", normal_set, "--out", models, "--epochs", 30, timeout=900)
        assert tr.returncode == 0, tr.stdout + tr.stderr
        manifest = json.loads((bundle / "model.json").read_text())
        assert manifest["machine"]["type"] == "fan" and manifest["level"] is not None
        t_train = time.monotonic()

        # 3. calibrate on 60 s of live normal sound: a node calibration file, not the bundle
        player = pulse.play(normal_long, wait=False)
        time.sleep(1.0)
        cal = cli(env, "calibrate", "--config", config, "--monitor", "fan-1", "--seconds", 60)
        player.wait(timeout=30)
        assert cal.returncode == 0, cal.stdout + cal.stderr
        calibration = json.loads((state / "calibration" / "fan-1.json").read_text())
        assert calibration["model_sha256"] == manifest["model"]["sha256"]
        ck = cli(env, "check", config)
        assert ck.returncode == 0 and "threshold from: node calibration" in ck.stdout, ck.stdout + ck.stderr
        t_calibrate = time.monotonic()

        # 4. run: normal sound gives no anomaly; the fault gives one, with its evidence
        node = Node(tmp_path, pulse, broker, monitors=monitors, audio=audio)
        assert node.read_notify("READY=1", 60), node.output()
        pulse.play(normal)
        assert node.sub.wait_for(lambda ms: any(m.topic.endswith("fan-1/state") and m.json()["state"] == "normal"
                                                for m in ms), 10), node.output()
        assert node.events_of("anomaly_start") == [], node.output()
        tele = [m.json() for m in node.sub.messages if m.topic.endswith("fan-1/telemetry")]
        assert tele and tele[-1]["threshold"] == pytest.approx(calibration["threshold"], rel=1e-6)
        pulse.play(fault)
        pulse.play(normal, wait=False)  # the machine recovers: the anomaly ends
        assert node.sub.wait_for(lambda ms: any(m.topic.endswith("/event") and m.json()["type"] == "anomaly_end"
                                                for m in ms), 40), node.output()
        start = node.events_of("anomaly_start")[0]
        end = next(e for e in node.events_of("anomaly_end") if e["id"] == start["id"])
        assert validate(end) == [], end
        evidence = end["evidence"]
        wav = Path(evidence["file"])
        assert wav.is_file() and hashlib.sha256(wav.read_bytes()).hexdigest() == evidence["sha256"]
        clip, info = read_wav(wav)
        played, _ = read_wav(fault)
        assert info.sample_rate == RATE and _best_match(clip[:, 0], played[:, 0]) > 0.9

        # 5. the engineer listens, agrees, labels it: the clip joins the monitor's labelled faults
        lb = cli(env, "label", end["event_id"], "anomaly", "--note", "bearing noise confirmed", "--config", config)
        assert lb.returncode == 0, lb.stderr
        assert (state / "faults" / "fan-1" / f"{end['id']}.wav").read_bytes() == wav.read_bytes()
        assert json.loads(wav.with_suffix(".json").read_text())["label"] == "anomaly"
        t_run = time.monotonic()
        print(f"walk-through: record {t_record - t0:.0f} s, train {t_train - t_record:.0f} s, calibrate "
              f"{t_calibrate - t_train:.0f} s, run and label {t_run - t_calibrate:.0f} s")
    finally:
        if node is not None:
            node.stop()
        broker.stop()
        pulse.kill()
