"""``edge-monitor run`` with its MQTT outbox on a real tmpfs that fills up (issue 15 item 2): decisions, the
JSON-lines sink and the watchdog go on; what cannot be queued is counted; queuing resumes when space returns.
The harness (PulseAudio null sink, mosquitto, notify socket) is ``test_daemon.py``'s."""

from __future__ import annotations

import json
import time

import pytest
import test_daemon
from test_daemon import clips, node_factory  # noqa: F401 (fixtures)
from test_outbox_storage import SmallFs


@pytest.fixture
def state_fs(tmp_path, monkeypatch):
    fs = SmallFs(tmp_path / "state-fs", "1m")
    outbox = fs.path / "outbox.sqlite"
    write_config = test_daemon.Node.write_config

    def on_the_small_fs(self, **overrides):  # the daemon's outbox on the small file system, the rest elsewhere
        write_config(self, **overrides)
        self.config.write_text(self.config.read_text().replace(str(self.root / "outbox.sqlite"), str(outbox)))

    monkeypatch.setattr(test_daemon.Node, "write_config", on_the_small_fs)
    yield fs
    fs.unmount()


def test_daemon_with_a_full_disk_keeps_deciding_writing_jsonl_and_pinging_the_watchdog(
        state_fs, node_factory, clips):  # noqa: F811 (test_daemon's fixtures, imported above)
    normal, anomaly = clips
    node = node_factory()
    assert node.sub.wait_for(lambda ms: any(m.topic.endswith("/status") and m.json()["state"] == "online"
                                            for m in ms), 10)
    node.broker.stop()  # nothing leaves the outbox now: it has to grow, and cannot
    state_fs.fill()
    deadline = time.monotonic() + 30  # telemetry every second: the outbox outgrows its free pages quickly
    while time.monotonic() < deadline and "mqtt outbox storage problem" not in node.output() \
            and "processing thread died" not in node.output():
        time.sleep(0.2)
    assert "processing thread died" not in node.output(), node.output()
    assert "mqtt outbox storage problem" in node.output(), node.output()
    pings_before = sum("WATCHDOG=1" in m for m in node.messages)
    full_at = len(node.messages)

    node.pulse.play(normal, wait=False)
    time.sleep(3)
    node.pulse.play(anomaly)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and '"anomaly_start"' not in node.events.read_text():
        time.sleep(0.2)
    lines = [json.loads(line) for line in node.events.read_text().splitlines()]
    assert any(e["type"] == "anomaly_start" for e in lines), node.output()  # decisions and JSON lines go on
    assert node.proc.poll() is None and "processing thread died" not in node.output()
    assert node.read_notify("WATCHDOG=1", 5, after=full_at)
    assert sum("WATCHDOG=1" in m for m in node.messages) > pings_before
    assert node.output().count("mqtt outbox storage problem") == 1  # said once, not once per message
    # a `storage` health event says so in the JSON lines (not on MQTT: that is what cannot store), and it does
    # not suspend decisions (the anomaly above was decided while it was bad)
    storage = [e for e in lines if e["type"] == "health" and e["health"]["condition"] == "storage"]
    assert storage and storage[0]["health"]["status"] == "bad" and storage[0]["decisions_suspended"] is False
    assert lines.index(storage[0]) < next(i for i, e in enumerate(lines) if e["type"] == "anomaly_start")

    state_fs.free()
    node.broker.start()
    assert node.sub.wait_for(lambda ms: any(m.topic.endswith("fan-1/telemetry")
                                            and m.json()["mqtt"]["unqueued"]["event"] >= 1 for m in ms), 20), \
        node.output()
    assert "mqtt outbox can store messages again" in node.output()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and '"status": "ok"' not in node.events.read_text():
        time.sleep(0.2)
    back = [e for e in map(json.loads, node.events.read_text().splitlines())
            if e["type"] == "health" and e["health"]["condition"] == "storage"]
    assert [e["health"]["status"] for e in back] == ["bad", "ok"] and back[0]["id"] == back[1]["id"]
