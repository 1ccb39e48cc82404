"""The Sparkplug B edge node against a real mosquitto, checked by an independent decoder (Eclipse Tahu's
JavaScript ``sparkplug-payload``, see ``sparkplug_helpers.py``); the test plays the host application.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
import structlog
from mqtt_helpers import MOSQUITTO, Broker, Subscriber, make_event
from paho.mqtt.enums import CallbackAPIVersion
from sparkplug_helpers import SPARKPLUG_PAYLOAD, Codec, cache_root, metrics, npm_install

from edge_monitor.core.events import now_ms
from edge_monitor.node.config import ConfigError, parse
from edge_monitor.node.settings import MqttSettings, OutboxSettings, SparkplugSettings
from edge_monitor.node.sparkplug.node import DEVICE_METRICS, DeviceInfo, SparkplugNode
from edge_monitor.node.sparkplug.payload import TYPE_NAMES

pytestmark = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed (apt-get install mosquitto)")
HERE = Path(__file__).resolve().parent
G, N = "plant", "n1"


@pytest.fixture(scope="session")
def codec():
    folder = npm_install(cache_root() / "npm-sparkplug", SPARKPLUG_PAYLOAD)
    if folder is None:
        pytest.skip(f"node/npm or the npm registry is not available to install {SPARKPLUG_PAYLOAD}")
    c = Codec(folder)
    yield c
    c.close()


@pytest.fixture()
def broker(tmp_path):
    b = Broker(tmp_path / "broker", general="queue_qos0_messages true").start()
    yield b
    b.kill()


class Host:
    """The test as a Sparkplug host: collects ``spBv1.0/#`` and decodes with the independent codec."""

    def __init__(self, port: int, codec: Codec, topics: str | list[str] = "spBv1.0/#") -> None:
        self.codec = codec
        self.sub = Subscriber(port, topics)

    def messages(self, kind: str | None = None, device: str | None = None) -> list[tuple[str, dict]]:
        out = []
        with self.sub.cond:
            raw = list(self.sub.messages)
        for m in raw:
            parts = m.topic.split("/")
            if parts[0] != "spBv1.0" or len(parts) < 4:
                continue
            if kind and parts[2] != kind:
                continue
            if device and (len(parts) < 5 or parts[4] != device):
                continue
            out.append((m.topic, self.codec.decode(m.payload)))
        return out

    def wait(self, kind: str, count: int = 1, timeout: float = 10.0, device: str | None = None) -> list[dict]:
        def enough(ms) -> bool:
            return sum(1 for m in ms if f"/{kind}/" in m.topic and (device is None or m.topic.endswith("/" + device))) \
                >= count
        assert self.sub.wait_for(enough, timeout), f"fewer than {count} {kind}: {[m.topic for m in self.sub.messages]}"
        return [p for _, p in self.messages(kind, device)]

    def ncmd(self, payload: bytes) -> None:
        self.sub.client.publish(f"spBv1.0/{G}/NCMD/{N}", payload, qos=0)

    def close(self) -> None:
        self.sub.close()


@pytest.fixture()
def host(broker, codec):
    h = Host(broker.port, codec)
    yield h
    h.close()


DEVICES = [DeviceInfo("fan-1", "fan", "id_00", "ab" * 32, 0.8), DeviceInfo("pump-2", "pump", "id_02", "cd" * 32, 1.2)]


def make_node(broker: Broker, tmp_path: Path, **overrides) -> SparkplugNode:
    settings = SparkplugSettings(enabled=True, group_id=G, edge_node_id=N, state_dir=str(tmp_path / "spb"),
                                 **overrides)
    mqtt = MqttSettings(host="127.0.0.1", port=broker.port, reconnect_min_seconds=0.2, reconnect_max_seconds=0.5,
                        keepalive=5)
    return SparkplugNode(settings, mqtt, "node-name", DEVICES, outbox_depth=lambda: 7)


