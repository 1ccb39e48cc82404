"""The Sparkplug B 3.0 edge node: this node is an Edge Node, each monitor a Device.

Topics (``<g>`` = ``sparkplug.group_id``, ``<n>`` = ``sparkplug.edge_node_id`` or the node's name,
``<d>`` = the monitor's name): ``spBv1.0/<g>/{NBIRTH,NDEATH,NDATA,NCMD}/<n>`` and
``spBv1.0/<g>/{DBIRTH,DDEATH,DDATA}/<n>/<d>``. Payloads: the Sparkplug B protobuf (``payload.py``).

Session (Operational Behavior of the specification):

- Its own MQTT session beside the JSON one (``mqtt:`` host, port, TLS, login; client id
  ``sparkplug.client_id``): clean session, every message QoS 0 and not retained, except the death
  certificate: the Will on ``NDEATH/<n>``, QoS 1, not retained, carrying only ``bdSeq`` (Int64).
- ``bdSeq`` goes up by one (mod 256) before every CONNECT (paho's ``on_pre_connect``, so also on
  paho's own reconnects) and is written to ``<state_dir>/bdseq`` first: it persists across restarts.
- After CONNACK: SUBSCRIBE ``NCMD/<n>`` (and the primary host's STATE topic if one is configured); on
  SUBACK (and, with a primary host, once its STATE says online) NBIRTH (``seq`` 0, ``bdSeq`` as in the
  Will, ``Node Control/Rebirth`` false, node metrics), then one DBIRTH per monitor whose device works,
  then the stored anomaly transitions (DDATA with ``is_historical`` and their original timestamps).
- ``seq`` counts every NBIRTH/DBIRTH/NDATA/DDATA/DDEATH mod 256 (NBIRTH is 0).
- DDATA carries only the metrics that changed (a Double only past ``deadband``), and every changing metric
  each ``heartbeat_seconds``; an anomaly start or end is sent at once. DDEATH when a monitor's device is
  lost, DBIRTH when it is back. NCMD ``Node Control/Rebirth`` = true: NBIRTH (same bdSeq) and every DBIRTH
  again, on the same connection. A primary host going offline: NDEATH, disconnect, connect again (new
  bdSeq) and wait for it. Clean stop: NDEATH (QoS 1), then DISCONNECT.
- Store and forward: an anomaly start/end that cannot go out live (no session, or its device dead) is
  written to a durable SQLite outbox (``node/mqtt/outbox.py``, file ``<state_dir>/history.sqlite``, bound
  ``history_max``) and sent after the next birth.

Never blocks the caller: ``event``/``state``/``telemetry``/``device`` put one item in a bounded queue
(``queue_max``; a full queue drops the item and counts it) and return. One session thread does the rest;
paho has its network thread.
"""

from __future__ import annotations

import json
import math
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import structlog
from paho.mqtt.enums import MQTTErrorCode

from edge_monitor import __version__
from edge_monitor.core.errors import UserError
from edge_monitor.core.events import Event, now_ms
from edge_monitor.node.mqtt.connection import (
    auth_hint,
    connect_async,
    describe_error,
    make_client,
    read_password,
    topic_level,
)
from edge_monitor.node.mqtt.outbox import Outbox
from edge_monitor.node.settings import MqttSettings, SparkplugSettings
from edge_monitor.node.sparkplug.payload import (
    BOOLEAN,
    DOUBLE,
    INT64,
    STRING,
    Metric,
    PayloadError,
    decode,
    encode,
)

log = structlog.get_logger()

NAMESPACE = "spBv1.0"
REBIRTH = "Node Control/Rebirth"
LEVEL_DEADBAND_DB = 0.5
NODE_CHECK_SECONDS = 10.0   # node metrics (outbox depth, drops) are looked at this often; sent if changed
SCORE_DOC = ("Mean reconstruction error (MSE of the standardised log-mel window) of the last decision window; "
             "an anomaly starts when k of n decisions are above Decision/Threshold")

