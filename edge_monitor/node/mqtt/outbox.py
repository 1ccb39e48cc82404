"""The durable MQTT outbox: a small SQLite (WAL) queue that survives broker outages and restarts.

Every message that must not be lost (events, state changes) and the telemetry waiting for a link is a
row, written and synced to disk *before* it is handed to the MQTT client, and deleted only when the
broker has acknowledged it. Rows go out in ``id`` order (ids are never reused).

The box is bounded (``max_messages``). When it is full the message that goes is, in this order:
the oldest telemetry, the oldest state superseded by a newer state of the same topic, the oldest
event, and only then the oldest remaining state. Every loss is counted in the database, so the
counters survive restarts, as does the per-node event sequence number ``seq``.

One process at a time: the box is locked (``flock`` on ``<path>.lock``) while open.
Thread-safe: one connection behind one lock.
"""

from __future__ import annotations

import fcntl
import sqlite3
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from edge_monitor.core.errors import UserError

KINDS = ("telemetry", "state", "event")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_kind ON outbox (kind, id);
CREATE INDEX IF NOT EXISTS outbox_topic ON outbox (kind, topic, id);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

# victims when full, best first (the row just inserted is a candidate like any other)
_VICTIMS = (
    "SELECT id, kind FROM outbox WHERE kind = 'telemetry' ORDER BY id LIMIT 1",
    ("SELECT o.id, o.kind FROM outbox o WHERE o.kind = 'state' AND EXISTS "
     "(SELECT 1 FROM outbox n WHERE n.kind = 'state' AND n.topic = o.topic AND n.id > o.id) ORDER BY o.id LIMIT 1"),
    "SELECT id, kind FROM outbox WHERE kind = 'event' ORDER BY id LIMIT 1",
    "SELECT id, kind FROM outbox ORDER BY id LIMIT 1",
)


@dataclass(frozen=True)
class Row:
    id: int
    kind: str
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Outbox:
    """A bounded, persistent FIFO of MQTT messages. ``path`` is created (with its folder) if missing."""

    def __init__(self, path: str | Path, max_messages: int) -> None:
        if max_messages < 1:
            raise UserError(f"mqtt.outbox.max_messages must be at least 1, got {max_messages}")
        self.path = Path(path)
        self.max_messages = max_messages
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lockfile = open(f"{self.path}.lock", "a")  # noqa: SIM115 (held while open)
        except OSError as exc:
            raise UserError(f"mqtt.outbox.path {self.path}: cannot create it ({exc.strerror})") from None
        try:
            fcntl.flock(self._lockfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lockfile.close()
            raise UserError(f"mqtt.outbox.path {self.path} is in use by another edge-monitor process; "
                            "give each process its own outbox") from None
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # a row is on disk when put() returns
            self._db.executescript(_SCHEMA)
            self._count = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
            self._counters = dict(self._db.execute("SELECT name, value FROM counters"))
        except sqlite3.DatabaseError as exc:
            self._lockfile.close()
            raise UserError(f"mqtt.outbox.path {self.path}: not a usable SQLite database ({exc}); "
                            "move it away to start with an empty outbox") from None

    # -- writing ---------------------------------------------------------------------------------
    def put(self, kind: str, topic: str, payload: bytes, qos: int, retain: bool) -> list[str]:
        """Store one message; returns the kinds of the messages dropped to make room (usually none)."""
        return self._put(kind, topic, lambda _seq: payload, qos, retain)[1]

    def put_event(self, topic: str, payload: Callable[[int], bytes]) -> tuple[int, list[str]]:
        """Store an event built by ``payload(seq)`` with the next per-node ``seq``; returns (seq, dropped kinds)."""
        return self._put("event", topic, payload, 1, False)

    def _put(self, kind: str, topic: str, build: Callable[[int], bytes], qos: int,
             retain: bool) -> tuple[int, list[str]]:
        if kind not in KINDS:
            raise ValueError(f"unknown outbox kind {kind!r}")
        with self._lock:
            counters = dict(self._counters)
            seq = counters.get("seq", 0) + (kind == "event")
            counters["seq"] = seq
            payload = build(seq)
            count = self._count
            dropped: list[str] = []
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("INSERT INTO outbox (kind, topic, payload, qos, retain) VALUES (?, ?, ?, ?, ?)",
                                 (kind, topic, payload, qos, int(retain)))
                count += 1
                while count > self.max_messages:
                    victim_id, victim_kind = self._victim()
                    self._db.execute("DELETE FROM outbox WHERE id = ?", (victim_id,))
                    count -= 1
                    dropped.append(victim_kind)
                    counters[f"dropped.{victim_kind}"] = counters.get(f"dropped.{victim_kind}", 0) + 1
                self._write_counters(counters)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._counters, self._count = counters, count
            return seq, dropped

    def _victim(self) -> tuple[int, str]:
        for query in _VICTIMS:
            row = self._db.execute(query).fetchone()
            if row:
                return row
        raise AssertionError("outbox over its bound but empty")

    def _write_counters(self, counters: dict[str, int]) -> None:
        changed = [(k, v) for k, v in counters.items() if self._counters.get(k) != v]
        if changed:
            self._db.executemany("INSERT INTO counters (name, value) VALUES (?, ?) "
                                 "ON CONFLICT (name) DO UPDATE SET value = excluded.value", changed)

    def delete(self, ids: Iterable[int], *, count_as: str | None = None) -> None:
        """Remove delivered rows (one transaction). ``count_as`` names a loss counter to add them to."""
        ids = list(ids)
        if not ids:
            return
        with self._lock:
            counters = dict(self._counters)
            self._db.execute("BEGIN IMMEDIATE")
            try:
                removed = 0
                for start in range(0, len(ids), 500):
                    chunk = ids[start:start + 500]
                    cursor = self._db.execute(f"DELETE FROM outbox WHERE id IN ({','.join('?' * len(chunk))})",
                                              chunk)
                    removed += cursor.rowcount
                if count_as:
                    counters[count_as] = counters.get(count_as, 0) + removed
                self._write_counters(counters)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._counters = counters
            self._count -= removed

    # -- reading ---------------------------------------------------------------------------------
    def after(self, row_id: int, limit: int) -> list[Row]:
        """Up to ``limit`` rows with an id above ``row_id``, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT id, kind, topic, payload, qos, retain FROM outbox WHERE id > ? "
                                    "ORDER BY id LIMIT ?", (row_id, limit)).fetchall()
        return [Row(r[0], r[1], r[2], bytes(r[3]), r[4], bool(r[5])) for r in rows]

    def __len__(self) -> int:
        return self._count

    def counts(self) -> dict[str, int]:
        """Queued rows by kind."""
        with self._lock:
            found = dict(self._db.execute("SELECT kind, COUNT(*) FROM outbox GROUP BY kind"))
        return {kind: found.get(kind, 0) for kind in KINDS}

    def dropped(self) -> dict[str, int]:
        """Messages lost because the box was full, by kind, since the box was created."""
        return {kind: self._counters.get(f"dropped.{kind}", 0) for kind in KINDS}

    def counter(self, name: str) -> int:
        return self._counters.get(name, 0)

    @property
    def seq(self) -> int:
        """The last event sequence number handed out (0 before the first event)."""
        return self._counters.get("seq", 0)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None  # type: ignore[assignment]
                fcntl.flock(self._lockfile, fcntl.LOCK_UN)
                self._lockfile.close()

