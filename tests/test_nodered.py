"""``deploy/node-red/edge-monitor-flow.json`` in a real Node-RED (headless, npm ``node-red@4.1.8``, which runs on
Node.js 18.5+) against a real mosquitto, fed by ``edge-monitor replay --mqtt`` on the demo anomaly.

Node-RED is installed once into ``$EDGE_MONITOR_CACHE/node-red-4.1.8`` (default ``~/.cache/edge-monitor``) by the
fixture: ``npm install --no-audit --no-fund --omit=dev --prefix <cache>/node-red-4.1.8 node-red@4.1.8``.
It starts once for this module (it takes seconds; the fixture prints how long).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mqtt_helpers import MOSQUITTO, Broker, Subscriber, free_port
from sparkplug_helpers import cache_root, npm_install

from edge_monitor import DEMO_DIR

pytestmark = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed (apt-get install mosquitto)")
REPO = Path(__file__).resolve().parent.parent
FLOW = REPO / "deploy" / "node-red" / "edge-monitor-flow.json"
NODE_RED = "node-red@4.1.8"


class NodeRed:
    def __init__(self, root: Path, install: Path, broker: Broker) -> None:
        self.port = free_port()
        user_dir = root / "userdir"
        user_dir.mkdir(parents=True)
        (user_dir / "flows.json").write_text(FLOW.read_text())
        settings = user_dir / "settings.js"
        settings.write_text(
            f"module.exports = {{uiPort: {self.port}, uiHost: '127.0.0.1', httpAdminRoot: false, "
            "flowFile: 'flows.json',\n  credentialSecret: false, "
            "logging: {console: {level: 'info', metrics: false, audit: false}}};\n")
        self.log = open(root / "node-red.log", "w+")  # noqa: SIM115
        env = {**os.environ, "EDGE_MONITOR_MQTT_HOST": "127.0.0.1", "EDGE_MONITOR_MQTT_PORT": str(broker.port)}
        started = time.monotonic()
        self.proc = subprocess.Popen(["node", str(install / "node_modules" / "node-red" / "red.js"), "--userDir",
                                      str(user_dir), "--settings", str(settings)], env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.output()
            if "Connected to broker" in self.output():
                try:
                    self.status()
                    break
                except OSError:
                    pass
            time.sleep(0.2)
        else:
            raise AssertionError(f"Node-RED did not start: {self.output()}")
        self.startup_s = time.monotonic() - started
        print(f"Node-RED {NODE_RED} started in {self.startup_s:.1f} s")

    def status(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/edge-monitor", timeout=2) as r:
            return json.loads(r.read())

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    install = npm_install(cache_root() / "node-red-4.1.8", NODE_RED)
    if install is None:
        pytest.skip(f"node/npm or the npm registry is not available to install {NODE_RED}")
    root = tmp_path_factory.mktemp("nodered")
    broker = Broker(root / "broker").start()
    red = NodeRed(root, install, broker)
    yield broker, red, root
    red.stop()
    broker.kill()


def test_the_flow_sees_the_demo_anomaly_once(stack):
    broker, red, root = stack
    alerts = Subscriber(broker.port, ["nodered/#", "edge-monitor/+/+/event"])
    config = root / "config.yaml"
    config.write_text(f"""
node: nr
monitors:
  - name: fan-1
    model: {DEMO_DIR / 'fan-id_00'}
mqtt:
  host: 127.0.0.1
  port: {broker.port}
  outbox:
    path: {root / 'outbox.sqlite'}
""")
    try:
        proc = subprocess.run([sys.executable, "-m", "edge_monitor", "replay", "--config", str(config), "--mqtt",
                               "--quiet", str(DEMO_DIR / "clips" / "anomaly_id_00_demo.wav")],
                              capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
        assert proc.returncode == 1, proc.stderr  # 1: an anomaly was found
        assert alerts.wait_for(lambda ms: any(m.topic.startswith("nodered/") for m in ms), 15), red.output()
        starts = [m for m in alerts.on("/event") if m.json()["type"] == "anomaly_start"]
        assert len(starts) == 1
        # QoS 1 may deliver twice: send the same event again; the flow must not alert twice
        alerts.client.publish(starts[0].topic, starts[0].payload, qos=1).wait_for_publish(5)
        time.sleep(1.5)
        sent = [m.json() for m in alerts.messages if m.topic.startswith("nodered/")]
        assert len(sent) == 1, sent
        alert = sent[0]
        assert alert["event_id"] == starts[0].json()["event_id"] and alert["monitor"] == "fan-1"
        assert "Anomaly on fan-1 (fan id_00) at node nr" in alert["text"]
        assert [m.topic for m in alerts.messages if m.topic.startswith("nodered/")] == [
            "nodered/edge-monitor/nr/fan-1/alert"]
        monitors = red.status()["monitors"]
        fan = monitors["nr/fan-1"]
        assert fan["anomalies"] == 1 and fan["last_anomaly"]["event_id"] == alert["event_id"]
        assert fan["last_anomaly"]["ended"] is not None  # the replay ended it (end of stream)
        # replay publishes the state topic as the daemon does: its last word is "unknown" (the file ended)
        assert fan["state"] == "unknown" and fan["state_time"] is not None
        # the daemon's retained state (through our real publisher): shown per monitor
        from edge_monitor.node.mqtt.publisher import Publisher
        from edge_monitor.node.settings import MqttSettings, OutboxSettings

        publisher = Publisher(MqttSettings(enabled=True, host="127.0.0.1", port=broker.port,
                                           outbox=OutboxSettings(path=str(root / "state-outbox.sqlite"))),
                              "nr", monitors=[{"name": "fan-1"}])
        publisher.start()
        try:
            publisher.publish_state("fan-1", "anomaly", 1.4, 1.0)
            assert publisher.wait_drained(5)
        finally:
            publisher.stop(timeout=0.5)
        deadline = time.monotonic() + 5
        while red.status()["monitors"]["nr/fan-1"]["state"] != "anomaly" and time.monotonic() < deadline:
            time.sleep(0.1)
        fan = red.status()["monitors"]["nr/fan-1"]
        assert fan["state"] == "anomaly" and fan["state_time"] and fan["anomalies"] == 1
    finally:
        alerts.close()