@pytest.fixture()
def node(broker, tmp_path):
    n = make_node(broker, tmp_path)
    yield n
    n.stop()


def test_nbirth_then_dbirth_with_every_metric_and_datatype(host, node):
    node.start()
    nbirth = host.wait("NBIRTH")[0]
    assert nbirth["seq"] == 0
    m = metrics(nbirth)
    assert m["bdSeq"]["type"] == "Int64" and m["bdSeq"]["value"] == 0
    assert m["Node Control/Rebirth"] == {**m["Node Control/Rebirth"], "type": "Boolean", "value": False}
    assert m["Properties/Version"]["type"] == "String" and m["MQTT/Outbox Depth"]["value"] == 7
    births = host.wait("DBIRTH", 2)
    topics = [t for t, _ in host.messages("DBIRTH")]
    assert topics == [f"spBv1.0/{G}/DBIRTH/{N}/fan-1", f"spBv1.0/{G}/DBIRTH/{N}/pump-2"]
    assert [b["seq"] for b in births] == [1, 2]
    fan = metrics(births[0])
    assert set(fan) == set(DEVICE_METRICS)
    for name, (datatype, _props) in DEVICE_METRICS.items():
        assert fan[name]["type"] == TYPE_NAMES[datatype], name
    assert fan["Anomaly/Active"]["value"] is False and fan["State"]["value"] == "unknown"
    assert fan["Decision/Threshold"]["value"] == 0.8 and fan["Machine/Id"]["value"] == "id_00"
    assert fan["Model/SHA256"]["value"] == "ab" * 32
    props = fan["Decision/Score"]["properties"]
    assert props["engUnit"]["value"] == "MSE" and "reconstruction error" in props["Documentation"]["value"]
    assert fan["Health/Level"]["properties"]["engUnit"]["value"] == "dBFS"
    assert fan["Decision/Score"]["value"] is None  # no decision yet: is_null, not a made-up 0
    # report by exception: an anomaly start changes the Boolean at once, with only what changed
    start = make_event(0, node="node-name", monitor="fan-1")
    node.event(start)
    ddata = host.wait("DDATA", device="fan-1")[0]
    d = metrics(ddata)
    assert ddata["seq"] == 3
    assert d["Anomaly/Active"]["value"] is True and d["Anomaly/Active"]["timestamp"] == start.time_ms
    assert d["Anomaly/Last Event Id"]["value"] == start.event_id and d["State"]["value"] == "anomaly"
    assert "Machine/Type" not in d and "Model/SHA256" not in d and not any(m.get("isHistorical") for m in d.values())
    # a telemetry that moved nothing past the deadband sends nothing
    values = {"state": "anomaly", "score_mean": 1.5, "threshold": 0.8, "level_dbfs": -30.0, "clip_fraction": 0.0,
              "drops": 0, "health": []}
    node.telemetry("fan-1", values)
    host.wait("DDATA", 2, device="fan-1")
    node.telemetry("fan-1", {**values, "score_mean": 1.5 + 0.01, "level_dbfs": -30.2})
    node.state("pump-2", "normal", 0.3, 1.2)  # a marker that the session thread went past the telemetry above
    host.wait("DDATA", 1, device="pump-2")
    assert len(host.messages("DDATA", "fan-1")) == 2
    second = metrics(host.messages("DDATA", "fan-1")[1][1])
    # the score equals the event's (1.5): not repeated; the level was unknown: sent once, the 0.2 dB move not
    assert "Decision/Score" not in second and second["Health/Level"]["value"] == -30.0
    assert set(second) == {"Health/Level", "Health/Clip Fraction"}


def test_heartbeat_repeats_the_changing_metrics_without_a_change(broker, host, tmp_path):
    node = make_node(broker, tmp_path, heartbeat_seconds=1.0)
    try:
        node.start()
        host.wait("DBIRTH", 2)
        node.state("fan-1", "normal", 0.3, 0.8)
        host.wait("DDATA", device="fan-1")
        beats = host.wait("DDATA", 3, device="fan-1", timeout=5)  # nothing changed: heartbeats only
        beat = metrics(beats[-1])
        assert beat["State"]["value"] == "normal" and beat["Decision/Score"]["value"] == 0.3
        assert "Machine/Type" not in beat  # the constant ones are in the birth only
    finally:
        node.stop()


