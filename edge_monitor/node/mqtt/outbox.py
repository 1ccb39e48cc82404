"""The durable MQTT outbox: a small SQLite (WAL) queue that survives broker outages and restarts.

Every message that must not be lost (events, state changes) and the telemetry waiting for a link is a
row, written and synced to disk *before* it is handed to the MQTT client, and deleted only when the
broker has acknowledged it. Rows go out in ``id`` order (ids are never reused).

The box is bounded (``max_messages``). When it is full the message that goes is, in this order:
the oldest telemetry, the oldest state superseded by a newer state of the same topic, the oldest
event, and only then the oldest remaining state. Every loss is counted in the database, so the
counters survive restarts, as does the per-node event sequence number ``seq``.

Storage trouble never reaches the caller as a database error:

- A full, read-only or failing disk: ``put`` raises :class:`StorageError` (the caller counts what could not
  be queued) and :attr:`Outbox.storage` says why; the next ``put`` tries again, so queuing resumes by
  itself when space returns. An outbox that cannot even be opened (read-only folder) is retried the same way.
- A corrupted database (at open: ``PRAGMA quick_check``; later: SQLITE_CORRUPT on any statement) is moved
  aside to ``<path>.corrupt-<UTC time>`` (kept, with its ``-wal``, for a human) and a new one started.
- A row that cannot be sent (unknown kind, a topic MQTT refuses, a payload that is not bytes) is deleted
  and counted as ``skipped``; it never blocks the rows behind it.
- ``seq`` stays monotonic across a lost outbox: ``<path>.seq`` holds a high-water mark above every ``seq``
  handed out (advanced ``SEQ_STEP`` at a time, written in place and fsynced). A new outbox beside it
  continues above that mark, so the gap tells subscribers that events were lost.

The path must be an outbox or not exist: an existing file that is not one (an empty file, another SQLite
database, any other file) is refused, never turned into a database. The folder is created 0750, the
files 0640 (``statedir.py``).

One process at a time: the database file itself is locked (``flock``; SQLite's own locks are ``fcntl``
locks, which do not interact with it) while open, so no lock file is created anywhere.
Thread-safe: one connection behind one lock.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import structlog

from edge_monitor.core.errors import UserError
from edge_monitor.node.statedir import create_file, ensure_dir, sync_dir

log = structlog.get_logger()

KINDS = ("telemetry", "state", "event")
STORAGE_STATES = ("ok", "full", "read-only", "corrupt", "error")
SEQ_STEP = 1000           # the seq file is rewritten once per this many events
MAX_PAYLOAD = 268_435_455  # MQTT's largest packet
_HEADER = b"SQLite format 3\x00"

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


@dataclass(frozen=True)
class StorageState:
    """Whether the outbox can store messages: ``state`` is one of ``STORAGE_STATES``; ``reason`` one line (None if ok)."""

    state: str = "ok"
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.state == "ok"


class StorageError(Exception):
    """The disk refused a write (full, read-only, failing); nothing was stored. ``storage`` says why."""

    def __init__(self, storage: StorageState) -> None:
        super().__init__(storage.reason)
        self.storage = storage


class _Corrupt(Exception):
    pass


def classify(exc: BaseException, path: Path) -> StorageState | None:
    """The storage state an SQLite or OS error means, or None if it is not a storage problem (a bug)."""
    if isinstance(exc, sqlite3.Error):
        name = getattr(exc, "sqlite_errorname", "") or ""
        text = str(exc)
        if name.startswith("SQLITE_FULL") or "disk is full" in text:
            return StorageState("full", f"the disk holding {path} is full ({text})")
        if name.startswith("SQLITE_READONLY") or "readonly" in text:
            return StorageState("read-only", f"{path} cannot be written ({text})")
        if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or "malformed" in text or "not a database" in text:
            return StorageState("corrupt", f"{path} is corrupted ({text})")
        if name.startswith(("SQLITE_IOERR", "SQLITE_CANTOPEN")) or "I/O error" in text or "unable to open" in text:
            return StorageState("error", f"{path}: the disk failed a read or write ({text})")
        return None
    if isinstance(exc, OSError):
        text = exc.strerror or str(exc)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return StorageState("full", f"the disk holding {path} is full ({text})")
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return StorageState("read-only", f"{path} cannot be written ({text})")
        if exc.errno == errno.EIO:
            return StorageState("error", f"{path}: the disk failed a read or write ({text})")
    return None


def _row_problem(kind: object, topic: object, payload: object, qos: object, retain: object) -> str | None:
    if kind not in KINDS:
        return f"unknown kind {kind!r}"
    if not isinstance(topic, str) or not topic or any(c in topic for c in "+#\0") or len(topic.encode()) > 65_535:
        return f"topic {topic!r} cannot be published"
    if not isinstance(payload, bytes) or len(payload) > MAX_PAYLOAD:
        return f"payload of type {type(payload).__name__} is not a message"
    if type(qos) is not int or qos not in (0, 1):
        return f"qos {qos!r}"
    if type(retain) is not int or retain not in (0, 1):
        return f"retain {retain!r}"
    return None


def _read_only(path: Path) -> sqlite3.Connection:
    """A connection that never writes to ``path`` or beside it: ``immutable`` when no -wal is there (a WAL
    database closed cleanly cannot be opened ``mode=ro`` without its -shm), else ``mode=ro``."""
    mode = "mode=ro" if Path(f"{path}-wal").exists() else "immutable=1"
    return sqlite3.connect(f"{path.resolve().as_uri()}?{mode}", uri=True)


def _tables(path: Path) -> set[str] | None:
    """The tables of an SQLite file, read without writing anything; None if it cannot be read."""
    try:
        db = _read_only(path)
    except sqlite3.Error:
        return None
    try:
        return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error:
        return None
    finally:
        db.close()


def _readable_rows(path: Path, limit: int) -> list[Row]:
    """The sendable rows of a damaged outbox that can still be read, oldest first, until the first unreadable one."""
    rows: list[Row] = []
    try:
        db = _read_only(path)
    except sqlite3.Error:
        return rows
    try:
        for r in db.execute("SELECT id, kind, topic, payload, qos, retain FROM outbox ORDER BY id"):  # row by row
            if type(r[0]) is int and _row_problem(r[1], r[2], r[3], r[4], r[5]) is None:
                rows.append(Row(r[0], r[1], r[2], r[3], r[4], bool(r[5])))
                if len(rows) >= limit:
                    break
    except sqlite3.Error:
        pass  # the rest is behind a damaged page: it stays in the kept file
    finally:
        db.close()
    return rows[:limit]


class Outbox:
    """A bounded, persistent FIFO of MQTT messages. ``path`` is created (with its folder) if missing."""

    def __init__(self, path: str | Path, max_messages: int) -> None:
        if max_messages < 1:
            raise UserError(f"mqtt.outbox.max_messages must be at least 1, got {max_messages}")
        self.path = Path(path)
        self.max_messages = max_messages
        self.seq_path = self.path.with_name(f"{self.path.name}.seq")
        self.quarantined: list[Path] = []   # corrupted outboxes moved aside by this object
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._lockfd: int | None = None
        self._seqfd: int | None = None
        self._seq_mark = 0                   # the high-water mark in the seq file
        self._seq_existed = False
        self._seq_write_failed = False
        self._made: tuple[int, int] | None = None  # (device, inode) of the database file this object created
        self._said_missing = False
        self._salvaged: list[Row] = []   # rows read from a quarantined outbox, for the new one
        self._seq_known = False          # False until a database was opened: its seq is not known yet
        self._lost_unnumbered = 0        # events refused before that: numbered once the seq is known
        self._counters: dict[str, int] = {}
        self._count = 0
        self._last_id = 0                    # ids continue above this in a new database after a quarantine
        self._storage = StorageState()
        self._closed = False
        self._check_path()
        with self._lock:
            try:
                self._open()
            except StorageError:
                pass  # retried by the next put(); self.storage says why

    # -- opening ---------------------------------------------------------------------------------
    def _check_path(self) -> None:
        """Refuse, as a user error, a path that can never be an outbox (a folder, another kind of file)."""
        where = f"mqtt.outbox.path {self.path}"
        if self.path.is_symlink():
            raise UserError(f"{where} is a symbolic link; give the real path of the outbox")
        if self.path.exists() and not self.path.is_file():
            raise UserError(f"{where} exists and is not a file; choose a file name for the outbox")
        try:
            ensure_dir(self.path.parent)
        except OSError as exc:
            if classify(exc, self.path) is None or exc.errno in (errno.EACCES, errno.EPERM):
                raise UserError(f"{where}: cannot create its folder ({exc.strerror})") from None
            return  # a read-only or full disk: retried by put()
        if not self.path.exists():
            return
        try:
            with open(self.path, "rb") as f:
                head = f.read(len(_HEADER))
        except OSError as exc:
            raise UserError(f"{where}: cannot read it ({exc.strerror})") from None
        if self.seq_path.exists():
            return  # ours, whatever is in it now (a lost or corrupted outbox is moved aside and kept)
        if head == _HEADER:
            tables = _tables(self.path)
            if tables is None or not tables - {"outbox", "counters", "sqlite_sequence"}:
                return  # ours (an outbox of a version without the seq file), or unreadable: moved aside
            raise UserError(f"{where} is an SQLite database but not an edge-monitor outbox (tables: "
                            f"{', '.join(sorted(tables))}); point mqtt.outbox.path at a new file name")
        what = "an empty file" if not head else "not an SQLite database"
        raise UserError(f"{where} exists and is not an edge-monitor outbox ({what}); "
                        "point mqtt.outbox.path at a new file name (the outbox creates it)")

    def _open(self) -> None:
        """Open (or create) the database; raises StorageError on disk trouble. Called with the lock held."""
        try:
            self._open_seq_file()
            existed = self.path.exists()
            if existed and self._made is not None:  # the empty file this object made on a try that failed
                st = self.path.stat()
                existed = (st.st_dev, st.st_ino) != self._made
            try:
                self._lockfd = create_file(self.path)
            except OSError as exc:
                if exc.errno != errno.EROFS or not self.path.exists():
                    raise
                self._lockfd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            self._lock_exclusively()
            if not existed:
                st = os.fstat(self._lockfd)
                self._made = (st.st_dev, st.st_ino)
            if not existed and self._seq_existed and not self._counters and not self._said_missing:
                self._said_missing = True
                log.warning("mqtt outbox missing: a new one started; seq continues above the last one handed out",
                            outbox=str(self.path), seq_above=self._seq_mark)
            try:
                self._connect(existed=existed)
            except _Corrupt as exc:
                self._quarantine(str(exc), at_start=not self._counters)
                self._connect(existed=False)
        except (sqlite3.Error, OSError) as exc:
            self._close_db()
            storage = classify(exc, self.path)
            if storage is None:
                raise
            if storage.state == "corrupt":  # corrupt again right after a quarantine: the disk itself fails
                storage = StorageState("error", storage.reason)
            self._set_storage(storage)
            raise StorageError(storage) from None
        self._set_storage(StorageState())

    def _connect(self, *, existed: bool) -> None:
        assert self._lockfd is not None
        size = os.fstat(self._lockfd).st_size
        if existed and size == 0 and self._seq_existed:
            # an outbox this node used (its seq file says so) is now empty: its content was lost
            raise _Corrupt("the file is empty: its content was lost")
        if size:
            header = os.pread(self._lockfd, len(_HEADER), 0)
            if header != _HEADER:
                raise _Corrupt("not an SQLite database any more")
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        try:
            if size:
                try:
                    check = db.execute("PRAGMA quick_check").fetchone()[0]
                except sqlite3.DatabaseError as exc:
                    storage = classify(exc, self.path)
                    if storage is None or storage.state != "corrupt":
                        raise
                    raise _Corrupt(str(exc)) from None
                if check != "ok":
                    raise _Corrupt(f"integrity check: {check}")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # a row is on disk when put() returns
            db.executescript(_SCHEMA)
            counters = dict(db.execute("SELECT name, value FROM counters"))
            count = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
            last = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
            if (last[0] if last else 0) < self._last_id:  # a new database after a quarantine: ids go on rising
                db.execute("DELETE FROM sqlite_sequence WHERE name = 'outbox'")
                db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('outbox', ?)", (self._last_id,))
        except sqlite3.DatabaseError as exc:
            db.close()
            storage = classify(exc, self.path)
            if storage is not None and storage.state == "corrupt":
                raise _Corrupt(str(exc)) from None
            raise
        except BaseException:
            db.close()
            raise
        # seq: the database's (exact) unless this process knows a higher one, or the database is new and the seq
        # file says which numbers were handed out before (a lost outbox); events lost before the first open that
        # worked (disk full, read-only) still take their numbers, so the gap shows them
        if self._seq_known:
            seq = max(counters.get("seq", 0), self._counters.get("seq", 0))
        else:
            seq = max(counters.get("seq", 0), 0 if counters else self._seq_mark) + self._lost_unnumbered
        if self._counters:  # reopened in this process: keep the loss counters of the database that went away
            counters = {**self._counters, **{k: v for k, v in counters.items() if k != "seq"}}
        counters["seq"] = seq
        if counters != dict(db.execute("SELECT name, value FROM counters")):
            try:
                db.executemany("INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE "
                               "SET value = excluded.value", list(counters.items()))
            except BaseException:
                db.close()
                raise
        self._db, self._counters, self._count = db, counters, count
        self._seq_known, self._lost_unnumbered = True, 0
        if self._salvaged:
            self._restore(db)
        self._last_id = max(self._last_id, last[0] if last else 0)
        if seq >= self._seq_mark:
            self._advance_seq_mark(seq)

    def _restore(self, db: sqlite3.Connection) -> None:
        """Put the rows read from a quarantined outbox into the new one, with their ids (so, in their order)."""
        rows, self._salvaged = self._salvaged, []
        try:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT INTO outbox (id, kind, topic, payload, qos, retain) VALUES (?, ?, ?, ?, ?, ?)",
                           [(r.id, r.kind, r.topic, r.payload, r.qos, int(r.retain)) for r in rows])
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            log.error("mqtt outbox: the rows read from the corrupted outbox cannot be stored in the new one; they "
                      "stay in the kept file only", outbox=str(self.path), rows=len(rows), error=str(exc))
            return
        self._count += len(rows)
        self._last_id = max(self._last_id, rows[-1].id)

    def _open_seq_file(self) -> None:
        if self._seqfd is not None:
            return
        ensure_dir(self.path.parent)
        existed = self.seq_path.exists()
        fd = create_file(self.seq_path)
        try:
            raw = os.pread(fd, 64, 0)
        except OSError:
            os.close(fd)
            raise
        self._seqfd = fd
        self._seq_existed = existed
        if not existed:
            sync_dir(self.path.parent)
        try:
            self._seq_mark = int(raw.decode("ascii").strip() or 0)
        except (UnicodeDecodeError, ValueError):
            log.warning("mqtt outbox seq file unreadable; seq continues from the outbox", seq_file=str(self.seq_path))
            self._seq_mark = 0

    def _advance_seq_mark(self, seq: int) -> None:
        """Write a new high-water mark above ``seq`` in place (same length: no new blocks on a full disk)."""
        if self._seqfd is None:
            return
        mark = seq + SEQ_STEP
        data = f"{mark:020d}\n".encode()
        try:
            os.pwrite(self._seqfd, data, 0)
            os.fsync(self._seqfd)
        except OSError as exc:
            if not self._seq_write_failed:
                self._seq_write_failed = True
                log.warning("mqtt outbox seq file cannot be written; seq survives a lost outbox only from the last "
                            "mark", seq_file=str(self.seq_path), error=exc.strerror, last_mark=self._seq_mark)
            return
        self._seq_write_failed = False
        self._seq_mark = mark

    def _quarantine(self, reason: str, *, at_start: bool) -> None:
        """Move the unreadable database (and its -wal) aside, keep it, say so once; a new one is made next."""
        self._close_db()
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while target.exists():
            n += 1
            target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
        os.rename(self.path, target)
        for suffix in ("-wal", "-shm"):
            side = Path(f"{self.path}{suffix}")
            if side.exists():
                os.rename(side, f"{target}{suffix}")
        sync_dir(self.path.parent)
        self.quarantined.append(target)
        self._salvaged = _readable_rows(target, self.max_messages)
        queued = None if at_start else self._count
        self._count = 0
        log.error("mqtt outbox unreadable: moved aside and kept, a new outbox started with the rows that could be "
                  "read; seq continues above the last one handed out", outbox=str(self.path), kept=str(target),
                  reason=reason, recovered=len(self._salvaged), queued_before=queued)
        self._lockfd = create_file(self.path, exclusive=True)
        st = os.fstat(self._lockfd)
        self._made = (st.st_dev, st.st_ino)
        self._lock_exclusively()

    def _lock_exclusively(self) -> None:
        """The database file is its own lock: one process per outbox."""
        try:
            fcntl.flock(self._lockfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lockfd)
            self._lockfd = None
            raise UserError(f"mqtt.outbox.path {self.path} is in use by another edge-monitor process; "
                            "give each process its own outbox") from None

    def _close_db(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._lockfd is not None:  # after SQLite has closed its own descriptors (POSIX lock caveat)
            fcntl.flock(self._lockfd, fcntl.LOCK_UN)
            os.close(self._lockfd)
            self._lockfd = None

    def _ready(self) -> sqlite3.Connection:
        if self._closed:
            raise RuntimeError("outbox is closed")
        if self._db is None:
            try:
                self._open()
            except UserError as exc:  # at start a user error; later (taken by another process) storage trouble
                storage = StorageState("error", str(exc))
                self._set_storage(storage)
                raise StorageError(storage) from None
        assert self._db is not None
        return self._db

    def _set_storage(self, storage: StorageState) -> None:
        self._storage = storage

    def _failed(self, exc: BaseException) -> StorageError | None:
        """The StorageError an error of a statement means (re-raised if it is a bug); None if the database was
        corrupt and has been replaced by a new one (quarantined): the caller may try again."""
        storage = classify(exc, self.path)
        if storage is None:
            raise exc
        if storage.state == "corrupt":
            try:
                self._quarantine(storage.reason or "corrupt", at_start=False)
                self._connect(existed=False)
            except (sqlite3.Error, OSError, _Corrupt, UserError) as again:
                self._close_db()
                storage = classify(again, self.path) or StorageState("error", f"{self.path}: {again}")
            else:
                self._set_storage(StorageState())
                return None
        self._set_storage(storage)
        return StorageError(storage)

    def _rollback(self) -> None:
        db = self._db
        if db is not None and db.in_transaction:  # SQLite has already rolled back after SQLITE_FULL
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    # -- writing ---------------------------------------------------------------------------------
    def put(self, kind: str, topic: str, payload: bytes, qos: int, retain: bool) -> list[str]:
        """Store one message; returns the kinds of the messages dropped to make room (usually none).

        Raises :class:`StorageError` if the disk refused it (nothing stored; :attr:`storage` says why)."""
        return self._put(kind, topic, lambda _seq: payload, qos, retain)[1]

    def put_event(self, topic: str, payload: Callable[[int], bytes]) -> tuple[int, list[str]]:
        """Store an event built by ``payload(seq)`` with the next per-node ``seq``; returns (seq, dropped kinds).

        On :class:`StorageError` the event's ``seq`` is used up all the same, so the gap shows the loss."""
        return self._put("event", topic, payload, 1, False)

    def _put(self, kind: str, topic: str, build: Callable[[int], bytes], qos: int,
             retain: bool) -> tuple[int, list[str]]:
        if kind not in KINDS:
            raise ValueError(f"unknown outbox kind {kind!r}")
        with self._lock:
            for _attempt in range(2):  # a second time only on a new database that replaced a corrupt one
                try:
                    db = self._ready()
                except StorageError:
                    if kind == "event":
                        self._lose_event()
                    raise
                seq = self._counters.get("seq", 0) + (kind == "event")
                payload = build(seq)
                counters = dict(self._counters)
                counters["seq"] = seq
                count = self._count
                dropped: list[str] = []
                try:
                    db.execute("BEGIN IMMEDIATE")
                    cursor = db.execute("INSERT INTO outbox (kind, topic, payload, qos, retain) VALUES (?, ?, ?, ?, ?)",
                                        (kind, topic, payload, qos, int(retain)))
                    count += 1
                    while count > self.max_messages:
                        victim_id, victim_kind = self._victim(db)
                        db.execute("DELETE FROM outbox WHERE id = ?", (victim_id,))
                        count -= 1
                        dropped.append(victim_kind)
                        counters[f"dropped.{victim_kind}"] = counters.get(f"dropped.{victim_kind}", 0) + 1
                    self._write_counters(db, counters)
                    db.execute("COMMIT")
                except (sqlite3.Error, OSError) as exc:
                    self._rollback()
                    error = self._failed(exc)
                    if error is None:
                        continue
                    if kind == "event":
                        self._lose_event()
                    raise error from None
                except BaseException:
                    self._rollback()
                    raise
                self._counters, self._count = counters, count
                self._last_id = max(self._last_id, cursor.lastrowid or 0)
                if seq >= self._seq_mark:
                    self._advance_seq_mark(seq)
                self._set_storage(StorageState())
                return seq, dropped
            if kind == "event":
                self._lose_event()
            raise StorageError(self._storage if not self._storage.ok else
                               StorageState("error", f"{self.path}: corrupt again right after a new outbox was made"))

    def _lose_event(self) -> None:
        """An event that could not be stored still takes its number (in memory; on disk with the next row)."""
        if not self._seq_known:
            self._lost_unnumbered += 1
            return
        seq = self._counters["seq"] = self._counters.get("seq", 0) + 1
        if seq >= self._seq_mark:
            self._advance_seq_mark(seq)

    def _victim(self, db: sqlite3.Connection) -> tuple[int, str]:
        for query in _VICTIMS:
            row = db.execute(query).fetchone()
            if row:
                return row
        raise AssertionError("outbox over its bound but empty")

    def _write_counters(self, db: sqlite3.Connection, counters: dict[str, int]) -> None:
        changed = [(k, v) for k, v in counters.items() if self._counters.get(k) != v or k == "seq"]
        if changed:
            db.executemany("INSERT INTO counters (name, value) VALUES (?, ?) "
                           "ON CONFLICT (name) DO UPDATE SET value = excluded.value", changed)

    def delete(self, ids: Iterable[int], *, count_as: str | None = None) -> None:
        """Remove delivered rows (one transaction). ``count_as`` names a loss counter to add them to.

        Raises :class:`StorageError` if the disk refused it (the rows stay: sent again later, a duplicate)."""
        ids = list(ids)
        if not ids:
            return
        with self._lock:
            db = self._ready()
            counters = dict(self._counters)
            try:
                db.execute("BEGIN IMMEDIATE")
                removed = 0
                for start in range(0, len(ids), 500):
                    chunk = ids[start:start + 500]
                    cursor = db.execute(f"DELETE FROM outbox WHERE id IN ({','.join('?' * len(chunk))})", chunk)
                    removed += cursor.rowcount
                if count_as:
                    counters[count_as] = counters.get(count_as, 0) + removed
                self._write_counters(db, counters)
                db.execute("COMMIT")
            except (sqlite3.Error, OSError) as exc:
                self._rollback()
                error = self._failed(exc)
                if error is None:
                    return  # the rows went with the corrupt database
                raise error from None
            except BaseException:
                self._rollback()
                raise
            self._counters = counters
            self._count -= removed
            self._set_storage(StorageState())

    # -- reading ---------------------------------------------------------------------------------
    def after(self, row_id: int, limit: int) -> list[Row]:
        """Up to ``limit`` sendable rows with an id above ``row_id``, oldest first.

        Rows that can never be sent are deleted on the way and counted as ``skipped`` (see :meth:`counter`).
        Raises :class:`StorageError` if the database cannot be read."""
        with self._lock:
            db = self._ready()
            try:
                raw = db.execute("SELECT id, kind, topic, payload, qos, retain FROM outbox WHERE id > ? "
                                 "ORDER BY id LIMIT ?", (row_id, limit)).fetchall()
            except (sqlite3.Error, OSError) as exc:
                error = self._failed(exc)
                if error is None:
                    return []  # a new, empty database replaced the corrupt one
                raise error from None
        rows, bad = [], []
        for r in raw:
            problem = _row_problem(r[1], r[2], r[3], r[4], r[5])
            if problem is None:
                rows.append(Row(r[0], r[1], r[2], r[3], r[4], bool(r[5])))
            else:
                bad.append((r[0], problem))
        if bad:
            self.skip(bad)
        return rows

    def skip(self, rows: list[tuple[int, str]]) -> None:
        """Delete rows that can never be sent (id, why), count them as ``skipped`` and log them once each."""
        self.delete((row_id for row_id, _ in rows), count_as="skipped")
        for row_id, problem in rows:
            log.error("mqtt outbox row cannot be sent: deleted and counted as skipped", row=row_id, problem=problem,
                      outbox=str(self.path))

    def __len__(self) -> int:
        return self._count

    def counts(self) -> dict[str, int]:
        """Queued rows by kind."""
        with self._lock:
            db = self._ready()
            found = dict(db.execute("SELECT kind, COUNT(*) FROM outbox GROUP BY kind"))
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

    @property
    def storage(self) -> StorageState:
        """Whether the last write (or open) worked; see :class:`StorageState`."""
        return self._storage

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._close_db()
            if self._seqfd is not None:
                os.close(self._seqfd)
                self._seqfd = None
