"""The outbox and the link when the disk or the broker misbehave: a real full / read-only file system (a tmpfs
mounted by the test, so root), corrupted and emptied outboxes, poison rows, files that are not outboxes, the
modes of state files, a broker that accepts TCP but never answers CONNECT, and passwords in URLs."""

from __future__ import annotations

import argparse
import json
import os
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from contextlib import suppress
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from edge_monitor.commands.mqtt_test import add_arguments as add_test_arguments
from edge_monitor.commands.mqtt_test import run as run_test
from edge_monitor.core.errors import UserError
from edge_monitor.node.mqtt.connection import parse_url, redact_url
from edge_monitor.node.mqtt.outbox import (
    SEQ_STEP,
    Outbox,
    StorageError,
    StorageState,
)
from edge_monitor.node.mqtt.publisher import Publisher
from edge_monitor.node.settings import MqttSettings, OutboxSettings
from edge_monitor.node.statedir import write_atomic

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mqtt_helpers import (
    MOSQUITTO,
    Broker,
    Subscriber,
    free_port,
    make_event,
    unique_events,
)

needs_mosquitto = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed (apt-get install mosquitto)")
MONITORS = [{"name": "fan-1", "model": "fan-id_00", "sha256": "ab" * 32}]
ROOT = Path(__file__).resolve().parents[1]


def settings(port: int, outbox: Path, **overrides) -> MqttSettings:
    base = {"enabled": True, "host": "127.0.0.1", "port": port, "keepalive": 5, "reconnect_min_seconds": 0.2,
            "reconnect_max_seconds": 0.5, "outbox": OutboxSettings(path=str(outbox), max_messages=100_000)}
    base.update(overrides)
    return MqttSettings(**base)


class SmallFs:
    """A tmpfs of ``size`` mounted at ``path`` (unmounted at teardown), to be filled, freed, made read-only."""

    def __init__(self, path: Path, size: str) -> None:
        self.path = path
        path.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs (needs root): {proc.stderr.strip()}")
        self.filler = path / "filler"

    def fill(self) -> None:
        """Write a file until the file system says ENOSPC."""
        with open(self.filler, "ab", buffering=0) as f:
            for size in (65536, 4096, 512, 1):
                with suppress(OSError):
                    while True:
                        f.write(b"\xff" * size)
        assert os.statvfs(self.path).f_bavail == 0

    def free(self) -> None:
        self.filler.unlink()

    def remount(self, mode: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{mode}", str(self.path)], check=True, capture_output=True)

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True, check=False)


@pytest.fixture
def small_fs(tmp_path):
    mounted: list[SmallFs] = []

    def make(size: str = "1m") -> SmallFs:
        fs = SmallFs(tmp_path / f"fs{len(mounted)}", size)
        mounted.append(fs)
        return fs

    yield make
    for fs in mounted:
        fs.unmount()


@pytest.fixture
def publishers():
    made: list[Publisher] = []

    def start(pub: Publisher) -> Publisher:
        pub.start()
        made.append(pub)
        return pub

    yield start
    for pub in made:
        pub.stop(timeout=0.2)


def events_named(logs: list[dict], prefix: str) -> list[dict]:
    return [e for e in logs if e["event"].startswith(prefix)]


