"""The MQTT publisher against a real mosquitto on loopback: topics, retained status/state, Last Will, outages,
the durable outbox, TLS, passwords, ACLs, both protocol versions, and ``mqtt-test``'s diagnoses."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from edge_monitor.commands.mqtt_test import add_arguments as add_test_arguments
from edge_monitor.commands.mqtt_test import run as run_test
from edge_monitor.core.errors import UserError
from edge_monitor.core.events import validate
from edge_monitor.node.mqtt.connection import parse_url
from edge_monitor.node.mqtt.outbox import Outbox
from edge_monitor.node.mqtt.publisher import Publisher
from edge_monitor.node.settings import MqttSettings, OutboxSettings, TlsSettings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mqtt_helpers import (  # noqa: E402
    MOSQUITTO,
    Broker,
    Subscriber,
    free_port,
    make_certs,
    make_event,
    unique_events,
)

pytestmark = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed (apt-get install mosquitto)")

HERE = Path(__file__).resolve().parent
MONITORS = [{"name": "fan-1", "model": "fan-id_00", "sha256": "ab" * 32}]
PROTOCOLS = ["5", "3.1.1"]


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path / "broker").start()
    yield b
    b.kill()


@pytest.fixture
def started(tmp_path):
    """Start publishers (and subscribers) through this; everything is stopped at teardown."""
    things = []

    def start(thing):
        if isinstance(thing, Publisher):
            thing.start()
        things.append(thing)
        return thing

    yield start
    for thing in reversed(things):
        if isinstance(thing, Publisher):
            thing.stop(timeout=0.2)
        else:
            thing.close()


def settings(port: int, tmp_path: Path, **overrides) -> MqttSettings:
    base = dict(enabled=True, host="127.0.0.1", port=port, keepalive=5, reconnect_min_seconds=0.2,
                reconnect_max_seconds=1.0, outbox=OutboxSettings(path=str(tmp_path / "outbox.sqlite")))
    base.update(overrides)
    return MqttSettings(**base)


def mqtt_test(capsys, *argv: str) -> tuple[int, str, str]:
    """``edge-monitor mqtt-test ...`` in process: the module's hooks, as cli.main calls them (one line per error)."""
    capsys.readouterr()
    parser = argparse.ArgumentParser(prog="edge-monitor mqtt-test")
    add_test_arguments(parser)
    try:
        rc = run_test(parser.parse_args(list(argv)))
    except UserError as exc:
        print(f"edge-monitor: error: {exc}", file=sys.stderr)
        rc = exc.exit_code
    out, err = capsys.readouterr()
    return rc, out, err


