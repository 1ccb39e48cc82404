"""The link state object (``node/mqtt/link.py``) on its own: every transition, each logged once per change.

Pure state and logging, no network: the paho callbacks that drive it are exercised against a real broker
in ``test_mqtt.py`` (flapping, refused, lost) and ``test_outbox_storage.py`` (connect timeout)."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from edge_monitor.node.mqtt import link as link_module
from edge_monitor.node.mqtt.link import Link


@pytest.fixture
def clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(link_module.time, "monotonic", lambda: now[0])  # a clock we can move: no sleeping
    return now


def names(logs: list[dict]) -> list[str]:
    return [e["event"] for e in logs]


def test_up_down_up_is_connected_lost_reconnected(clock):
    link = Link("h", 1, retry_max_seconds=8)
    with capture_logs() as logs:
        with link.lock:
            assert link.up(queued=3, client_id="c") == 1
        assert (link.connected, link.ever_connected, link.problem) == (True, True, None)
        clock[0] += 60
        assert link.down("gone", queued=4, retry_min_seconds=0.5) is None
        assert link.connected is False and link.down_since == clock[0]
        link.connect_failed("TCP: refused")
        link.connect_failed("TCP: refused")       # the same reason on every retry: said once
        link.connect_failed("DNS: cannot resolve")  # a new reason: said
        clock[0] += 5
        with link.lock:
            assert link.up(queued=0) == 2
    assert names(logs) == ["mqtt connected", "mqtt connection lost; retrying with backoff",
                           "mqtt cannot connect; retrying with backoff", "mqtt cannot connect; retrying with backoff",
                           "mqtt reconnected"]
    assert logs[-1]["down_seconds"] == 5.0 and link.problem is None and link.down_since is None


def test_short_links_are_flapping_said_once_backed_off_and_holds_again(clock):
    link = Link("h", 1, retry_max_seconds=8)
    with capture_logs() as logs:
        delays = []
        for _ in range(5):
            with link.lock:
                link.up(queued=0)
            clock[0] += 1  # kicked a second after each CONNACK
            delays.append(link.down("kicked", queued=0, retry_min_seconds=0.5))
        assert delays == [None, 1.0, 2.0, 4.0, 8.0]  # doubling, capped at retry_max_seconds
        assert link.flapping and "keeps closing the connection" in link.problem
        with link.lock:
            link.up(queued=0)
        clock[0] += 5
        assert link.check_holds() is False  # not yet 10 s
        clock[0] += 5
        assert link.check_holds() is True and link.check_holds() is False  # once
    assert names(logs) == ["mqtt connected", "mqtt connection lost; retrying with backoff", "mqtt reconnected",
                           "mqtt cannot connect; retrying with backoff", "mqtt connection holds again"]
    assert (link.flapping, link.problem) == (False, None)


def test_a_failed_try_between_short_links_is_an_outage_not_flapping(clock):
    link = Link("h", 1, retry_max_seconds=8)
    with link.lock:
        link.up(queued=0)
    clock[0] += 1
    link.down("kicked", queued=0, retry_min_seconds=0.5)
    link.connect_failed("TCP: refused")
    with link.lock:
        link.up(queued=0)
    clock[0] += 1
    assert link.down("kicked", queued=0, retry_min_seconds=0.5) is None and not link.flapping


def test_connect_timeout_is_one_problem_and_a_stop_is_silent(clock):
    link = Link("broker", 1883, retry_max_seconds=8)
    with capture_logs() as logs:
        for _ in range(4):
            link.connect_timeout(5)
        link.stopping = True
        with link.lock:
            link.up(queued=0)
        link.down("shutdown", queued=0, retry_min_seconds=0.5)
    assert names(logs) == ["mqtt cannot connect; retrying with backoff", "mqtt connected"]
    assert "broker:1883 accepted the connection but sent no CONNACK within 5 s (connect timeout)" in logs[0]["problem"]
