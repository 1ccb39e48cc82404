"""MQTT publisher (paho-mqtt 2.x): retained status and state, QoS 1 events through a durable outbox, telemetry.

Topics (``<prefix>`` is ``mqtt.prefix``, default ``edge-monitor``; all payloads are UTF-8 JSON):

``<prefix>/<node>/status``  — retained, QoS 1.
    ``{"state": "online", "node", "version", "monitors": [{"name", "model", "sha256"}], "started_at", "time"}``
    on every (re)connect. The Last Will replaces it with ``{"state": "offline", "reason": "connection lost", ...}``
    when the process dies or its link breaks (no ``time``: the broker sends it as written at start); a clean
    stop publishes ``{"state": "offline", "reason": "shutdown", "time", ...}`` itself.
``<prefix>/<node>/<monitor>/state``  — retained, QoS 1.
    ``{"state": "normal" | "anomaly" | "stopped" | "sensor_fault" | "unknown", "score", "threshold", "time",
    "time_ms"}`` (``stopped``: the machine is switched off, decisions paused; see ``core/machine.py``)
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
the caller on the network: ``publish_*`` write one SQLite row (a disk sync) and return. They never raise for
storage trouble either (a full, read-only or corrupted disk): see :class:`Publisher` and ``outbox.py``. The
link's state and its log lines live in ``link.py``.
"""

from __future__ import annotations

import collections
import contextlib
import math
import sys
import threading
import time
from collections.abc import Callable
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
from edge_monitor.node.mqtt.link import SHORT_LINK_SECONDS, Link
from edge_monitor.node.mqtt.outbox import KINDS, Outbox, StorageError, StorageState
from edge_monitor.node.settings import MqttSettings

log = structlog.get_logger()

STATES = ("normal", "anomaly", "stopped", "sensor_fault", "unknown")
MAX_INFLIGHT = 20                 # QoS 1 messages handed to paho and not yet acknowledged
__all__ = ["MAX_INFLIGHT", "SHORT_LINK_SECONDS", "STATES", "Publisher", "StorageState"]