# -- issue 15 item 2: a full or read-only disk costs only what cannot be stored ----------------------------------
@needs_mosquitto
def test_full_disk_costs_only_what_cannot_be_stored_and_queuing_resumes(tmp_path, small_fs, publishers):
    fs = small_fs("1m")
    broker = Broker(tmp_path / "broker").start()
    port = broker.port
    changes: list[StorageState] = []
    sub = Subscriber(port, "edge-monitor/node1/+/event")
    try:
        with capture_logs() as logs:
            pub = publishers(Publisher(settings(port, fs.path / "state" / "outbox.sqlite"), "node1",
                                       monitors=MONITORS, version="1", on_storage=changes.append))
            for n in range(3):
                pub.publish_event(make_event(n))
            assert sub.wait_for(lambda ms: len(unique_events(sub)) == 3)
            broker.stop()  # from here the outbox must grow: nothing leaves it (SIGTERM: sessions saved)
            fs.fill()
            for n in range(3, 400):  # the caller (the daemon's processing thread) never sees an exception
                pub.publish_event(make_event(n))
                pub.publish_state("fan-1", "anomaly" if n % 2 else "normal", 1.0, 1.0)
            stats = pub.stats()
            assert stats["storage"] == "full" and pub.storage().state == "full"
            assert "full" in pub.storage_problem() and str(fs.path / "state" / "outbox.sqlite") in pub.storage_problem()
            lost_events = stats["unqueued"]["event"]
            assert lost_events > 0 and stats["unqueued"]["state"] > 0 and stats["unqueued"]["telemetry"] == 0
            queued_while_full = stats["queued"]
            assert changes == [pub.storage()]  # told once, not once per refused message

            fs.free()
            for n in range(400, 405):
                pub.publish_event(make_event(n))
            assert pub.storage() == StorageState() and pub.storage_problem() is None
            assert changes[-1] == StorageState() and len(changes) == 2
            assert pub.stats()["queued"] == queued_while_full + 5

            broker = Broker(tmp_path / "broker", port=port).start()
            assert pub.wait_drained(30)
        got = unique_events(sub)
        assert sub.wait_for(lambda ms: len(unique_events(sub)) == 405 - lost_events)
        got = unique_events(sub)
        seqs = [e["seq"] for e in got]
        assert seqs == sorted(seqs) and seqs[-1] == 405  # every event took its number: the gaps are the losses
        assert len(set(range(1, 406)) - set(seqs)) == lost_events
        problems = events_named(logs, "mqtt outbox storage problem")
        assert len(problems) == 1 and problems[0]["storage"] == "full"
        assert len(events_named(logs, "mqtt outbox can store messages again")) == 1
        assert len(events_named(logs, "mqtt outbox cannot store messages")) == 1  # throttled: a minute apart
        assert not events_named(logs, "mqtt outbox pump failed")
    finally:
        sub.close()
        broker.kill()


def test_read_only_disk_at_start_is_a_storage_state_not_an_error(small_fs, publishers):
    fs = small_fs("1m")
    (fs.path / "state").mkdir()
    fs.remount("ro")
    changes: list[StorageState] = []
    pub = publishers(Publisher(settings(free_port(), fs.path / "state" / "outbox.sqlite"), "node1",
                               monitors=MONITORS, version="1", on_storage=changes.append))
    for n in range(3):
        pub.publish_event(make_event(n))
    pub.publish_telemetry("fan-1", {"n": 1})
    stats = pub.stats()
    assert (stats["storage"], stats["unqueued"], stats["queued"]) == (
        "read-only", {"telemetry": 1, "state": 0, "event": 3}, 0)
    assert "cannot be written" in pub.storage_problem() and [c.state for c in changes] == ["read-only"]
    fs.remount("rw")
    pub.publish_event(make_event(3))
    assert pub.storage_problem() is None and [c.state for c in changes] == ["read-only", "ok"]
    assert pub.stats()["queued"] == 1 and pub.stats()["seq"] == 4  # 1-3 were lost: the gap says so


