"""MQTT publisher (paho-mqtt 2.x): retained status and state, QoS 1 events through a durable outbox, telemetry.

Topics (``<prefix>`` is ``mqtt.prefix``, default ``edge-monitor``; all payloads are UTF-8 JSON):

``<prefix>/<node>/status``  — retained, QoS 1.
    ``{"state": "online", "node", "version", "monitors": [{"name", "model", "sha256"}], "started_at", "time"}``
    on every (re)connect. The Last Will replaces it with ``{"state": "offline", "reason": "connection lost", ...}``
    when the process dies or its link breaks (no ``time``: the broker sends it as written at start); a clean
    stop publishes ``{"state": "offline", "reason": "shutdown", "time", ...}`` itself.
``<prefix>/<node>/<monitor>/state``  — retained, QoS 1.
    ``{"state": "normal" | "anomaly" | "sensor_fault" | "unknown", "score", "threshold", "time", "time_ms"}``
    on every change, so a late subscriber sees the current state at once. **A state is meaningful only
    while the node's status is online**: while it is offline the retained state is what the monitor said
    before it went away, not what the machine does now.
``<prefix>/<node>/<monitor>/event``  — QoS 1, not retained.
    Every pipeline event (``Event.to_dict()``, see ``events.py``) plus ``seq``: a per-node number, one
    more for each event, also across restarts. QoS 1 delivers at least once, so subscribers de-duplicate
    by ``event_id``; a gap in ``seq`` means events were lost (outbox full, counted and logged).
``<prefix>/<node>/<monitor>/telemetry``  — QoS 0, not retained, every ``mqtt.telemetry_seconds`` (the
    daemon calls :meth:`Publisher.publish_telemetry` at that interval): the daemon's figures plus
    ``time``, ``time_ms`` and ``mqtt``: ``{"queued", "dropped": {"telemetry", "state", "event"}, "rejected"}``.
``<prefix>/<node>/test``  — written by ``edge-monitor mqtt-test`` only.

Delivery. Events, states and telemetry are written to a SQLite outbox (``outbox.py``) before paho sees
them, and leave it only on the broker's PUBACK (telemetry: once written to the socket). The outbox is
drained in order, at most ``MAX_INFLIGHT`` messages in flight; paho holds nothing else, and on every
reconnect its unacknowledged copies are dropped and re-sent from the outbox, oldest first. So an event
survives a broker outage, a network outage and a restart of this process; duplicates are possible after
a reconnect or a crash between PUBACK and delete. The connection retries forever with backoff
(``reconnect_min_seconds`` doubling up to ``reconnect_max_seconds``); each change of the link
(connected, lost, a new reason for failing) is logged once, never once per retry. Nothing here blocks
the caller on the network: ``publish_*`` write one SQLite row (a disk sync) and return.
"""

from __future__ import annotations

import collections
import contextlib
import math
import sys
import threading
import time
from typing import Any

import paho.mqtt.client as paho
import structlog
from paho.mqtt.enums import MQTTErrorCode

from edge_monitor import __version__
from edge_monitor.core.events import Event, iso_ms, now_ms
from edge_monitor.node.mqtt.connection import (
    auth_hint,
    connect_async,
    describe_error,
    json_bytes,
    json_number,
    make_client,
    plain,
    read_password,
    topic_level,
)
from edge_monitor.node.mqtt.outbox import KINDS, Outbox
from edge_monitor.node.settings import MqttSettings

log = structlog.get_logger()

STATES = ("normal", "anomaly", "sensor_fault", "unknown")
MAX_INFLIGHT = 20                 # QoS 1 messages handed to paho and not yet acknowledged
SHORT_LINK_SECONDS = 10.0         # two links in a row shorter than this: the broker keeps kicking us (see below)