class Publisher:
    """Publishes one node's status, states, events and telemetry; see the module docstring.

    Thread-safe: ``publish_*`` may be called from any thread. Internals run on two threads of their own:
    paho's network loop and the outbox pump (which alone hands rows to paho and deletes acknowledged ones).

    Storage: ``publish_*`` never raise for disk trouble. A message the outbox cannot store (disk full,
    read-only, failing) is counted in ``stats()["unqueued"]`` by kind; :meth:`storage` /
    :meth:`storage_problem` say what is wrong, and ``on_storage`` (called from the thread that saw the
    change, outside every lock of the publisher: keep it short) is told each change, ok again included.
    Queuing resumes by itself with the first write that succeeds.
    """

    def __init__(self, settings: MqttSettings, node: str, *, monitors: list[dict], version: str = __version__,
                 max_inflight: int = MAX_INFLIGHT,
                 on_storage: Callable[[StorageState], None] | None = None) -> None:
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
        # link state: written by paho's thread under link.lock, read by the pump under it
        self.link = Link(settings.host, settings.port, retry_max_seconds=settings.reconnect_max_seconds)
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
        self._drop_log = _Throttle(60.0)
        self._reject_log = _Throttle(60.0)
        # storage state: any thread, under _storage_lock
        self.on_storage = on_storage
        self._storage_lock = threading.Lock()
        self._storage = StorageState()
        self._unqueued: collections.Counter = collections.Counter()
        self._unqueued_log = _Throttle(60.0)

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
        self._storage_seen(self._outbox)
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
        if self.link.connected:
            self.wait_drained(max(0.0, timeout * 0.7))
        self._pump_stop = True
        self._wake.set()
        if self._pump is not None:
            self._pump.join()
        self.link.stopping = True
        if self.link.connected:
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

        box = self._box()
        self._store("event", box, lambda: box.put_event(topic, payload)[1])

    def publish_state(self, monitor: str, state: str, score: float | None, threshold: float | None) -> None:
        """Queue a monitor's state (retained, QoS 1) durably."""
        if state not in STATES:
            raise ValueError(f"state {state!r} is not one of {STATES}")
        stamp = now_ms()
        payload = json_bytes({"state": state, "score": json_number(score), "threshold": json_number(threshold),
                         "time": iso_ms(stamp), "time_ms": stamp})
        topic = f"{self.base}/{topic_level(monitor, 'monitor')}/state"
        box = self._box()
        self._store("state", box, lambda: box.put("state", topic, payload, 1, True))

    def publish_telemetry(self, monitor: str, values: dict) -> None:
        """Queue a monitor's telemetry (QoS 0); the outbox figures are added under ``mqtt``."""
        box = self._box()
        stamp = now_ms()
        data = {**plain(values), "time": iso_ms(stamp), "time_ms": stamp,
                "mqtt": {"queued": len(box), "dropped": box.dropped(), "rejected": box.counter("rejected"),
                         "skipped": box.counter("skipped"), "unqueued": self._unqueued_counts(),
                         "storage": self._storage.state}}
        topic = f"{self.base}/{topic_level(monitor, 'monitor')}/telemetry"
        self._store("telemetry", box, lambda: box.put("telemetry", topic, json_bytes(data), 0, False))

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
        broker, MQTT 5 only), ``skipped`` (rows that could never be sent, deleted), ``unqueued`` by kind
        (this process: the disk refused them), ``storage`` (``ok``, ``full``, ``read-only``, ``corrupt``,
        ``error``) and ``seq`` (the last event number)."""
        box = self._outbox
        return {
            "connected": self.link.connected,
            "queued": len(box) if box is not None else 0,
            "inflight": len(self._inflight),
            "published": {kind: self._published[kind] for kind in KINDS},
            "dropped": box.dropped() if box is not None else {kind: 0 for kind in KINDS},
            "rejected": box.counter("rejected") if box is not None else 0,
            "skipped": box.counter("skipped") if box is not None else 0,
            "unqueued": self._unqueued_counts(),
            "storage": self._storage.state,
            "seq": box.seq if box is not None else 0,
        }

    def storage(self) -> StorageState:
        """Whether the outbox can store messages (as of the last write): ``state`` and a one-line ``reason``."""
        return self._storage

    def storage_problem(self) -> str | None:
        """One line saying why messages cannot be queued (disk full, read-only, ...), or None while they can."""
        storage = self._storage
        return None if storage.ok else storage.reason

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

    def _store(self, kind: str, box: Outbox, put: Callable[[], list[str]]) -> None:
        try:
            dropped = put()
        except StorageError:
            with self._storage_lock:
                self._unqueued[kind] += 1
            self._unqueued_log.add(kind, 1)
            self._storage_seen(box)
            if self._unqueued_log.due():
                self._log_unqueued()
            return
        self._storage_seen(box)
        self._queued(dropped)

    def _unqueued_counts(self) -> dict[str, int]:
        with self._storage_lock:
            return {kind: self._unqueued[kind] for kind in KINDS}

    def _log_unqueued(self) -> None:
        log.error("mqtt outbox cannot store messages: not queued, counted", unqueued_now=self._unqueued_log.take(),
                  unqueued_total=self._unqueued_counts(), problem=self._storage.reason)

    def _storage_seen(self, box: Outbox) -> None:
        """Note the outbox's storage state after an operation; log and report each change once."""
        storage = box.storage
        with self._storage_lock:
            if storage == self._storage:
                return
            before, self._storage = self._storage, storage
        if storage.ok:
            log.info("mqtt outbox can store messages again; queuing resumed", was=before.state,
                     unqueued_total=self._unqueued_counts(), outbox=str(box.path))
        else:
            log.error("mqtt outbox storage problem: messages that cannot be stored are counted, not queued",
                      storage=storage.state, problem=storage.reason, outbox=str(box.path))
        if self.on_storage is not None:
            try:
                self.on_storage(storage)
            except Exception:  # the caller's bug must not stop publishing
                log.exception("mqtt on_storage callback failed")

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
            self.link.connect_failed(f"broker refused the connection: {reason}{auth_hint(reason, self.settings)}",
                                     error=True)
            return
        queued = len(self._outbox) if self._outbox is not None else 0
        with self.link.lock:
            client.drop_out_messages()  # unacknowledged copies of the last link: re-sent from the outbox, in order
            # paho ignores the broker's Receive Maximum; keep one slot for the status message
            receive_max = getattr(props, "ReceiveMaximum", 65_535)
            self._window = max(1, min(self.max_inflight, receive_max - 1))
            gen = self.link.up(queued=queued, client_id=self.client_id, protocol=self.settings.protocol,
                               tls=self.settings.tls is not None, session_present=flags.session_present)
            client.publish(self.status_topic, self._status("online"), qos=1, retain=True)
        self._events.append(("up", gen))
        self._wake.set()

    def _on_connect_fail(self, _client: paho.Client, _userdata: Any) -> None:
        # paho calls this inside its `except OSError`, so the exception is at hand
        self.link.connect_failed(describe_error(sys.exc_info()[1], self.settings.host, self.settings.port))

    def _on_disconnect(self, client: paho.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if not self.link.connected and not self.link.stopping and str(reason) == "Keep alive timeout":
            # TCP (and TLS) up, CONNECT sent, no CONNACK within the keepalive: paho closed the socket and retries
            self.link.connect_timeout(self.settings.keepalive)
            return
        delay = self.link.down(str(reason), queued=len(self._outbox) if self._outbox is not None else 0,
                               retry_min_seconds=self.settings.reconnect_min_seconds)
        if delay is not None:
            client.reconnect_delay_set(delay, max(self.settings.reconnect_min_seconds,  # type: ignore[arg-type]
                                                  self.settings.reconnect_max_seconds))

    def _on_publish(self, _client: paho.Client, _userdata: Any, mid: int, reason: Any, _props: Any) -> None:
        # called with paho's message lock held: post and return, never take our locks here
        self._events.append(("ack", self.link.generation, mid, reason))
        self._wake.set()

    # -- internals: the outbox pump -------------------------------------------------------------
    def _pump_loop(self) -> None:
        while not self._pump_stop:
            self._wake.wait(0.5)
            self._wake.clear()
            try:
                self._pump_once()
            except StorageError:  # rows stay in the outbox (sent again later: a duplicate at worst)
                if self._outbox is not None:
                    self._storage_seen(self._outbox)
                time.sleep(0.5)
            except Exception:  # a bug; keep the daemon alive, say so loudly
                log.exception("mqtt outbox pump failed")
                time.sleep(1.0)
            if self._drop_log.due() and self._outbox is not None:
                self._log_drops()
            if self._unqueued_log.due():
                self._log_unqueued()
            if self.link.check_holds() and self._client is not None:
                self._client.reconnect_delay_set(self.settings.reconnect_min_seconds,  # type: ignore[arg-type]
                                                 max(self.settings.reconnect_min_seconds,
                                                     self.settings.reconnect_max_seconds))
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
        self._storage_seen(box)

    def _hand_over(self, box: Outbox, client: paho.Client) -> None:
        while True:
            room = self._window - len(self._inflight)
            if room <= 0 or not self.link.connected or self._pump_gen != self.link.generation:
                return
            rows = box.after(self._cursor, room)
            if not rows:
                return
            written: list[int] = []
            unsendable: list[tuple[int, str]] = []
            with self.link.lock:
                if not self.link.connected or self._pump_gen != self.link.generation:
                    return
                for row in rows:
                    try:
                        info = client.publish(row.topic, row.payload, row.qos, row.retain)
                    except (ValueError, TypeError) as exc:  # paho refuses it: it would block every row behind it
                        unsendable.append((row.id, str(exc)))
                        self._cursor = row.id
                        continue
                    if row.qos == 0:
                        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                            break
                        written.append(row.id)
                    else:  # paho keeps it until PUBACK or the next connect (see _on_connect)
                        self._inflight[(self._pump_gen, info.mid)] = (row.id, row.kind)
                    self._cursor = row.id
                    if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                        break
            if unsendable:
                box.skip(unsendable)
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
