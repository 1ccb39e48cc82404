"""``edge-monitor run`` end to end (PulseAudio null sink, mosquitto: ``test_daemon.py``'s harness): an
anomaly's ``anomaly_end`` on MQTT carries evidence whose WAV exists in the state folder, has the event's
sha256 and holds the fault that was played."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
from scipy.signal import fftconvolve
from test_daemon import clips, node_factory  # noqa: F401 (fixtures)

from edge_monitor.core.events import validate
from edge_monitor.core.wav import read_wav


def _best_match(clip: np.ndarray, played: np.ndarray) -> float:
    """The highest normalised correlation of a 2-s stretch of ``played`` anywhere in ``clip``."""
    probe = played[RATE * 2:RATE * 4]
    corr = fftconvolve(clip, probe[::-1], mode="valid")
    energy = np.sqrt(fftconvolve(clip ** 2, np.ones(len(probe)), mode="valid").clip(1e-12))
    return float(np.max(corr / (energy * np.linalg.norm(probe))))


RATE = 16000


def test_anomaly_end_on_mqtt_carries_evidence_of_the_played_fault(node_factory, clips):  # noqa: F811
    normal, anomaly = clips
    node = node_factory()
    assert node.sub.wait_for(lambda ms: any(m.topic.endswith("/status") and m.json()["state"] == "online"
                                            for m in ms), 10)
    node.pulse.play(normal)
    node.pulse.play(anomaly)
    node.pulse.play(normal, wait=False)  # the machine recovers: the anomaly ends
    assert node.sub.wait_for(lambda ms: any(m.topic.endswith("/event") and m.json()["type"] == "anomaly_end"
                                            for m in ms), 40), node.output()
    start = node.events_of("anomaly_start")[0]
    end = next(e for e in node.events_of("anomaly_end") if e["id"] == start["id"])
    assert validate(end) == [], end
    assert "evidence" not in start  # the clip is written once the anomaly ended
    ev = end["evidence"]
    wav = Path(ev["file"])
    assert wav.parent == node.state_dir / "evidence" / "fan-1" and wav.is_file(), node.output()
    assert hashlib.sha256(wav.read_bytes()).hexdigest() == ev["sha256"]
    assert wav.with_suffix(".png").is_file() and wav.with_suffix(".json").is_file()
    clip, info = read_wav(wav)
    assert info.sample_rate == RATE and info.frames / RATE == ev["duration_s"]
    assert ev["start_position_s"] < end["anomaly"]["started_position_s"]  # with its pre-roll
    played, _ = read_wav(anomaly)
    assert _best_match(clip[:, 0], played[:, 0]) > 0.9
    # monitoring went on: the JSON lines carry the same end event, with the same evidence
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and ev["sha256"] not in node.events.read_text():
        time.sleep(0.1)
    assert ev["sha256"] in node.events.read_text()
    assert "processing thread died" not in node.output()