class Publisher:
    """Publishes one node's status, states, events and telemetry; see the module docstring.

    Thread-safe: ``publish_*`` may be called from any thread. Internals run on two threads of their own:
    paho's network loop and the outbox pump (which alone hands rows to paho and deletes acknowledged ones).
    """

    def __init__(self, settings: MqttSettings, node: str, *, monitors: list[dict], version: str = __version__,
                 max_inflight: int = MAX_INFLIGHT) -> None:
        self.settings = settings
        self.node = topic_level(node, "node")
        self.base = f"{topic_level(settings.prefix.strip('/'), 'mqtt.prefix', slash_ok=True)}/{self.node}"
        self.status_topic = f"{self.base}/status"
        self.client_id = settings.client_id or f"edge-monitor-{self.node}"
        self.monitors = [dict(m) for m in monitors]
        self.version = version
        self.max_inflight = max_inflight
        self._window = max_inflight  # max_inflight, or less if the broker's Receive Maximum (MQTT 5) is lower
        self.started_ms = now_ms()
        self._client: paho.Client | None = None
        self._outbox: Outbox | None = None
        # link state: written by paho's thread under _link_lock, read by the pump under it
        self._link_lock = threading.Lock()
        self._connected = False
        self._gen = 0
        self._stopping = False
        # pump state: touched by the pump thread only (callbacks post to _events)
        self._events: collections.deque = collections.deque()
        self._wake = threading.Event()
        self._inflight: dict[tuple[int, int], tuple[int, str]] = {}
        self._cursor = 0
        self._pump_gen = -1
        self._pump: threading.Thread | None = None
        self._pump_stop = False
        self._round = threading.Condition()
        self._published: collections.Counter = collections.Counter()
        # logging state (paho's thread)
        self._ever_connected = False
        self._connected_at = 0.0
        self._short_links = 0
        self._down_since: float | None = None
        self._problem: str | None = None
        self._drop_log = _Throttle(60.0)
        self._reject_log = _Throttle(60.0)

    # -- life cycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Open the outbox, start connecting in the background and return at once."""
        if self._client is not None:
            raise RuntimeError("Publisher.start() called twice")
        password = read_password(self.settings)
        client = make_client(self.settings, self.client_id, persistent=True, password=password)
        client.will_set(self.status_topic, self._status("offline", reason="connection lost"), qos=1, retain=True)
        client.max_inflight_messages_set(self.max_inflight + 10)  # never queue inside paho: we cap below this
        client.max_queued_messages_set(0)
        # paho's signature says int; it takes float seconds, which the tests use to go fast
        client.reconnect_delay_set(self.settings.reconnect_min_seconds,  # type: ignore[arg-type]
                                   max(self.settings.reconnect_min_seconds, self.settings.reconnect_max_seconds))
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self._outbox = Outbox(self.settings.outbox.path, self.settings.outbox.max_messages)
        if len(self._outbox):
            log.info("mqtt outbox holds messages from before; they go first", queued=len(self._outbox),
                     outbox=str(self._outbox.path))
        self._client = client
        self._pump = threading.Thread(target=self._pump_loop, name="edge-monitor-mqtt-outbox", daemon=True)
        self._pump.start()
        connect_async(client, self.settings, persistent=True)
        client.loop_start()

    def stop(self, timeout: float = 1.5) -> None:
        """Flush what the link allows within ``timeout``, publish ``offline``, disconnect; the outbox keeps the rest."""
        client, outbox = self._client, self._outbox
        if client is None or outbox is None:
            return
        deadline = time.monotonic() + timeout
        if self._connected:
            self.wait_drained(max(0.0, timeout * 0.7))
        self._pump_stop = True
        self._wake.set()
        if self._pump is not None:
            self._pump.join()
        self._stopping = True
        if self._connected:
            info = client.publish(self.status_topic, self._status("offline", reason="shutdown"), qos=1, retain=True)
            if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                with contextlib.suppress(RuntimeError, ValueError):
                    info.wait_for_publish(max(0.1, deadline - time.monotonic()))
        client.disconnect()
        # paho joins its thread, which may sit in a TCP connect to an unreachable host: wait only so long
        stopper = threading.Thread(target=client.loop_stop, name="edge-monitor-mqtt-stop", daemon=True)
        stopper.start()
        stopper.join(max(0.5, deadline - time.monotonic()))
        queued = len(outbox)
        outbox.close()
        self._client = self._outbox = None
        log.info("mqtt stopped", queued=queued, published=dict(self._published))

    # -- publishing ------------------------------------------------------------------------------
    def publish_event(self, event: Event) -> None:
        """Queue one event (QoS 1) durably; it carries the next per-node ``seq``."""
        topic = f"{self.base}/{topic_level(event.monitor, 'monitor')}/event"

        def payload(seq: int) -> bytes:
            return json_bytes({**event.to_dict(), "seq": seq})

        _, dropped = self._box().put_event(topic, payload)
        self._queued(dropped)

    def publish_state(self, monitor: str, state: str, score: float | None, threshold: float | None) -> None:
        """Queue a monitor's state (retained, QoS 1) durably."""
        if state not in STATES:
            raise ValueError(f"state {state!r} is not one of {STATES}")
        stamp = now_ms()
        payload = json_bytes({"state": state, "score": json_number(score), "threshold": json_number(threshold),
                         "time": iso_ms(stamp), "time_ms": stamp})
        self._queued(self._box().put("state", f"{self.base}/{topic_level(monitor, 'monitor')}/state", payload, 1, True))

    def publish_telemetry(self, monitor: str, values: dict) -> None:
        """Queue a monitor's telemetry (QoS 0); the outbox figures are added under ``mqtt``."""
        box = self._box()
        stamp = now_ms()
        data = {**plain(values), "time": iso_ms(stamp), "time_ms": stamp,
                "mqtt": {"queued": len(box), "dropped": box.dropped(), "rejected": box.counter("rejected")}}
        self._queued(box.put("telemetry", f"{self.base}/{topic_level(monitor, 'monitor')}/telemetry", json_bytes(data), 0, False))

    def announce(self, monitors: list[dict]) -> None:
        """The node's monitors changed (a reload): the retained ``online`` status now lists these."""
        with self._link_lock:
            self.monitors = [dict(m) for m in monitors]
            if self._connected and self._client is not None:
                self._client.publish(self.status_topic, self._status("online"), qos=1, retain=True)

    # -- looking -----------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """``connected``, ``queued`` (rows in the outbox), ``inflight``, ``published`` / ``dropped`` by kind
        (published: this process; dropped: since the outbox was created), ``rejected`` (refused by the
        broker, MQTT 5 only) and ``seq`` (the last event number)."""
        box = self._outbox
        return {
            "connected": self._connected,
            "queued": len(box) if box is not None else 0,
            "inflight": len(self._inflight),
            "published": {kind: self._published[kind] for kind in KINDS},
            "dropped": box.dropped() if box is not None else {kind: 0 for kind in KINDS},
            "rejected": box.counter("rejected") if box is not None else 0,
            "seq": box.seq if box is not None else 0,
        }

    def wait_drained(self, timeout: float) -> bool:
        """Wait until every queued message has been acknowledged; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._round:
            while True:
                box = self._outbox
                if box is None or (len(box) == 0 and not self._inflight):
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._wake.set()
                self._round.wait(min(remaining, 0.2))

    # -- internals: the caller's side -------------------------------------------------------------
    def _box(self) -> Outbox:
        if self._outbox is None:
            raise RuntimeError("Publisher is not started (or already stopped)")
        return self._outbox

    def _queued(self, dropped: list[str]) -> None:
        if dropped:
            counts = collections.Counter(dropped)
            for kind, n in counts.items():
                self._drop_log.add(kind, n)
            if self._drop_log.due():
                self._log_drops()
        self._wake.set()

    def _log_drops(self) -> None:
        box = self._box()
        log.warning("mqtt outbox full: oldest messages dropped", dropped_now=self._drop_log.take(),
                    dropped_total=box.dropped(), max_messages=box.max_messages)

    def _status(self, state: str, *, reason: str | None = None) -> bytes:
        stamp = now_ms()
        data: dict[str, Any] = {"state": state, "node": self.node, "version": self.version}
        if state == "online":
            data["monitors"] = self.monitors
        else:
            data["reason"] = reason
        data["started_at"] = iso_ms(self.started_ms)
        if reason != "connection lost":  # the Will is written at start: a time in it would be a lie
            data["time"] = iso_ms(stamp)
        return json_bytes(data)

    # -- internals: paho's thread ---------------------------------------------------------------
    def _on_connect(self, client: paho.Client, _userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self._short_links = 0
            self._report_problem(f"broker refused the connection: {reason}{auth_hint(reason, self.settings)}",
                                 error=True)
            return
        with self._link_lock:
            client.drop_out_messages()  # unacknowledged copies of the last link: re-sent from the outbox, in order
            # paho ignores the broker's Receive Maximum; keep one slot for the status message
            receive_max = getattr(props, "ReceiveMaximum", 65_535)
            self._window = max(1, min(self.max_inflight, receive_max - 1))
            self._gen += 1
            self._connected = True
            client.publish(self.status_topic, self._status("online"), qos=1, retain=True)
        self._events.append(("up", self._gen))
        self._wake.set()
        queued = len(self._outbox) if self._outbox is not None else 0
        self._connected_at = time.monotonic()
        if self._short_links >= 2:
            pass  # flapping: said once in _on_disconnect, and again when the link holds (_pump_loop)
        elif self._ever_connected:
            log.info("mqtt reconnected", host=self.settings.host, port=self.settings.port, queued=queued,
                     down_seconds=round(time.monotonic() - (self._down_since or time.monotonic()), 1))
        else:
            log.info("mqtt connected", host=self.settings.host, port=self.settings.port, client_id=self.client_id,
                     protocol=self.settings.protocol, tls=self.settings.tls is not None,
                     session_present=flags.session_present, queued=queued)
        self._ever_connected = True
        self._down_since = None
        if self._short_links < 2:
            self._problem = None

    def _on_connect_fail(self, _client: paho.Client, _userdata: Any) -> None:
        self._short_links = 0  # the broker was away: an outage, not a broker that kicks us
        # paho calls this inside its `except OSError`, so the exception is at hand
        self._report_problem(describe_error(sys.exc_info()[1], self.settings.host, self.settings.port))

    def _on_disconnect(self, client: paho.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        with self._link_lock:
            was_connected, self._connected = self._connected, False
        if not was_connected or self._stopping:
            return
        self._down_since = time.monotonic()
        # A broker may close the link right after accepting it (mosquitto 2.0 does so after refusing a publish
        # by ACL): paho would reconnect at once, forever. Two short links in a row, each reconnect accepted at
        # the first try (a failed try resets the count: that is an outage): back off and say it once.
        self._short_links = self._short_links + 1 if time.monotonic() - self._connected_at < SHORT_LINK_SECONDS else 0
        if self._short_links >= 2:
            low, high = self.settings.reconnect_min_seconds, self.settings.reconnect_max_seconds
            delay = min(high, low * 2 ** (self._short_links - 1))
            client.reconnect_delay_set(delay, max(low, high))  # type: ignore[arg-type]
            self._report_problem(f"the broker keeps closing the connection right after accepting it ({reason}); it "
                                 "may refuse a topic we publish (run edge-monitor mqtt-test, check the broker's ACL "
                                 "and log)", error=True)
            return
        self._problem = None
        log.warning("mqtt connection lost; retrying with backoff", host=self.settings.host,
                    port=self.settings.port, reason=str(reason),
                    queued=len(self._outbox) if self._outbox is not None else 0)

    def _on_publish(self, _client: paho.Client, _userdata: Any, mid: int, reason: Any, _props: Any) -> None:
        # called with paho's message lock held: post and return, never take our locks here
        self._events.append(("ack", self._gen, mid, reason))
        self._wake.set()

    def _report_problem(self, problem: str, *, error: bool = False) -> None:
        if problem == self._problem:
            return
        self._problem = problem
        (log.error if error else log.warning)("mqtt cannot connect; retrying with backoff", problem=problem,
                                              retry_max_seconds=self.settings.reconnect_max_seconds)

    # -- internals: the outbox pump -------------------------------------------------------------
    def _pump_loop(self) -> None:
        while not self._pump_stop:
            self._wake.wait(0.5)
            self._wake.clear()
            try:
                self._pump_once()
            except Exception:  # a bug; keep the daemon alive, say so loudly
                log.exception("mqtt outbox pump failed")
                time.sleep(1.0)
            if self._drop_log.due() and self._outbox is not None:
                self._log_drops()
            if (self._short_links >= 2 and self._connected and self._client is not None
                    and time.monotonic() - self._connected_at >= SHORT_LINK_SECONDS):
                self._short_links = 0
                self._problem = None
                self._client.reconnect_delay_set(self.settings.reconnect_min_seconds,  # type: ignore[arg-type]
                                                 max(self.settings.reconnect_min_seconds,
                                                     self.settings.reconnect_max_seconds))
                log.info("mqtt connection holds again", host=self.settings.host, port=self.settings.port)
            with self._round:
                self._round.notify_all()

    def _pump_once(self) -> None:
        box, client = self._outbox, self._client
        if box is None or client is None:
            return
        done: list[tuple[int, str]] = []
        rejected: list[tuple[int, str, str]] = []
        while self._events:
            event = self._events.popleft()
            if event[0] == "up":
                self._inflight.clear()
                self._cursor = 0
                self._pump_gen = event[1]
                continue
            _, gen, mid, reason = event
            entry = self._inflight.pop((gen, mid), None)
            if entry is None:
                continue
            if reason.is_failure:
                rejected.append((*entry, str(reason)))
            else:
                done.append(entry)
        if done:
            box.delete(row_id for row_id, _ in done)
            self._published.update(kind for _, kind in done)
        if rejected:
            box.delete((row_id for row_id, _, _ in rejected), count_as="rejected")
            for _, kind, reason in rejected:
                self._reject_log.add(f"{kind}: {reason}", 1)
        if self._reject_log.due():
            log.error("mqtt broker refused messages (deleted, counted as rejected); check the broker's ACL",
                      refused=self._reject_log.take(), rejected_total=box.counter("rejected"))
        self._hand_over(box, client)

    def _hand_over(self, box: Outbox, client: paho.Client) -> None:
        while True:
            room = self._window - len(self._inflight)
            if room <= 0 or not self._connected or self._pump_gen != self._gen:
                return
            rows = box.after(self._cursor, room)
            if not rows:
                return
            written: list[int] = []
            with self._link_lock:
                if not self._connected or self._pump_gen != self._gen:
                    return
                for row in rows:
                    info = client.publish(row.topic, row.payload, row.qos, row.retain)
                    if row.qos == 0:
                        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                            break
                        written.append(row.id)
                    else:  # paho keeps it until PUBACK or the next connect (see _on_connect)
                        self._inflight[(self._pump_gen, info.mid)] = (row.id, row.kind)
                    self._cursor = row.id
                    if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                        break
            if written:  # QoS 0: gone once handed over on a live link
                box.delete(written)
                self._published["telemetry"] += len(written)
            if len(rows) < room:
                return


class _Throttle:
    """Counts things and says when a summary is due: at once the first time, then at most every ``every`` s."""

    def __init__(self, every: float) -> None:
        self.every = every
        self.last = -math.inf
        self.counts: collections.Counter = collections.Counter()
        self.lock = threading.Lock()

    def add(self, key: str, n: int) -> None:
        with self.lock:
            self.counts[key] += n

    def due(self) -> bool:
        with self.lock:
            return bool(self.counts) and time.monotonic() - self.last >= self.every

    def take(self) -> dict[str, int]:
        with self.lock:
            self.last = time.monotonic()
            counts, self.counts = dict(self.counts), collections.Counter()
            return counts