def test_seq_runs_mod_256_over_more_than_256_messages(host, node):
    node.start()
    host.wait("DBIRTH", 2)
    for i in range(300):
        node.state("fan-1", "anomaly" if i % 2 else "normal", None, None)
    host.wait("DDATA", 300)
    seqs = [p["seq"] for _, p in host.messages() if "/NDEATH/" not in _]
    assert len(seqs) == 303 and seqs[0] == 0
    assert all(b == (a + 1) % 256 for a, b in itertools.pairwise(seqs)), seqs
    assert 255 in seqs and seqs.count(0) == 2


def test_ncmd_rebirth_and_bad_commands(host, node, codec):
    node.start()
    host.wait("DBIRTH", 2)
    node.state("fan-1", "normal", 0.2, 0.8)
    host.wait("DDATA")
    with structlog.testing.capture_logs() as logs:
        host.ncmd(codec.encode({"timestamp": now_ms(), "metrics": [{"name": "Reboot", "type": "Boolean",
                                                                    "value": True}]}))
        host.ncmd(codec.encode({"timestamp": now_ms(), "metrics": [{"name": "Node Control/Rebirth",
                                                                    "type": "String", "value": "true"}]}))
        host.ncmd(b"\xff\xfe not protobuf")
        deadline = time.monotonic() + 5
        while node.bad_commands < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert node.bad_commands == 3
    events = [e["event"] for e in logs]
    assert any("unknown metric 'Reboot'" in e for e in events), events
    assert any("must be a Boolean" in e for e in events) and any("not a Sparkplug B payload" in e for e in events)
    assert len(host.messages("NBIRTH")) == 1  # none of them caused a birth
    host.ncmd(codec.encode({"timestamp": now_ms(), "metrics": [{"name": "Node Control/Rebirth", "type": "Boolean",
                                                                "value": True}]}))
    births = host.wait("NBIRTH", 2)
    assert births[1]["seq"] == 0 and metrics(births[1])["bdSeq"]["value"] == metrics(births[0])["bdSeq"]["value"]
    again = host.wait("DBIRTH", 4)
    assert [b["seq"] for b in again[2:]] == [1, 2]
    assert metrics(again[2])["State"]["value"] == "normal"  # the rebirth carries the current values
    assert node.stats()["connected"]  # same connection: no NDEATH in between
    assert host.messages("NDEATH") == []


def test_bdseq_across_broker_restart_process_restart_kill9_and_clean_stop(broker, host, tmp_path):
    state = tmp_path / "state"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)])}

    def spawn() -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, str(HERE / "sparkplug_node_proc.py"), str(broker.port), str(state)],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert proc.stderr.readline().strip() == "started"
        return proc

    def bdseq(payload: dict) -> int:
        return metrics(payload)["bdSeq"]["value"]

    proc = spawn()
    try:
        assert bdseq(host.wait("NBIRTH")[0]) == 0
        broker.stop()  # the broker restarts: a new CONNECT, a new bdSeq
        broker.start()
        births = host.wait("NBIRTH", 2, timeout=20)
        assert bdseq(births[1]) == 1 and births[1]["seq"] == 0
        before = len(host.messages("NDEATH"))  # mosquitto may have sent the Will (bdSeq 0) as it shut down
        assert {bdseq(p) for _, p in host.messages("NDEATH")} <= {0}  # QoS 1: maybe twice
        proc.kill()  # kill -9: the broker publishes the Will of the current connection
        proc.wait()
        death = host.wait("NDEATH", before + 1)[-1]
        assert bdseq(death) == 1 and "seq" not in death and list(metrics(death)) == ["bdSeq"]
        will = [m for m in host.sub.messages if "/NDEATH/" in m.topic][-1]
        assert will.topic == f"spBv1.0/{G}/NDEATH/proc" and will.qos == 1 and not will.retain
        assert (state / "bdseq").read_text().strip() == "1"
        proc = spawn()  # a new process continues from the state folder
        births = host.wait("NBIRTH", 3)
        assert bdseq(births[2]) == 2
        proc.send_signal(signal.SIGTERM)  # clean stop: NDEATH with the same bdSeq, then DISCONNECT
        assert proc.wait(10) == 0
        deaths = host.wait("NDEATH", before + 2)
        assert bdseq(deaths[-1]) == 2
    finally:
        proc.kill()


