"""The sd_notify protocol against a real AF_UNIX datagram socket (what systemd listens on)."""

from __future__ import annotations

import os
import socket

import pytest

from edge_monitor.node.systemd import Notifier


@pytest.fixture()
def listener(tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    yield path, sock
    sock.close()


def test_messages_arrive_as_systemd_reads_them(listener):
    path, sock = listener
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000"})
    assert n.enabled and n.watchdog_seconds == 30.0
    assert n.ready("2 monitors")
    assert sock.recv(4096) == b"READY=1\nSTATUS=2 monitors"
    assert n.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert n.reloading()
    lines = sock.recv(4096).decode().split("\n")
    assert lines[0] == "RELOADING=1" and lines[1].startswith("MONOTONIC_USEC=") and int(lines[1].split("=")[1]) > 0
    assert n.stopping()
    assert sock.recv(4096).startswith(b"STOPPING=1")


def test_abstract_namespace_socket():
    name = f"edge-monitor-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    try:
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).status("hello")
        assert sock.recv(100) == b"STATUS=hello"
    finally:
        sock.close()


def test_outside_systemd_everything_is_a_no_op():
    n = Notifier({})
    assert not n.enabled and n.watchdog_seconds is None
    assert n.ready("x") is False and n.watchdog() is False


def test_watchdog_for_another_pid_is_ignored(tmp_path):
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "none"), "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert n.watchdog_seconds is None
    assert n.watchdog() is False  # the socket does not exist: reported, never raised


def test_a_receiver_that_does_not_read_never_blocks_the_sender(listener):
    path, _sock = listener  # bound, never read: the datagram queue fills up
    n = Notifier({"NOTIFY_SOCKET": path})
    import time

    started = time.monotonic()
    results = [n.watchdog() for _ in range(500)]
    assert time.monotonic() - started < 2.0
    assert results[0] is True and results[-1] is False  # the first ones queued, the rest dropped, none blocked