def one_error(rc: int, err: str) -> str:
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def spawn_publisher(port: int, outbox: Path, *args: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, str(HERE / "mqtt_publisher_proc.py"), "--port", str(port),
                             "--outbox", str(outbox), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.startswith("published"), proc.stderr.read() if proc.poll() is not None else line
    return proc


# -- topics and payloads -----------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_topics_and_payloads_field_by_field(broker, started, tmp_path, protocol):
    sub = started(Subscriber(broker.port, "edge-monitor/#", protocol=protocol))
    pub = started(Publisher(settings(broker.port, tmp_path, protocol=protocol), "node1", monitors=MONITORS,
                            version="1.2.3"))
    events = [make_event(n) for n in range(4)]  # anomaly_start, _update, _end, health
    for event in events:
        pub.publish_event(event)
    pub.publish_state("fan-1", "anomaly", np.float32(1.75), 1.0)
    pub.publish_telemetry("fan-1", {"score_mean": np.float64(0.5), "score_max": 0.9, "level_dbfs": -31.5,
                                    "clip_fraction": 0.0, "drops": np.int64(0), "bad": float("nan")})
    assert sub.wait_for(lambda ms: sum(m.topic.endswith("/telemetry") for m in ms) == 1
                        and sum(m.topic.endswith("/event") for m in ms) == 4)

    (status,) = sub.on("/status")
    assert status.topic == "edge-monitor/node1/status" and status.qos == 1
    online = status.json()
    assert set(online) == {"state", "node", "version", "monitors", "started_at", "time"}
    assert (online["state"], online["node"], online["version"], online["monitors"]) == ("online", "node1", "1.2.3",
                                                                                       MONITORS)
    assert online["started_at"].endswith("Z") and online["time"] >= online["started_at"]

    got = sub.on("/event")
    assert {m.topic for m in got} == {"edge-monitor/node1/fan-1/event"} and {m.qos for m in got} == {1}
    assert len(got) == len(events)
    for m, event, seq in zip(got, events, range(1, 5), strict=True):
        data = m.json()
        assert validate(data) == []
        assert data.pop("seq") == seq
        assert data == event.to_dict()

    (state,) = sub.on("/state")
    assert state.topic == "edge-monitor/node1/fan-1/state" and state.qos == 1
    data = state.json()
    assert set(data) == {"state", "score", "threshold", "time", "time_ms"}
    assert (data["state"], data["score"], data["threshold"]) == ("anomaly", 1.75, 1.0)
    assert abs(data["time_ms"] - time.time() * 1000) < 10_000

    (telemetry,) = sub.on("/telemetry")
    assert telemetry.topic == "edge-monitor/node1/fan-1/telemetry" and telemetry.qos == 0
    data = telemetry.json()
    assert {k: data[k] for k in ("score_mean", "score_max", "level_dbfs", "clip_fraction", "drops", "bad")} == {
        "score_mean": 0.5, "score_max": 0.9, "level_dbfs": -31.5, "clip_fraction": 0.0, "drops": 0, "bad": None}
    assert 0 <= data["mqtt"].pop("queued") <= 6  # rows not yet acknowledged when the telemetry was made
    assert data["mqtt"] == {"dropped": {"telemetry": 0, "state": 0, "event": 0}, "rejected": 0, "skipped": 0,
                            "unqueued": {"telemetry": 0, "state": 0, "event": 0}, "storage": "ok"}

    assert pub.wait_drained(5)
    stats = pub.stats()
    assert stats["published"] == {"telemetry": 1, "state": 1, "event": 4}
    assert (stats["connected"], stats["queued"], stats["inflight"], stats["seq"]) == (True, 0, 0, 4)

    pub.stop()
    assert sub.wait_for(lambda ms: ms[-1].topic.endswith("/status") and ms[-1].json()["state"] == "offline")
    offline = sub.messages[-1].json()
    assert (offline["reason"], offline["node"], offline["started_at"]) == ("shutdown", "node1", online["started_at"])


def test_late_subscriber_sees_retained_status_and_current_state(broker, started, tmp_path):
    pub = started(Publisher(settings(broker.port, tmp_path), "node1", monitors=MONITORS, version="1"))
    pub.publish_state("fan-1", "normal", 0.4, 1.0)
    pub.publish_state("fan-1", "anomaly", 1.6, 1.0)
    pub.publish_event(make_event(0))
    assert pub.wait_drained(5)

    late = started(Subscriber(broker.port, "edge-monitor/#", persistent=False))
    assert late.wait_for(lambda ms: len(ms) >= 2)
    time.sleep(0.3)
    assert sorted((m.topic, m.retain) for m in late.messages) == [("edge-monitor/node1/fan-1/state", True),
                                                                  ("edge-monitor/node1/status", True)]
    assert late.on("/state")[0].json()["state"] == "anomaly"
    assert late.on("/status")[0].json()["state"] == "online"

    pub.stop()
    later = started(Subscriber(broker.port, "edge-monitor/#", persistent=False))
    assert later.wait_for(lambda ms: len(ms) >= 2)
    assert later.on("/status")[0].json()["state"] == "offline" and later.on("/status")[0].retain


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_last_will_says_offline_after_kill_9(broker, started, tmp_path, protocol):
    sub = started(Subscriber(broker.port, "edge-monitor/+/status", protocol=protocol))
    proc = spawn_publisher(broker.port, tmp_path / "outbox.sqlite", "--protocol", protocol, "--events", "1")
    try:
        assert sub.wait_for(lambda ms: any(m.json()["state"] == "online" for m in ms))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert sub.wait_for(lambda ms: ms[-1].json()["state"] == "offline", timeout=10), broker.log()
    finally:
        proc.kill()
        proc.wait()
    will = sub.messages[-1].json()
    assert (will["reason"], will["node"], will["version"]) == ("connection lost", "node1", "test")
    late = started(Subscriber(broker.port, "edge-monitor/+/status", persistent=False))
    assert late.wait_for(lambda ms: ms and ms[0].retain and ms[0].json()["state"] == "offline")


# -- durability ------------------------------------------------------------------------------------------
def test_broker_down_30_s_every_event_arrives_once_in_order(broker, started, tmp_path):
    sub = started(Subscriber(broker.port, "edge-monitor/+/+/event"))
    pub = started(Publisher(settings(broker.port, tmp_path), "node1", monitors=MONITORS, version="1"))
    sent, slowest = [], 0.0

    def produce(count: int, pause: float) -> None:
        nonlocal slowest
        for _ in range(count):
            event = make_event(len(sent))
            begin = time.perf_counter()
            pub.publish_event(event)
            slowest = max(slowest, time.perf_counter() - begin)
            sent.append(event.event_id)
            time.sleep(pause)

    with capture_logs() as logs:
        produce(10, 0.01)
        assert sub.wait_for(lambda ms: len(ms) >= 10)
        broker.stop()
        outage = time.monotonic()
        produce(120, 0.25)  # 30 s at 4 events/s
        assert pub.stats()["connected"] is False and pub.stats()["queued"] >= 100
        # paho holds no copy beyond the in-flight window (white-box: paho's own queue)
        assert len(pub._client._out_messages) <= pub.max_inflight + 1
        assert time.monotonic() - outage >= 30
        broker.start()
        produce(10, 0.01)
        assert pub.wait_drained(30)
        assert sub.wait_for(lambda ms: len(unique_events(sub)) >= len(sent), timeout=30)
    got = unique_events(sub)
    assert [e["event_id"] for e in got] == sent  # exactly once after de-duplication, in order
    assert [e["seq"] for e in got] == list(range(1, len(sent) + 1))
    assert all(validate(e) == [] for e in got)
    assert pub.stats()["dropped"] == {"telemetry": 0, "state": 0, "event": 0}
    assert slowest < 0.5, f"publish_event blocked for {slowest:.3f} s"
    names = [entry["event"] for entry in logs]
    assert names.count("mqtt connection lost; retrying with backoff") == 1
    # the first failed retry (refused; maybe a reset before, while mosquitto shuts down), not one per retry
    assert names.count("mqtt cannot connect; retrying with backoff") in (1, 2)
    assert names.count("mqtt reconnected") == 1


def test_restarted_process_drains_its_outbox_and_seq_continues(tmp_path, started):
    port = free_port()  # nothing listens yet
    outbox = tmp_path / "outbox.sqlite"
    proc = spawn_publisher(port, outbox, "--events", "30")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    box = Outbox(outbox, 100)
    assert box.counts() == {"telemetry": 1, "state": 1, "event": 30} and box.seq == 30
    box.close()

    broker = Broker(tmp_path / "broker", port=port).start()
    try:
        sub = started(Subscriber(port, "edge-monitor/#"))
        pub = started(Publisher(settings(port, tmp_path), "node1", monitors=MONITORS, version="1"))
        assert pub.wait_drained(10)
        pub.publish_event(make_event(30))
        assert sub.wait_for(lambda ms: len(unique_events(sub)) == 31)
        got = unique_events(sub)
        assert [e["event_id"] for e in got] == [make_event(n).event_id for n in range(31)]
        assert [e["seq"] for e in got] == list(range(1, 32))
        assert sub.on("/state")[0].json()["state"] == "anomaly" and len(sub.on("/telemetry")) == 1
        with pytest.raises(UserError, match="in use by another edge-monitor process"):
            Outbox(outbox, 100)
    finally:
        broker.kill()


def test_outbox_full_drops_telemetry_then_superseded_states_then_events(tmp_path):
    box = Outbox(tmp_path / "o.sqlite", max_messages=5)
    put = {"T": lambda: box.put("telemetry", "n/m/telemetry", b"t", 0, False),
           "S": lambda: box.put("state", "n/m/state", b"s", 1, True),
           "E": lambda: box.put_event("n/m/event", lambda seq: str(seq).encode())[1]}
    assert [put[k]() for k in "TSETS"] == [[], [], [], [], []]
    assert put["E"]() == ["telemetry"]
    assert put["E"]() == ["telemetry"]
    assert put["E"]() == ["state"]       # the older state of the topic, superseded by the newer one
    assert put["E"]() == ["event"]       # only events and the latest state left: the oldest event goes
    assert put["T"]() == ["telemetry"]   # new telemetry never pushes out an event: it goes itself
    rows = box.after(0, 100)
    assert [(r.kind, r.payload) for r in rows] == [("state", b"s"), ("event", b"2"), ("event", b"3"),
                                                   ("event", b"4"), ("event", b"5")]
    box.close()
    box = Outbox(tmp_path / "o.sqlite", max_messages=5)  # counters and seq persist
    assert box.dropped() == {"telemetry": 3, "state": 1, "event": 1} and box.seq == 5
    box.close()


def test_publisher_with_full_outbox_counts_logs_and_reports_losses(tmp_path, started):
    port = free_port()
    pub = started(Publisher(settings(port, tmp_path, outbox=OutboxSettings(str(tmp_path / "o.sqlite"), 4)),
                            "node1", monitors=MONITORS, version="1"))
    with capture_logs() as logs:
        pub.publish_telemetry("fan-1", {"n": 1})
        pub.publish_telemetry("fan-1", {"n": 2})
        pub.publish_state("fan-1", "normal", 0.5, 1.0)
        pub.publish_state("fan-1", "anomaly", 1.5, 1.0)
        for n in range(4):
            pub.publish_event(make_event(n))
    assert pub.stats()["dropped"] == {"telemetry": 2, "state": 1, "event": 1}
    full = [e for e in logs if e["event"].startswith("mqtt outbox full")]
    assert len(full) == 1 and full[0]["log_level"] == "warning"  # throttled: one line, then a summary a minute

    broker = Broker(tmp_path / "broker", port=port).start()
    try:
        sub = started(Subscriber(port, "edge-monitor/#"))
        assert pub.wait_drained(10)
        pub.publish_telemetry("fan-1", {"n": 3})
        assert sub.wait_for(lambda ms: any(m.topic.endswith("/telemetry") for m in ms))
        assert [e["seq"] for e in unique_events(sub)] == [2, 3, 4]  # the gap says: event 1 was lost
        assert [m.json()["state"] for m in sub.on("/state")] == ["anomaly"]
        assert sub.on("/telemetry")[0].json()["mqtt"]["dropped"] == {"telemetry": 2, "state": 1, "event": 1}
    finally:
        broker.kill()


def test_start_and_publish_return_at_once_without_a_broker(tmp_path, started):
    begin = time.perf_counter()
    pub = started(Publisher(settings(9, tmp_path, host="192.0.2.1"), "node1", monitors=MONITORS, version="1"))
    for n in range(20):
        pub.publish_event(make_event(n))
    assert time.perf_counter() - begin < 2.0
    assert pub.stats()["queued"] == 20 and pub.stats()["connected"] is False


def test_connection_problem_is_logged_once_not_per_retry(tmp_path, started):
    port = free_port()
    with capture_logs() as logs:
        pub = started(Publisher(settings(port, tmp_path, reconnect_max_seconds=0.3), "node1", monitors=MONITORS,
                                version="1"))
        time.sleep(2.5)  # about ten refused retries
        broker = Broker(tmp_path / "broker", port=port).start()
        try:
            deadline = time.monotonic() + 5
            while not pub.stats()["connected"] and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            broker.kill()
    problems = [e for e in logs if e["event"] == "mqtt cannot connect; retrying with backoff"]
    assert len(problems) == 1 and problems[0]["problem"].startswith(f"TCP: connection to 127.0.0.1:{port} refused")
    assert [e["event"] for e in logs].count("mqtt connected") == 1


# -- TLS, passwords, ACLs -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    root = tmp_path_factory.mktemp("certs")
    return make_certs(root / "good") | {"other_ca": make_certs(root / "other", ca_name="another CA")["ca.crt"]}


@pytest.fixture
def tls_broker(tmp_path, certs):
    b = Broker(tmp_path / "tls-broker", listener=(
        f"allow_anonymous true\ncafile {certs['ca.crt']}\ncertfile {certs['server.crt']}\n"
        f"keyfile {certs['server.key']}\nrequire_certificate true\n")).start()
    yield b
    b.kill()


def test_tls_with_ca_and_client_certificates(tls_broker, certs, started, tmp_path, capsys):
    tls = TlsSettings(ca_file=certs["ca.crt"], cert_file=certs["client.crt"], key_file=certs["client.key"])
    sub = started(Subscriber(tls_broker.port, "edge-monitor/#", host="localhost",
                             tls={"ca_certs": certs["ca.crt"], "certfile": certs["client.crt"],
                                  "keyfile": certs["client.key"]}))
    pub = started(Publisher(settings(tls_broker.port, tmp_path, host="localhost", tls=tls), "node1",
                            monitors=MONITORS, version="1"))
    pub.publish_event(make_event(0))
    assert sub.wait_for(lambda ms: len(sub.events()) == 1)

    url = f"mqtts://localhost:{tls_broker.port}"
    client = ("--cert-file", certs["client.crt"], "--key-file", certs["client.key"])
    rc, out, err = mqtt_test(capsys, "--url", url, "--ca-file", certs["ca.crt"], *client, "--node", "node1")
    assert rc == 0, err
    assert "ok  TLS: TLSv1.3, broker certificate verified and accepted ours" in out
    assert "all checks passed" in out

    rc, out, err = mqtt_test(capsys, "--url", url, "--ca-file", certs["ca.crt"])
    line = one_error(rc, err)
    assert "TLS:" in line and "client certificate" in line

    rc, out, err = mqtt_test(capsys, "--url", url, "--ca-file", certs["other_ca"], *client)
    line = one_error(rc, err)
    assert line.startswith("edge-monitor: error: TLS: the broker's certificate was not accepted")

    # the server certificate names localhost only: 127.0.0.1 fails the host-name check unless insecure
    ip_url = f"mqtts://127.0.0.1:{tls_broker.port}"
    rc, out, err = mqtt_test(capsys, "--url", ip_url, "--ca-file", certs["ca.crt"], *client)
    assert "mismatch" in one_error(rc, err)
    rc, out, err = mqtt_test(capsys, "--url", ip_url, "--ca-file", certs["ca.crt"], *client, "--insecure")
    assert rc == 0 and "host name not checked" in out, err


@pytest.fixture
def password_broker(tmp_path):
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwd), "plc", "s3cret"], check=True, capture_output=True)
    os.chmod(passwd, 0o600)
    b = Broker(tmp_path / "pw-broker", listener=f"allow_anonymous false\npassword_file {passwd}\n").start()
    b.passwd = passwd
    yield b
    b.kill()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_password_right_and_wrong_in_mqtt_test(password_broker, tmp_path, capsys, protocol):
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_text("s3cret\n")
    bad.write_text("guess\n")
    url = f"mqtt://plc@127.0.0.1:{password_broker.port}"
    rc, out, err = mqtt_test(capsys, "--url", url, "--password-file", str(good), "--protocol", protocol)
    assert rc == 0, err
    assert f"ok  MQTT {protocol}: connected as client id 'edge-monitor-" in out and "user 'plc'" in out

    rc, out, err = mqtt_test(capsys, "--url", url, "--password-file", str(bad), "--protocol", protocol)
    line = one_error(rc, err)
    assert "auth: the broker refused the connection of user 'plc': " in line
    assert ("Bad user name or password" in line or "Not authorized" in line) and str(bad) in line

    rc, out, err = mqtt_test(capsys, "--url", f"mqtt://127.0.0.1:{password_broker.port}", "--protocol", protocol)
    assert "anonymous client" in one_error(rc, err)