# device metrics: name → (datatype, properties). Every metric a DDATA may carry is in the DBIRTH.
STATE, ACTIVE, LAST_EVENT, SCORE, THRESHOLD = ("State", "Anomaly/Active", "Anomaly/Last Event Id",
                                               "Decision/Score", "Decision/Threshold")
LEVEL, CLIP, DROPS, CONDITIONS = "Health/Level", "Health/Clip Fraction", "Health/Drops", "Health/Conditions"
MACHINE_TYPE, MACHINE_ID, MODEL_SHA = "Machine/Type", "Machine/Id", "Model/SHA256"
DEVICE_METRICS: dict[str, tuple[int, tuple[tuple[str, int, Any], ...]]] = {
    STATE: (STRING, (("Documentation", STRING, "normal | anomaly | stopped | sensor_fault | unknown"),)),
    ACTIVE: (BOOLEAN, (("Documentation", STRING, "true from anomaly_start to anomaly_end"),)),
    LAST_EVENT: (STRING, (("Documentation", STRING, "event_id of the last anomaly_start/anomaly_end (JSON topics)"),)),
    SCORE: (DOUBLE, (("engUnit", STRING, "MSE"), ("Documentation", STRING, SCORE_DOC))),
    THRESHOLD: (DOUBLE, (("engUnit", STRING, "MSE"),
                         ("Documentation", STRING, "Decision/Score above this counts as anomalous"))),
    LEVEL: (DOUBLE, (("engUnit", STRING, "dBFS"), ("Documentation", STRING, "RMS input level"))),
    CLIP: (DOUBLE, (("engUnit", STRING, "fraction"),
                    ("Documentation", STRING, "share of full-scale samples in the health window"))),
    DROPS: (INT64, (("Documentation", STRING, "audio samples lost since the monitor started"),)),
    CONDITIONS: (STRING, (("Documentation", STRING, "bad health conditions, comma separated; empty = healthy"),)),
    MACHINE_TYPE: (STRING, ()),
    MACHINE_ID: (STRING, ()),
    MODEL_SHA: (STRING, ()),
}
CHANGING = (STATE, ACTIVE, SCORE, THRESHOLD, LEVEL, CLIP, DROPS, CONDITIONS)  # what a heartbeat repeats


@dataclass(frozen=True)
class DeviceInfo:
    """What the DBIRTH says about a monitor that never changes while it runs."""

    name: str
    machine_type: str
    machine_id: str
    model_sha256: str
    threshold: float


@dataclass
class _Device:
    info: DeviceInfo
    values: dict[str, Any]
    stamps: dict[str, int]
    sent: dict[str, Any]
    alive: bool = True          # its audio device works
    born: bool = False          # DBIRTH sent in the current session
    last_heartbeat: float = 0.0


