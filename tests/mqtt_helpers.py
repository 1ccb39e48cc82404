"""Real parts for the MQTT tests and bench: a private mosquitto on loopback, a collecting subscriber, events.

Not a conftest: ``tests/test_mqtt.py``, ``tests/mqtt_publisher_proc.py`` and ``bench/mqtt.py`` import it.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_monitor.core.events import (
    AnomalyInfo,
    Band,
    Event,
    HealthInfo,
    Origin,
    now_ms,
)

# Debian puts the broker in /usr/sbin, which is not on every user's PATH
MOSQUITTO = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """mosquitto with its own config, persistence and log under ``root``; stop/start keep the port."""

    def __init__(self, root: Path, *, listener: str = "", general: str = "", port: int | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.listener = listener
        self.general = general
        self.proc: subprocess.Popen | None = None
        self.conf = self.root / "mosquitto.conf"
        self.logfile = self.root / "mosquitto.log"

    def write_conf(self) -> None:
        user = f"user {getpass.getuser()}\n" if os.geteuid() == 0 else ""
        self.conf.write_text(
            f"{user}persistence true\npersistence_location {self.root}/\nautosave_interval 1\n"
            f"log_dest file {self.logfile}\nlog_type error\nlog_type warning\nlog_type notice\n"
            "log_type information\nmax_queued_messages 0\nmax_inflight_messages 20\n"
            f"{self.general}\nlistener {self.port} 127.0.0.1\n{self.listener or 'allow_anonymous true'}\n")

    def start(self, timeout: float = 10.0) -> Broker:
        self.write_conf()
        assert MOSQUITTO, "mosquitto is not installed"
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited ({self.proc.returncode}): {self.proc.stderr.read().decode()}"
                                   f"{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port}: {self.log()}")

    def stop(self) -> None:
        """SIGTERM: mosquitto saves its persistence (sessions, retained, queued messages) and exits."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def reload(self) -> None:
        """SIGHUP: re-read the config (password file, ACL)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def log(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    qos: int
    at: float

    def json(self) -> Any:
        return json.loads(self.payload)


class Subscriber:
    """A paho client that collects everything on ``topics``; reconnects by itself (persistent session)."""

    def __init__(self, port: int, topics: str | list[str] = "#", *, protocol: str = "5", persistent: bool = True,
                 host: str = "127.0.0.1", tls: dict | None = None, username: str | None = None,
                 password: str | None = None, on_message: Callable[[Received], None] | None = None) -> None:
        self.topics = [topics] if isinstance(topics, str) else topics
        self.messages: list[Received] = []
        self.cond = threading.Condition()
        self.connected = threading.Event()
        self.callback = on_message
        v5 = protocol == "5"
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"test-sub-{uuid.uuid4().hex[:8]}",
                                  protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
                                  clean_session=None if v5 else not persistent)
        if tls:
            self.client.tls_set(**tls)
        if username:
            self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *a: self.connected.clear()
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.reconnect_delay_set(0.2, 0.5)  # type: ignore[arg-type]
        kwargs: dict[str, Any] = {}
        if v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600 if persistent else 0
            kwargs = {"clean_start": not persistent, "properties": props}
        self.client.connect_async(host, port, 30, **kwargs)
        self.client.loop_start()
        if not self.connected.wait(10):
            self.close()
            raise RuntimeError("test subscriber could not connect")

    def _on_connect(self, client: paho.Client, _u: Any, _flags: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            return
        client.subscribe([(topic, 1) for topic in self.topics])

    def _on_subscribe(self, _c: paho.Client, _u: Any, _mid: int, _reasons: list, _p: Any) -> None:
        self.connected.set()  # connected and subscribed

    def _on_message(self, _c: paho.Client, _u: Any, message: paho.MQTTMessage) -> None:
        item = Received(message.topic, message.payload, bool(message.retain), message.qos, time.perf_counter())
        if self.callback:
            self.callback(item)
        with self.cond:
            self.messages.append(item)
            self.cond.notify_all()

    def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate(self.messages):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.cond.wait(remaining)
            return True

    def on(self, suffix: str) -> list[Received]:
        with self.cond:
            return [m for m in self.messages if m.topic.endswith(suffix)]

    def events(self) -> list[dict]:
        return [m.json() for m in self.on("/event")]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def unique_events(subscriber: Subscriber) -> list[dict]:
    """Events in order of first arrival, duplicates (same ``event_id``) removed: what a SCADA client keeps."""
    seen: set[str] = set()
    out = []
    for event in subscriber.events():
        if event["event_id"] not in seen:
            seen.add(event["event_id"])
            out.append(event)
    return out


def make_event(n: int, *, node: str = "node1", monitor: str = "fan-1", cycle: str = "0123456789abcdef") -> Event:
    """Event number ``n`` of a made-up run: anomaly start/update/end and health events in turn, all valid."""
    kind = ("anomaly_start", "anomaly_update", "anomaly_end", "health")[n % 4]
    stamp = now_ms()
    origin = Origin(node=node, monitor=monitor, machine_type="fan", machine_id="id_00", model_name="fan-id_00",
                    model_sha256="ab" * 32, source="test")
    common = dict(id=cycle, seq_in_cycle=n, origin=origin, time_ms=stamp, audio_position_s=0.25 * n)
    if kind == "health":
        return Event(type=kind, **common, health=HealthInfo("clipping", "bad", 0.01, 0.001, "input clips"))
    return Event(type=kind, **common, score=1.5 + n / 1000, threshold=1.0,
                 anomaly=AnomalyInfo(stamp - 1000, 0.0, 1.0, 2.0, 1.5, "recovered" if kind == "anomaly_end" else None),
                 bands=(Band(10, 20, 500.0, 1200.0, 0.6),))


def make_certs(root: Path, *, server_names: str = "DNS:localhost", ca_name: str = "edge-monitor test CA") -> dict:
    """A CA, a server certificate (``server_names`` as subjectAltName) and a client certificate, by openssl."""
    root.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=root, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", f"/CN={ca_name}",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    for name, usage, san in (("server", "serverAuth", f"subjectAltName={server_names}\n"),
                             ("client", "clientAuth", "")):
        (root / f"{name}.ext").write_text(
            f"basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage={usage}\n"
            f"subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n{san}")
        run("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN=edge-monitor-{name}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext")
    return {name: str(root / name) for name in ("ca.crt", "server.crt", "server.key", "client.crt", "client.key")}