def test_mqtt_test_with_the_node_config(password_broker, tmp_path, capsys):
    (tmp_path / "password").write_text("s3cret\n")
    bundle = Path(__file__).resolve().parent.parent / "edge_monitor" / "demo" / "fan-id_00"
    (tmp_path / "config.yaml").write_text(
        f"version: 1\nnode: line1-node07\nmonitors:\n  - name: fan-1\n    model: {bundle}\n"
        f"mqtt:\n  enabled: true\n  host: 127.0.0.1\n  port: {password_broker.port}\n  username: plc\n"
        "  password_file: password\n")
    rc, out, err = mqtt_test(capsys, "--config", str(tmp_path / "config.yaml"))
    assert rc == 0, err
    assert "as node 'line1-node07'" in out and "user 'plc'" in out and "edge-monitor/line1-node07/test" in out


def test_wrong_password_publisher_retries_without_crashing(password_broker, started, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("new-password\n")
    with capture_logs() as logs:
        pub = started(Publisher(settings(password_broker.port, tmp_path, username="plc", password_file=str(secret),
                                         reconnect_max_seconds=0.3), "node1", monitors=MONITORS, version="1"))
        pub.publish_event(make_event(0))
        time.sleep(2.0)
        assert pub.stats()["connected"] is False
        refused = [e for e in logs if e["event"] == "mqtt cannot connect; retrying with backoff"]
        assert len(refused) == 1 and refused[0]["log_level"] == "error"
        assert "broker refused the connection: " in refused[0]["problem"] and str(secret) in refused[0]["problem"]
        # the operator fixes the broker's side: the publisher gets in on its next retry and delivers
        subprocess.run(["mosquitto_passwd", "-b", str(password_broker.passwd), "plc", "new-password"], check=True)
        password_broker.reload()
        assert pub.wait_drained(10)
    assert pub.stats()["published"]["event"] == 1


def test_missing_password_source_is_one_line_user_error(tmp_path, monkeypatch):
    monkeypatch.delenv("EDGE_MONITOR_TEST_PW", raising=False)
    for extra, message in (({"password_file": str(tmp_path / "nope")}, "mqtt.password_file .*nope: cannot read it"),
                           ({"password_env": "EDGE_MONITOR_TEST_PW"}, "EDGE_MONITOR_TEST_PW is not set")):
        pub = Publisher(settings(1883, tmp_path, username="plc", **extra), "node1", monitors=MONITORS, version="1")
        with pytest.raises(UserError, match=message) as info:
            pub.start()
        assert "\n" not in str(info.value)
    monkeypatch.setenv("EDGE_MONITOR_TEST_PW", "x")
    pub = Publisher(settings(1883, tmp_path, password_env="EDGE_MONITOR_TEST_PW"), "node1", monitors=MONITORS)
    with pytest.raises(UserError, match="mqtt.username is not"):
        pub.start()


def acl_broker(root: Path, rules: str) -> Broker:
    """A broker whose ACL gives anonymous clients ``rules`` only."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "acl").write_text(rules)
    return Broker(root / "broker", listener=f"allow_anonymous true\nacl_file {root / 'acl'}\n").start()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_acl_refusal_is_named(tmp_path, capsys, protocol):
    broker = acl_broker(tmp_path, "topic read edge-monitor/#\n")
    try:
        rc, _, err = mqtt_test(capsys, "--url", f"mqtt://127.0.0.1:{broker.port}", "--protocol", protocol,
                                 "--node", "n1", "--timeout", "3")
    finally:
        broker.kill()
    line = one_error(rc, err)
    assert "ACL:" in line and "'edge-monitor/n1/test'" in line
    if protocol == "5":
        assert "refused publishing" in line and "Not authorized" in line
    else:
        assert "acknowledged but never delivered" in line


def test_refused_events_are_counted_as_rejected_and_the_rest_flows(tmp_path, started):
    broker = acl_broker(tmp_path, "topic read edge-monitor/#\ntopic write edge-monitor/+/status\n"
                                  "topic write edge-monitor/+/+/state\n")
    try:
        sub = started(Subscriber(broker.port, "edge-monitor/#"))
        pub = started(Publisher(settings(broker.port, tmp_path), "node1", monitors=MONITORS, version="1"))
        with capture_logs() as logs:
            pub.publish_event(make_event(0))  # MQTT 5: PUBACK "Not authorized" (mosquitto 2.0 then drops the link)
            pub.publish_state("fan-1", "normal", 0.1, 1.0)
            assert pub.wait_drained(10)
        assert sub.wait_for(lambda ms: len(sub.on("/state")) == 1)
        assert pub.stats()["rejected"] == 1 and pub.stats()["published"] == {"telemetry": 0, "state": 1, "event": 0}
        assert [e["event"] for e in logs if e["event"].startswith("mqtt broker refused messages")] == [
            "mqtt broker refused messages (deleted, counted as rejected); check the broker's ACL"]
    finally:
        broker.kill()


def test_broker_that_keeps_dropping_the_link_is_reported_once_and_backed_off(tmp_path, started):
    broker = acl_broker(tmp_path, "topic read edge-monitor/#\n")  # even our status is refused: kicked each time
    try:
        with capture_logs() as logs:
            started(Publisher(settings(broker.port, tmp_path, reconnect_max_seconds=1.0), "node1", monitors=MONITORS,
                              version="1"))
            time.sleep(4.0)
        connects = broker.log().count("New client connected")
    finally:
        broker.kill()
    names = [e["event"] for e in logs]
    assert names.count("mqtt connected") == 1 and names.count("mqtt connection lost; retrying with backoff") == 1
    assert names.count("mqtt reconnected") <= 1
    problems = [e["problem"] for e in logs if e["event"] == "mqtt cannot connect; retrying with backoff"]
    assert len(problems) == 1 and "keeps closing the connection" in problems[0]
    assert connects <= 7, f"{connects} connections in 4 s: no backoff"


# -- mqtt-test's first steps; URLs --------------------------------------------------------------------------
def test_mqtt_test_names_tcp_refused_and_dns(capsys):
    port = free_port()
    rc, out, err = mqtt_test(capsys, "--url", f"mqtt://127.0.0.1:{port}")
    assert f"TCP: connection to 127.0.0.1:{port} refused" in one_error(rc, err)
    assert "ok  DNS: 127.0.0.1 is 127.0.0.1" in out
    rc, out, err = mqtt_test(capsys, "--url", "mqtt://no-such-broker.invalid:1883")
    assert one_error(rc, err).startswith("edge-monitor: error: DNS: cannot resolve 'no-such-broker.invalid'")


def test_mqtt_test_passes_against_a_plain_broker(broker, capsys):
    rc, out, err = mqtt_test(capsys, "--url", f"mqtt://127.0.0.1:{broker.port}", "--node", "n1")
    assert rc == 0, err
    assert "delivered back to this client" in out and "edge-monitor/n1/test" in out


def test_mqtt_test_through_the_console_command(broker):
    from edge_monitor.commands import COMMANDS

    if "mqtt-test" not in COMMANDS:
        pytest.skip("mqtt-test is not registered in edge_monitor/cli.py yet")

    def cli(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "edge_monitor", "mqtt-test", *argv], capture_output=True,
                              text=True, timeout=60)

    proc = cli("--url", f"mqtt://127.0.0.1:{broker.port}", "--node", "n1")
    assert proc.returncode == 0 and "all checks passed" in proc.stdout, proc.stderr
    proc = cli("--url", f"mqtt://127.0.0.1:{free_port()}")
    assert "TCP: connection to 127.0.0.1:" in one_error(proc.returncode, proc.stderr)


def test_parse_url():
    s = parse_url("mqtts://plc@broker.plant:8884")
    assert (s.enabled, s.host, s.port, s.username, s.tls) == (True, "broker.plant", 8884, "plc", TlsSettings())
    s = parse_url("mqtt://broker", MqttSettings(prefix="p", tls=TlsSettings(ca_file="ca"), username="u"))
    assert (s.host, s.port, s.tls, s.prefix, s.username) == ("broker", 1883, None, "p", "u")
    # settings built in code check their paths like the config does: relative to the working folder
    assert parse_url("mqtts://h", MqttSettings(tls=TlsSettings(ca_file="ca"))).tls.ca_file == os.path.abspath("ca")
    assert parse_url("mqtts://h").port == 8883
    for bad, message in (("http://h", "scheme"), ("mqtt://u:pw@h", "password"), ("mqtt://h:99999", "out of range"),
                         ("mqtt://h/x", "only mqtt")):
        with pytest.raises(UserError, match=message):
            parse_url(bad)


def test_names_that_break_topics_are_refused(tmp_path):
    with pytest.raises(UserError, match="node 'a/b' cannot be used in an MQTT topic"):
        Publisher(settings(1883, tmp_path), "a/b", monitors=MONITORS)