class SparkplugNode:
    """See the module docstring. ``outbox_depth`` reports the JSON publisher's queue (node metric)."""

    def __init__(self, settings: SparkplugSettings, mqtt: MqttSettings, node: str, devices: list[DeviceInfo], *,
                 outbox_depth: Callable[[], int] | None = None, version: str = __version__) -> None:
        self.settings = settings
        self.mqtt = mqtt
        self.group = topic_level(settings.group_id, "sparkplug.group_id")
        self.edge_node = topic_level(settings.edge_node_id or node, "sparkplug.edge_node_id")
        self.client_id = settings.client_id or f"edge-monitor-{node}-spb"
        self.version = version
        self.outbox_depth = outbox_depth
        self.devices = {d.name: _Device(d, self._initial(d), {}, {}) for d in devices}
        for name in self.devices:
            topic_level(name, "monitor")
        base = f"{NAMESPACE}/{self.group}"
        self.topic_ncmd = f"{base}/NCMD/{self.edge_node}"
        self.topic_nbirth = f"{base}/NBIRTH/{self.edge_node}"
        self.topic_ndeath = f"{base}/NDEATH/{self.edge_node}"
        self.topic_ndata = f"{base}/NDATA/{self.edge_node}"
        self.host_topic = None
        if settings.primary_host_id:
            host = topic_level(settings.primary_host_id, "sparkplug.primary_host_id")
            self.host_topic = f"{NAMESPACE}/STATE/{host}" if settings.host_state == "3.0" else f"STATE/{host}"
        self.state_dir = Path(settings.state_dir)
        self._bdseq_file = self.state_dir / "bdseq"
        self._bdseq: int | None = None
        self._queue: queue.Queue = queue.Queue(settings.queue_max)
        self._control: list[tuple] = []
        self._control_lock = threading.Lock()
        self._client: paho.Client | None = None
        self._history: Outbox | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        # session state: the session thread's own
        self._seq = 0
        self._born = False
        self._subscribed = False
        self._host_online = self.host_topic is None
        self._host_stamp = -1
        self._node_sent: dict[str, Any] = {}
        self._last_node_heartbeat = self._last_node_check = 0.0
        # counters (read by stats() from any thread)
        self.dropped = 0
        self.published: dict[str, int] = {}
        self.bad_commands = 0
        # link logging (paho's thread)
        self._connected = False
        self._problem: str | None = None
        self._ever = False

    @staticmethod
    def _initial(d: DeviceInfo) -> dict[str, Any]:
        return {STATE: "unknown", ACTIVE: False, LAST_EVENT: "", SCORE: None, THRESHOLD: d.threshold, LEVEL: None,
                CLIP: None, DROPS: 0, CONDITIONS: "", MACHINE_TYPE: d.machine_type, MACHINE_ID: d.machine_id,
                MODEL_SHA: d.model_sha256}

    # -- the caller's side (any thread; never blocks) ------------------------------------------
    def _put(self, item: tuple) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1
            if self.dropped in (1, 10, 100) or self.dropped % 1000 == 0:
                log.warning("sparkplug queue full: item dropped", dropped_total=self.dropped,
                            monitor=item[1] if len(item) > 1 and isinstance(item[1], str) else None)

    def event(self, event: Event) -> None:
        self._put(("event", event.monitor, event))

    def state(self, monitor: str, state: str, score: float | None, threshold: float | None) -> None:
        self._put(("state", monitor, state, score, threshold))

    def telemetry(self, monitor: str, values: dict) -> None:
        self._put(("telemetry", monitor, dict(values)))

    def device(self, monitor: str, ok: bool) -> None:
        self._put(("device", monitor, ok))

    def stats(self) -> dict[str, Any]:
        return {"connected": self._connected, "born": self._born, "bdseq": self._bdseq, "dropped": self.dropped,
                "published": dict(self.published), "history": len(self._history) if self._history else 0,
                "bad_commands": self.bad_commands}

    # -- life cycle -----------------------------------------------------------------------------
    def start(self) -> None:
        if self._client is not None:
            raise RuntimeError("SparkplugNode.start() called twice")
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"sparkplug.state_dir {self.state_dir}: cannot create it ({exc.strerror})") from None
        self._bdseq = self._read_bdseq()
        self._history = Outbox(self.state_dir / "history.sqlite", self.settings.history_max)
        password = read_password(self.mqtt)
        client = make_client(self.mqtt, self.client_id, persistent=False, password=password)
        client.reconnect_delay_set(self.mqtt.reconnect_min_seconds,  # type: ignore[arg-type]
                                   max(self.mqtt.reconnect_min_seconds, self.mqtt.reconnect_max_seconds))
        client.on_pre_connect = self._on_pre_connect
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client
        self._thread = threading.Thread(target=self._loop, name="edge-monitor-sparkplug", daemon=True)
        self._thread.start()
        connect_async(client, self.mqtt, persistent=False)
        client.loop_start()
        log.info("sparkplug edge node starting", group_id=self.group, edge_node_id=self.edge_node,
                 devices=list(self.devices), primary_host=self.host_topic, history=len(self._history))

    def stop(self, timeout: float = 1.5) -> None:
        """Drain the queue (within ``timeout``), NDEATH, DISCONNECT."""
        client = self._client
        if client is None:
            return
        deadline = time.monotonic() + timeout
        drain_until = time.monotonic() + timeout / 2
        while not self._queue.empty() and time.monotonic() < drain_until:
            time.sleep(0.02)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(max(0.1, deadline - time.monotonic()))
        if self._connected and self._bdseq is not None:
            info = client.publish(self.topic_ndeath, self._death_payload(self._bdseq), qos=1, retain=False)
            try:
                info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            except (RuntimeError, ValueError):
                pass
        client.disconnect()
        stopper = threading.Thread(target=client.loop_stop, daemon=True)
        stopper.start()
        stopper.join(max(0.5, deadline - time.monotonic()))
        if self._history is not None:
            self._history.close()
        self._client = None
        log.info("sparkplug edge node stopped", published=dict(self.published), dropped=self.dropped)

    # -- bdSeq --------------------------------------------------------------------------------
    def _read_bdseq(self) -> int | None:
        try:
            text = self._bdseq_file.read_text().strip()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise UserError(f"sparkplug.state_dir: cannot read {self._bdseq_file} ({exc.strerror})") from None
        if not text.isdigit() or int(text) > 255:
            log.warning("sparkplug bdseq file unreadable; starting again at 0", file=str(self._bdseq_file))
            return None
        return int(text)

    def _write_bdseq(self, value: int) -> None:
        tmp = self._bdseq_file.with_suffix(".tmp")
        with open(tmp, "w") as f:
            f.write(f"{value}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._bdseq_file)

    def _death_payload(self, bdseq: int) -> bytes:
        return encode([Metric("bdSeq", INT64, bdseq)], timestamp=now_ms(), seq=None)

    # -- paho's thread ----------------------------------------------------------------------
    def _on_pre_connect(self, client: paho.Client, _userdata: Any) -> None:
        bdseq = 0 if self._bdseq is None else (self._bdseq + 1) % 256
        try:
            self._write_bdseq(bdseq)
        except OSError as exc:
            log.error("sparkplug cannot persist bdSeq (a host may see a stale death)", error=str(exc))
        self._bdseq = bdseq
        client.will_set(self.topic_ndeath, self._death_payload(bdseq), qos=1, retain=False)

    def _on_connect(self, client: paho.Client, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            self._report(f"broker refused the Sparkplug session: {reason}{auth_hint(reason, self.mqtt)}", error=True)
            return
        self._connected = True
        self._problem = None
        log.info("sparkplug " + ("reconnected" if self._ever else "connected"), host=self.mqtt.host,
                 port=self.mqtt.port, client_id=self.client_id, bdseq=self._bdseq)
        self._ever = True
        topics = [(self.topic_ncmd, 1)] + ([(self.host_topic, 1)] if self.host_topic else [])
        client.subscribe(topics)

    def _on_subscribe(self, _c: paho.Client, _u: Any, _mid: int, reasons: list, _p: Any) -> None:
        self._control_post(("subscribed",))

    def _on_connect_fail(self, _client: paho.Client, _u: Any) -> None:
        self._report(describe_error(sys.exc_info()[1], self.mqtt.host, self.mqtt.port))

    def _on_disconnect(self, _c: paho.Client, _u: Any, _flags: Any, reason: Any, _p: Any) -> None:
        was, self._connected = self._connected, False
        self._control_post(("down",))
        if was and not self._stop.is_set():
            log.warning("sparkplug connection lost; retrying with backoff", reason=str(reason))

    def _report(self, problem: str, *, error: bool = False) -> None:
        if problem != self._problem:
            self._problem = problem
            (log.error if error else log.warning)("sparkplug cannot connect; retrying with backoff", problem=problem)

    def _on_message(self, _c: paho.Client, _u: Any, message: paho.MQTTMessage) -> None:
        if message.topic == self.host_topic:
            self._host_message(message.payload)
            return
        if message.topic != self.topic_ncmd:
            return
        try:
            decoded = decode(message.payload)
        except PayloadError as exc:
            self._bad_command(f"NCMD ignored: {exc}")
            return
        for m in decoded.metrics:
            if m.name == REBIRTH:
                if m.datatype != BOOLEAN or m.value is None:
                    self._bad_command(f"NCMD ignored: {REBIRTH} must be a Boolean, got datatype {m.datatype}")
                elif m.value:
                    self._control_post(("rebirth",))
            else:
                self._bad_command(f"NCMD ignored: unknown metric {m.name!r} (only {REBIRTH!r} is writable)")

    def _bad_command(self, message: str) -> None:
        self.bad_commands += 1
        log.warning(message, topic=self.topic_ncmd)

    def _host_message(self, payload: bytes) -> None:
        if self.settings.host_state == "legacy":
            text = payload.decode(errors="replace").strip()
            if text not in ("ONLINE", "OFFLINE"):
                log.error("sparkplug primary host STATE ignored: expected ONLINE or OFFLINE", topic=self.host_topic,
                          payload=text[:80])
                return
            self._control_post(("host", text == "ONLINE", 0))
            return
        try:
            data = json.loads(payload)
            online, stamp = data["online"], data.get("timestamp", 0)
            if not isinstance(online, bool) or not isinstance(stamp, int):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            log.error('sparkplug primary host STATE ignored: expected JSON {"online": true|false, "timestamp": ms}',
                      topic=self.host_topic, payload=payload[:80].decode(errors="replace"))
            return
        self._control_post(("host", online, stamp))

    def _control_post(self, item: tuple) -> None:
        with self._control_lock:
            self._control.append(item)
        try:
            self._queue.put_nowait(("wake",))
        except queue.Full:
            pass  # the session thread looks at the control list at least every 0.2 s

    # -- the session thread --------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._queue.get(timeout=0.2)
            except queue.Empty:
                item = None
            try:
                with self._control_lock:
                    control, self._control = self._control, []
                for c in control:
                    self._handle_control(c)
                if item is not None and item[0] != "wake":
                    self._handle(item)
                self._heartbeat()
            except Exception:  # a bug: keep the session alive, say so loudly
                log.exception("sparkplug session thread failed on an item")
                time.sleep(0.5)

    def _handle_control(self, c: tuple) -> None:
        kind = c[0]
        if kind == "down":
            self._born = self._subscribed = False
            for d in self.devices.values():
                d.born = False
            if self.host_topic:
                self._host_online = False
        elif kind == "subscribed":
            self._subscribed = True
            if self._host_online:
                self._birth()
        elif kind == "rebirth" and self._subscribed and self._host_online:
            log.info("sparkplug rebirth requested by NCMD")
            self._birth()
        elif kind == "host":
            _, online, stamp = c
            if stamp and stamp < self._host_stamp:
                return  # an older STATE than one already seen
            self._host_stamp = max(self._host_stamp, stamp)
            was, self._host_online = self._host_online, online
            if online and not was:
                log.info("sparkplug primary host online", topic=self.host_topic)
                if self._subscribed and not self._born:
                    self._birth()
            elif not online and was:
                log.warning("sparkplug primary host offline: NDEATH, reconnecting to wait for it", topic=self.host_topic)
                self._reconnect()

    def _reconnect(self) -> None:
        client = self._client
        if client is None:
            return
        if self._born and self._bdseq is not None:
            info = client.publish(self.topic_ndeath, self._death_payload(self._bdseq), qos=1, retain=False)
            try:
                info.wait_for_publish(1.0)
            except (RuntimeError, ValueError):
                pass
        self._handle_control(("down",))
        client.disconnect()
        client.loop_stop()
        connect_async(client, self.mqtt, persistent=False)
        client.loop_start()

    def _publish(self, kind: str, topic: str, metrics: list[Metric], *, seq: bool = True) -> bool:
        client = self._client
        if client is None:
            return False
        payload = encode(metrics, timestamp=now_ms(), seq=self._seq if seq else None)
        info = client.publish(topic, payload, qos=0, retain=False)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return False
        if seq:
            self._seq = (self._seq + 1) % 256
        self.published[kind] = self.published.get(kind, 0) + 1
        return True

    def _device_topic(self, kind: str, name: str) -> str:
        return f"{NAMESPACE}/{self.group}/{kind}/{self.edge_node}/{name}"

    def _node_values(self) -> dict[str, tuple[int, Any]]:
        depth = self.outbox_depth() if self.outbox_depth is not None else None
        return {
            "Properties/Version": (STRING, self.version),
            "Properties/Monitors": (STRING, ",".join(self.devices)),
            "MQTT/Outbox Depth": (INT64, depth),
            "Sparkplug/Dropped": (INT64, self.dropped),
            "Sparkplug/History Queued": (INT64, len(self._history) if self._history is not None else 0),
        }

    def _birth(self) -> None:
        assert self._bdseq is not None
        self._seq = 0
        self._born = False
        node = self._node_values()
        metrics = [Metric("bdSeq", INT64, self._bdseq), Metric(REBIRTH, BOOLEAN, False)]
        metrics += [Metric(name, dt, value) for name, (dt, value) in node.items()]
        if not self._publish("NBIRTH", self.topic_nbirth, metrics):
            return
        self._born = True
        self._node_sent = {name: value for name, (_dt, value) in node.items()}
        self._last_node_heartbeat = self._last_node_check = time.monotonic()
        for d in self.devices.values():
            d.born = False
            if d.alive:
                self._dbirth(d)
        self._forward_history()

    def _dbirth(self, d: _Device) -> None:
        metrics = [Metric(name, dt, d.values[name], d.stamps.get(name), properties=props)
                   for name, (dt, props) in DEVICE_METRICS.items()]
        if self._publish("DBIRTH", self._device_topic("DBIRTH", d.info.name), metrics):
            d.born = True
            d.sent = dict(d.values)
            d.last_heartbeat = time.monotonic()

    def _forward_history(self) -> None:
        box = self._history
        if box is None or not self._born:
            return
        cursor = 0
        while True:
            rows = box.after(cursor, 100)
            if not rows:
                return
            done, gone = [], []
            for row in rows:
                cursor = row.id
                d = self.devices.get(row.topic)
                if d is None:
                    gone.append(row.id)
                    continue
                if not d.born:
                    continue
                metrics = [Metric(name, DEVICE_METRICS[name][0], value, stamp, is_historical=True)
                           for name, value, stamp in json.loads(row.payload)]
                if self._publish("DDATA", self._device_topic("DDATA", row.topic), metrics):
                    done.append(row.id)
                else:
                    return box.delete(done)
            box.delete(done)
            box.delete(gone, count_as="dropped.unknown_monitor")
            if done:
                log.info("sparkplug historical anomaly transitions sent", count=len(done), left=len(box))

    def _handle(self, item: tuple) -> None:
        kind, name = item[0], item[1]
        d = self.devices.get(name)
        if d is None:
            return
        if kind == "event":
            self._on_event(d, item[2])
        elif kind == "state":
            _, _, state, score, threshold = item
            changes = {STATE: state}
            if threshold is not None:
                changes[THRESHOLD] = float(threshold)
            if score is not None and math.isfinite(score):
                changes[SCORE] = float(score)
            self._update(d, changes, now_ms())
        elif kind == "telemetry":
            v = item[2]
            changes = {STATE: v.get("state", d.values[STATE]), THRESHOLD: v.get("threshold"),
                       LEVEL: v.get("level_dbfs"), CLIP: v.get("clip_fraction"), DROPS: v.get("drops"),
                       CONDITIONS: ",".join(v.get("health") or ())}
            if v.get("score_mean") is not None:
                changes[SCORE] = v["score_mean"]
            self._update(d, {k: val for k, val in changes.items() if val is not None or k in (LEVEL, CLIP)},
                         now_ms())
        elif kind == "device":
            ok = item[2]
            if ok and not d.alive:
                d.alive = True
                if self._born:
                    self._dbirth(d)
                    self._forward_history()
            elif not ok and d.alive:
                d.alive = False
                if self._born and d.born:
                    self._publish("DDEATH", self._device_topic("DDEATH", name), [])
                d.born = False

    def _on_event(self, d: _Device, event: Event) -> None:
        if event.type in ("anomaly_start", "anomaly_end"):
            active = event.type == "anomaly_start"
            changes = {ACTIVE: active, LAST_EVENT: event.event_id, STATE: "anomaly" if active else d.values[STATE]}
            if not active and d.values[STATE] == "anomaly":
                changes[STATE] = "normal"
            if event.score is not None and math.isfinite(event.score):
                changes[SCORE] = float(event.score)
            for k, v in changes.items():
                d.values[k] = v
                d.stamps[k] = event.time_ms
            if self._born and d.born and self._send_ddata(d, list(changes)):
                return
            # no live session for this device: keep the transition for the next birth (store and forward)
            assert self._history is not None
            rows = [[k, v, event.time_ms] for k, v in changes.items()]
            dropped = self._history.put("event", d.info.name, json.dumps(rows).encode(), 0, False)
            if dropped:
                log.warning("sparkplug history full: oldest transition dropped", monitor=d.info.name,
                            dropped_total=self._history.dropped())
        elif event.type == "health" and event.health is not None:
            conditions = [c for c in d.values[CONDITIONS].split(",") if c]
            if event.health.status == "bad" and event.health.condition not in conditions:
                conditions.append(event.health.condition)
            elif event.health.status == "ok" and event.health.condition in conditions:
                conditions.remove(event.health.condition)
            self._update(d, {CONDITIONS: ",".join(conditions)}, event.time_ms)

    def _update(self, d: _Device, changes: dict[str, Any], stamp: int) -> None:
        for k, v in changes.items():
            if d.values.get(k) != v:
                d.values[k] = v
                d.stamps[k] = stamp
        if self._born and d.born:
            self._send_ddata(d, [k for k in CHANGING if self._differs(d, k)])

    def _differs(self, d: _Device, name: str) -> bool:
        new, old = d.values.get(name), d.sent.get(name)
        if DEVICE_METRICS[name][0] != DOUBLE or new is None or old is None:
            return new != old
        limit = LEVEL_DEADBAND_DB if name == LEVEL else self.settings.deadband * (
            1.0 if name == CLIP else max(d.values.get(THRESHOLD) or 0.0, 1e-12))
        if name == CLIP:
            limit = max(limit * 0.01, 1e-6)  # a fraction: 5 % of 1 % clipping
        return abs(new - old) > limit

    def _send_ddata(self, d: _Device, names: list[str]) -> bool:
        if not names:
            return True
        metrics = [Metric(n, DEVICE_METRICS[n][0], d.values[n], d.stamps.get(n)) for n in names]
        if not self._publish("DDATA", self._device_topic("DDATA", d.info.name), metrics):
            return False
        for n in names:
            d.sent[n] = d.values[n]
        return True

    def _heartbeat(self) -> None:
        if not self._born:
            return
        now = time.monotonic()
        every = self.settings.heartbeat_seconds
        for d in self.devices.values():
            if d.born and now - d.last_heartbeat >= every:
                d.last_heartbeat = now
                stamp = now_ms()
                for k in CHANGING:
                    d.stamps[k] = d.stamps.get(k, stamp)
                self._send_ddata(d, [k for k in CHANGING if d.values.get(k) is not None or d.sent.get(k) is not None])
        if now - self._last_node_check >= min(every, NODE_CHECK_SECONDS):
            self._last_node_check = now
            heartbeat = now - self._last_node_heartbeat >= every
            if heartbeat:
                self._last_node_heartbeat = now
            values = self._node_values()
            names = [n for n, (_dt, v) in values.items() if heartbeat or self._node_sent.get(n) != v]
            if names and self._publish("NDATA", self.topic_ndata, [Metric(n, *values[n]) for n in names]):
                for n in names:
                    self._node_sent[n] = values[n][1]