def test_replay_with_its_outbox_on_a_full_disk_still_replays(tmp_path, small_fs):
    fs = small_fs("256k")
    config = tmp_path / "node.yaml"
    config.write_text(f"node: test-node\nmonitors:\n  - name: fan-a\n    model: {ROOT / 'edge_monitor/demo/fan-id_00'}\n"
                      f"mqtt:\n  outbox:\n    path: {fs.path / 'outbox.sqlite'}\n")
    fs.fill()
    proc = subprocess.run([sys.executable, "-m", "edge_monitor", "replay",
                           str(ROOT / "edge_monitor/demo/clips/anomaly_id_00_demo.wav"), "--config", str(config),
                           "--mqtt", f"mqtt://127.0.0.1:{free_port()}", "--jsonl", str(tmp_path / "e.jsonl")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1, proc.stderr  # anomaly found, as without MQTT
    assert "Traceback" not in proc.stderr and "rollback" not in proc.stderr, proc.stderr
    assert any(json.loads(line)["type"] == "anomaly_start" for line in (tmp_path / "e.jsonl").read_text().splitlines())


# -- issue 15 item 3: corrupted, emptied outboxes; poison rows --------------------------------------------------------
def _outbox_with_events(path: Path, n: int) -> None:
    box = Outbox(path, 1000)
    for i in range(n):
        box.put_event("edge-monitor/node1/fan-1/event", lambda seq: json.dumps({"seq": seq, "pad": "x" * 300}).encode())
    assert box.seq == n
    box.close()
    assert not Path(f"{path}-wal").exists()  # checkpointed on close: the database file holds everything


def test_garbage_in_a_page_is_quarantined_kept_and_seq_continues(tmp_path):
    path = tmp_path / "outbox.sqlite"
    _outbox_with_events(path, 40)
    with open(path, "r+b") as f:  # page 2: the outbox table's root page
        f.seek(4096)
        f.write(os.urandom(4096))
    damaged = path.read_bytes()
    with capture_logs() as logs:
        box = Outbox(path, 1000)
        seq, dropped = box.put_event("edge-monitor/node1/fan-1/event", lambda s: b"{}")
    assert (dropped, len(box)) == ([], 1) and seq > 40
    assert seq == SEQ_STEP + 1  # above the high-water mark of the seq file
    [kept] = box.quarantined
    assert kept.name.startswith("outbox.sqlite.corrupt-") and kept.read_bytes() == damaged
    said = events_named(logs, "mqtt outbox unreadable")
    assert len(said) == 1 and said[0]["kept"] == str(kept) and said[0]["log_level"] == "error"
    box.close()
    box = Outbox(path, 1000)  # the new outbox is sound and keeps its seq
    assert box.seq == seq and len(box) == 1 and box.quarantined == []
    box.close()


def test_corruption_found_while_running_is_quarantined_and_the_put_goes_to_a_new_outbox(tmp_path):
    path = tmp_path / "outbox.sqlite"
    _outbox_with_events(path, 40)
    box = Outbox(path, 1000)
    with open(path, "r+b") as f:  # damage under a running outbox; shrink_memory drops SQLite's page cache
        f.seek(4096)
        f.write(os.urandom(4096 * 3))
    box._db.execute("PRAGMA shrink_memory")  # test-only poke: the next statement reads the damaged pages
    with capture_logs() as logs:
        seq, _ = box.put_event("edge-monitor/node1/fan-1/event", lambda s: b"{}")
        rows = box.after(0, 100)
    assert seq == 41 and [r.payload for r in rows] == [b"{}"] and rows[0].id > 40  # ids never reused
    assert len(box.quarantined) == 1 and len(events_named(logs, "mqtt outbox unreadable")) == 1
    assert box.storage == StorageState()
    box.close()


def test_an_emptied_outbox_keeps_seq_monotonic(tmp_path):
    path = tmp_path / "outbox.sqlite"
    _outbox_with_events(path, 5)
    os.truncate(path, 0)  # what a crash on some file systems leaves
    with capture_logs() as logs:
        box = Outbox(path, 1000)
        seq, _ = box.put_event("t/e", lambda s: b"{}")
    assert seq > 5  # not 1 again: subscribers see the gap
    assert len(box.quarantined) == 1 and box.quarantined[0].stat().st_size == 0
    assert "empty" in events_named(logs, "mqtt outbox unreadable")[0]["reason"]
    box.close()
    path.unlink()  # moved away by hand (what the old advice said)
    path.with_name("outbox.sqlite-wal").unlink(missing_ok=True)
    box = Outbox(path, 1000)
    assert box.put_event("t/e", lambda s: b"{}")[0] > seq
    box.close()


@needs_mosquitto
def test_a_poison_row_is_skipped_and_counted_and_never_blocks_the_rows_behind_it(tmp_path, publishers):
    path = tmp_path / "outbox.sqlite"
    box = Outbox(path, 1000)
    box.put_event("edge-monitor/node1/fan-1/event", lambda seq: json.dumps({**make_event(0).to_dict(), "seq": seq}).encode())
    box.close()
    db = sqlite3.connect(path)
    db.executemany("INSERT INTO outbox (kind, topic, payload, qos, retain) VALUES (?, ?, ?, ?, ?)", [
        ("event", "edge-monitor/node1/+/event", b"{}", 1, 0),     # a topic MQTT refuses (paho raises)
        ("bogus", "edge-monitor/node1/fan-1/event", b"{}", 1, 0),  # an unknown kind
        ("event", "edge-monitor/node1/fan-1/event", "text", 1, 0),  # not a blob
        ("event", "edge-monitor/node1/fan-1/event", 10**9, 1, 0),  # would be bytes(10**9): a gigabyte of zeros
        ("event", "edge-monitor/node1/fan-1/event", b"{}", 7, 0),  # no such QoS
    ])
    db.commit()
    db.close()
    box = Outbox(path, 1000)
    for n in (1, 2):
        box.put_event("edge-monitor/node1/fan-1/event",
                      lambda seq, n=n: json.dumps({**make_event(n).to_dict(), "seq": seq}).encode())
    box.close()
    broker = Broker(tmp_path / "broker").start()
    try:
        sub = Subscriber(broker.port, "edge-monitor/node1/+/event")
        with capture_logs() as logs:
            pub = publishers(Publisher(settings(broker.port, path), "node1", monitors=MONITORS, version="1"))
            assert pub.wait_drained(10)
        assert sub.wait_for(lambda ms: len(unique_events(sub)) == 3, timeout=5)
        assert [e["seq"] for e in unique_events(sub)] == [1, 2, 3]
        assert pub.stats()["skipped"] == 5 and pub.stats()["queued"] == 0
        assert len(events_named(logs, "mqtt outbox row cannot be sent")) == 5
        assert not events_named(logs, "mqtt outbox pump failed")
        sub.close()
    finally:
        broker.kill()


# -- the outbox path ----------------------------------------------------------------------------------------------
def test_a_file_that_is_not_an_outbox_is_refused_and_nothing_is_created_beside_it(tmp_path):
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0:root:/root:/bin/bash\n")
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    other = tmp_path / "other.db"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE users (name TEXT)")
    db.commit()
    db.close()
    wal = tmp_path / "wal.db"  # a WAL database closed cleanly: no -wal, no -shm beside it
    db = sqlite3.connect(wal)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE photos (name TEXT)")
    db.commit()
    db.close()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    for path, why in ((passwd, "not an SQLite database"), (empty, "an empty file"),
                      (other, "an SQLite database but not an edge-monitor outbox \\(tables: users\\)"),
                      (wal, "an SQLite database but not an edge-monitor outbox \\(tables: photos\\)"),
                      (tmp_path, "is not a file")):
        with pytest.raises(UserError, match=why):
            Outbox(path, 100)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no passwd.lock, no .seq, no database


def test_the_database_itself_is_the_lock(tmp_path):
    path = tmp_path / "state" / "outbox.sqlite"
    box = Outbox(path, 100)
    with pytest.raises(UserError, match="in use by another edge-monitor process"):
        Outbox(path, 100)
    assert sorted(p.name for p in path.parent.iterdir()) == ["outbox.sqlite", "outbox.sqlite-shm",
                                                            "outbox.sqlite-wal", "outbox.sqlite.seq"]
    box.close()
    Outbox(path, 100).close()


def test_state_folder_is_0750_and_files_0640_whatever_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = tmp_path / "var" / "lib" / "edge-monitor" / "outbox.sqlite"
        box = Outbox(path, 100)
        box.put("state", "t/s", b"{}", 1, True)
        write_atomic(path.parent / "bdseq", b"7\n")
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in path.parent.iterdir()}
        box.close()
    finally:
        os.umask(old)
    assert modes == {"outbox.sqlite": 0o640, "outbox.sqlite-wal": 0o640, "outbox.sqlite-shm": 0o640,
                     "outbox.sqlite.seq": 0o640, "bdseq": 0o640}
    for folder in (tmp_path / "var", tmp_path / "var" / "lib", path.parent):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o750, folder


# -- issue 15 item 4: a broker that accepts TCP and never answers CONNECT ---------------------------------------------
def test_connect_timeout_is_logged_once(tmp_path, publishers):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def hold() -> None:  # take every connection, read nothing, answer nothing
        listener.settimeout(0.2)
        while not stop.is_set():
            with suppress(TimeoutError, OSError):
                accepted.append(listener.accept()[0])

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    try:
        with capture_logs() as logs:
            pub = publishers(Publisher(settings(port, tmp_path / "outbox.sqlite", keepalive=1), "node1",
                                       monitors=MONITORS, version="1"))
            deadline = time.monotonic() + 15
            while len(accepted) < 3 and time.monotonic() < deadline:
                time.sleep(0.1)
        assert len(accepted) >= 3, "paho did not retry"
        problems = events_named(logs, "mqtt cannot connect")
        assert len(problems) == 1, problems  # once, not once per try
        assert f"127.0.0.1:{port} accepted the connection but sent no CONNACK within 1 s" in problems[0]["problem"]
        assert "connect timeout" in problems[0]["problem"] and pub.link.problem == problems[0]["problem"]
        assert pub.stats()["connected"] is False
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        listener.close()


# -- passwords in URLs ----------------------------------------------------------------------------------------------
URLS_WITH_PASSWORDS = ["mqtt://node:SECRET@127.0.0.1:1", "mqtt://node:SECRET@host:99x", "http://node:SECRET@host",
                       "mqtt://node:SE@CRET@host/x", "mqtt://node:SECRET@[::1", "node:SECRET@host"]


@pytest.mark.parametrize("url", URLS_WITH_PASSWORDS)
def test_a_password_in_a_url_is_never_printed(url, capsys):
    assert "SECRET" not in redact_url(url) and "CRET" not in redact_url(url) and ":***@" in redact_url(url)
    with pytest.raises(UserError) as caught:
        parse_url(url)
    assert "CRET" not in str(caught.value) and "***" in str(caught.value)
    parser = argparse.ArgumentParser(prog="edge-monitor mqtt-test")
    add_test_arguments(parser)
    with pytest.raises(UserError) as caught:
        run_test(parser.parse_args(["--url", url]))
    out, err = capsys.readouterr()
    assert "CRET" not in f"{caught.value}{out}{err}"


def test_a_password_in_replays_mqtt_url_is_never_printed(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "edge_monitor", "replay",
                           str(ROOT / "edge_monitor/demo/clips/normal_id_00_demo.wav"),
                           "--mqtt", "mqtt://node:SECRET@127.0.0.1:1"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 2 and "SECRET" not in proc.stdout + proc.stderr, proc.stderr
    assert "mqtt://node:***@127.0.0.1:1" in proc.stderr
    assert redact_url("mqtt://plc@broker:1883") == "mqtt://plc@broker:1883"  # no password: unchanged


def test_a_lost_outbox_on_a_full_disk_is_retried_quietly_and_made_when_space_returns(small_fs):
    fs = small_fs("256k")
    path = fs.path / "state" / "outbox.sqlite"
    box = Outbox(path, 100)
    box.put_event("t/e", lambda seq: b"{}")
    box.close()
    for name in ("outbox.sqlite", "outbox.sqlite-wal", "outbox.sqlite-shm"):
        (path.parent / name).unlink(missing_ok=True)  # the outbox is gone; its seq file is not
    fs.fill()
    with capture_logs() as logs:
        box = Outbox(path, 100)
        assert box.storage.state == "full"
        for _ in range(4):  # every try makes (or finds) its own empty database file, and fails to write it
            with pytest.raises(StorageError, match="full"):
                box.put_event("t/e", lambda seq: b"{}")
        fs.free()
        seq, _ = box.put_event("t/e", lambda seq: b"{}")
    assert box.storage.ok and len(box) == 1 and seq > SEQ_STEP
    assert box.quarantined == [] and not events_named(logs, "mqtt outbox unreadable")  # its own empty file: no loss
    assert len(events_named(logs, "mqtt outbox missing")) == 1
    box.close()


def test_rows_before_the_damaged_page_are_recovered_in_order(tmp_path):
    path = tmp_path / "outbox.sqlite"
    _outbox_with_events(path, 120)
    size = path.stat().st_size
    with open(path, "r+b") as f:  # the last page: a leaf of the table or an index, behind the rows before it
        f.seek(size - 4096)
        f.write(os.urandom(4096))
    with capture_logs() as logs:
        box = Outbox(path, 1000)
    [said] = events_named(logs, "mqtt outbox unreadable")
    rows = box.after(0, 1000)
    assert 0 < len(rows) == said["recovered"] == len(box) and len(box.quarantined) == 1
    assert [r.id for r in rows] == list(range(1, len(rows) + 1))  # a prefix of the old queue, in its order
    assert [json.loads(r.payload)["seq"] for r in rows] == list(range(1, len(rows) + 1))
    seq, _ = box.put_event("edge-monitor/node1/fan-1/event", lambda s: b"{}")
    assert seq == SEQ_STEP + 1 and box.after(rows[-1].id, 10)[0].payload == b"{}"
    box.close()