def test_anomaly_transitions_during_an_outage_are_replayed_as_historical(broker, host, node, tmp_path):
    node.start()
    host.wait("DBIRTH", 2)
    broker.stop()
    deadline = time.monotonic() + 5
    while node.stats()["connected"] and time.monotonic() < deadline:
        time.sleep(0.05)
    start = make_event(0, node="node-name", monitor="fan-1")
    end = make_event(2, node="node-name", monitor="fan-1")
    node.event(start)
    time.sleep(0.05)
    node.event(end)
    deadline = time.monotonic() + 5
    while node.stats()["history"] < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert node.stats()["history"] == 2 and (tmp_path / "spb" / "history.sqlite").exists()
    broker.start()
    host.wait("NBIRTH", 2, timeout=20)
    rebirth = metrics(host.wait("DBIRTH", 4, device=None)[2])
    assert rebirth["Anomaly/Active"]["value"] is False  # the birth says how things are now
    history = host.wait("DDATA", 2, device="fan-1")
    first, second = metrics(history[0]), metrics(history[1])
    assert first["Anomaly/Active"]["value"] is True and first["Anomaly/Active"]["isHistorical"] is True
    assert first["Anomaly/Active"]["timestamp"] == start.time_ms
    assert second["Anomaly/Active"]["value"] is False and second["Anomaly/Active"]["timestamp"] == end.time_ms
    all_seq = [p["seq"] for _, p in host.messages() if "seq" in p]
    assert all_seq[-5:] == [0, 1, 2, 3, 4]  # NBIRTH, 2 DBIRTH, 2 historical DDATA in one run of seq
    deadline = time.monotonic() + 5
    while node.stats()["history"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert node.stats()["history"] == 0


def test_primary_host_state_gates_the_birth(broker, host, tmp_path):
    node = make_node(broker, tmp_path, primary_host_id="scada")
    admin = paho.Client(CallbackAPIVersion.VERSION2, client_id="scada-host")
    admin.connect("127.0.0.1", broker.port)
    admin.loop_start()
    try:
        with structlog.testing.capture_logs() as logs:
            node.start()
            time.sleep(1.5)
            assert host.messages("NBIRTH") == []  # no host yet: no birth
            admin.publish("spBv1.0/STATE/scada", b"ONLINE", qos=1, retain=True).wait_for_publish(5)
            time.sleep(0.5)
        assert host.messages("NBIRTH") == []
        assert any("STATE ignored" in e["event"] for e in logs), logs
        online = json.dumps({"online": True, "timestamp": now_ms()}).encode()
        admin.publish("spBv1.0/STATE/scada", online, qos=1, retain=True).wait_for_publish(5)
        first = host.wait("NBIRTH")[0]
        host.wait("DBIRTH", 2)
        offline = json.dumps({"online": False, "timestamp": now_ms() + 1}).encode()
        admin.publish("spBv1.0/STATE/scada", offline, qos=1, retain=True).wait_for_publish(5)
        death = host.wait("NDEATH")[0]
        assert metrics(death)["bdSeq"]["value"] == metrics(first)["bdSeq"]["value"]
        time.sleep(1.0)
        assert len(host.messages("NBIRTH")) == 1  # waits for the host again
        online = json.dumps({"online": True, "timestamp": now_ms() + 2}).encode()
        admin.publish("spBv1.0/STATE/scada", online, qos=1, retain=True).wait_for_publish(5)
        second = host.wait("NBIRTH", 2)[1]
        assert metrics(second)["bdSeq"]["value"] == metrics(first)["bdSeq"]["value"] + 1
    finally:
        node.stop()
        admin.loop_stop()


@pytest.mark.parametrize("allowed", ["test-json", "test-s"])  # test-sub-… is the test subscriber
def test_a_broker_refusing_one_session_leaves_the_other_working(tmp_path, codec, allowed):
    from edge_monitor.node.mqtt.publisher import Publisher

    broker = Broker(tmp_path / "broker", general=f"clientid_prefixes {allowed}").start()
    host = Host(broker.port, codec, ["spBv1.0/#", "edge-monitor/#"]) if allowed == "test-s" else None
    mqtt = MqttSettings(enabled=True, host="127.0.0.1", port=broker.port, client_id="test-json-n1",
                        reconnect_min_seconds=0.2, reconnect_max_seconds=0.5,
                        outbox=OutboxSettings(path=str(tmp_path / "outbox.sqlite")))
    publisher = Publisher(mqtt, N, monitors=[{"name": "fan-1"}])
    node = SparkplugNode(SparkplugSettings(enabled=True, group_id=G, client_id="test-spb-n1",
                                           state_dir=str(tmp_path / "spb")), mqtt, N, DEVICES[:1])
    try:
        with structlog.testing.capture_logs() as logs:
            publisher.start()
            node.start()
            publisher.publish_event(make_event(0, node=N))
            node.event(make_event(0, node=N))
            time.sleep(2.0)
        refused = [e for e in logs if "refused" in str(e.get("problem", ""))]
        if allowed == "test-json":  # Sparkplug refused: one line, the JSON events still go out
            assert publisher.wait_drained(5) and publisher.stats()["published"]["event"] == 1
            assert [e["problem"].split(":")[0] for e in refused] == ["broker refused the Sparkplug session"]
            assert node.stats()["history"] == 1  # the anomaly start waits in the store-and-forward outbox
        else:  # JSON refused: the Sparkplug node births and sends the anomaly; the JSON event stays queued
            assert host is not None
            host.wait("DBIRTH")
            assert publisher.stats()["queued"] >= 1 and publisher.stats()["published"]["event"] == 0
            assert any("refused the connection" in e["problem"] for e in refused), refused
            assert not any("Sparkplug" in e["problem"] for e in refused)
    finally:
        node.stop()
        publisher.stop(timeout=0.5)
        if host:
            host.close()
        broker.kill()


@pytest.mark.parametrize("key,value", [("group_id", "a/b"), ("group_id", "+"), ("group_id", "#"), ("group_id", ""),
                                       ("edge_node_id", "x#"), ("edge_node_id", "a/b"), ("edge_node_id", "")])
def test_bad_sparkplug_ids_are_config_errors(tmp_path, key, value):
    data = {"node": "n1", "monitors": [{"name": "fan-1", "model": "m"}], "sparkplug": {"enabled": True, key: value}}
    with pytest.raises(ConfigError) as info:
        parse(data, base_dir=tmp_path, source="config.yaml")
    assert str(info.value).startswith(f"config.yaml: sparkplug.{key}: expected") and "\n" not in str(info.value)


def test_sparkplug_client_id_must_differ_from_the_json_one(tmp_path):
    data = {"node": "n1", "monitors": [{"name": "fan-1", "model": "m"}],
            "sparkplug": {"enabled": True, "client_id": "edge-monitor-n1"}}
    with pytest.raises(ConfigError, match=r"^config.yaml: sparkplug.client_id: must differ from the JSON session"):
        parse(data, base_dir=tmp_path, source="config.yaml")


def test_defaults_are_off_and_the_example_config_parses():
    from edge_monitor.node.config import load

    settings = load(HERE.parent / "config.yaml")
    assert settings.sparkplug.enabled is False and settings.homeassistant.enabled is False
    assert settings.sparkplug.group_id == "edge-monitor"


# ---------------------------------------------------------------- through the daemon, with a real microphone path

from pulse import have_pulseaudio
from test_daemon import NODE, clips, node_factory  # noqa: F401 (pytest fixtures)


@pytest.mark.skipif(not have_pulseaudio(), reason="pulseaudio is not installed")
def test_daemon_device_loss_is_ddeath_then_dbirth_and_json_topics_are_unaffected(node_factory, codec, tmp_path,  # noqa: F811
                                                                                  clips):  # noqa: F811
    extra = f"sparkplug:\n  enabled: true\n  group_id: {G}\n  state_dir: {tmp_path / 'spb'}\n"
    node = node_factory(extra=extra)
    host = Host(node.broker.port, codec)
    try:
        # the birth went out before this host subscribed: ask for a rebirth, as a host does
        host.sub.client.publish(f"spBv1.0/{G}/NCMD/{NODE}", codec.encode(
            {"timestamp": now_ms(), "metrics": [{"name": "Node Control/Rebirth", "type": "Boolean", "value": True}]}))
        birth = metrics(host.wait("DBIRTH", device="fan-1", timeout=10)[0])
        assert birth["Machine/Type"]["value"] == "fan" and birth["State"]["value"] in ("normal", "unknown")
        node.pulse.play(clips[1])  # the faulty sound: the Boolean goes true
        ddata = host.sub.wait_for(lambda ms: any("/DDATA/" in m.topic and metrics(codec.decode(m.payload)).get(
            "Anomaly/Active", {}).get("value") is True for m in ms), 20)
        assert ddata, node.output()
        node.pulse.unload_source()
        host.wait("DDEATH", device="fan-1", timeout=20)
        node.pulse.reload_source()
        host.wait("DBIRTH", 2, device="fan-1", timeout=40)
        # the JSON topics are as before: JSON payloads only, the device loss is a health event there
        assert node.sub.wait_for(lambda ms: any(m.topic.endswith("/event") and m.json()["type"] == "health"
                                                and m.json()["health"]["condition"] == "sensor_fault" for m in ms), 5)
        assert all(m.topic.startswith(f"edge-monitor/{NODE}/") for m in node.sub.messages)
        assert all(isinstance(m.json(), dict) for m in node.sub.messages)
        assert {m.topic.rsplit("/", 1)[1] for m in node.sub.messages} >= {"status", "state", "event", "telemetry"}
        node.proc.send_signal(signal.SIGTERM)
        assert node.proc.wait(10) == 0, node.output()
        host.wait("NDEATH")
    finally:
        host.close()


def test_machine_stopped_is_a_state_and_unknown_event_types_are_ignored(host, node):
    import dataclasses

    from edge_monitor.core.events import MachineInfo

    node.start()
    host.wait("DBIRTH", 2)
    base = make_event(0, node="node-name", monitor="fan-1")
    stop = dataclasses.replace(base, type="machine_stopped", score=None, threshold=None, anomaly=None, bands=(),
                               decisions_suspended=True,
                               machine_state=MachineInfo("stopped", -52.0, -49.0, 12.0, "machine stopped"))
    node.event(stop)
    node.event(dataclasses.replace(base, type="a_type_from_the_future"))  # must not kill the session thread
    node.state("fan-1", "stopped", None, 0.8)
    data = metrics(host.wait("DDATA", 1, device="fan-1")[-1])
    assert data["State"]["value"] == "stopped"
    assert "Anomaly/Active" not in data  # a stopped machine is no anomaly transition
    node.state("fan-1", "normal", None, 0.8)  # the session still works after the unknown type
    assert metrics(host.wait("DDATA", 2, device="fan-1")[-1])["State"]["value"] == "normal"
