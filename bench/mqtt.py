"""MQTT publisher figures against a private mosquitto on loopback (prints, never asserts).

    python bench/mqtt.py [--latency-events 1000] [--burst 5000] [--outage 60] [--rate 4]

1. latency from ``publish_event`` to the subscriber's receipt (median, p99), and how long the caller is
   held by ``publish_event`` (one SQLite row, synced to disk);
2. outbox throughput: events/s accepted while the broker is down, and the drain rate when it is back;
3. a broker outage of ``--outage`` seconds while events are produced at ``--rate``/s: sent, received, lost;
4. what opening a full outbox costs at start (``--open-rows`` rows; the integrity check that finds a
   corrupted outbox reads every page).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from mqtt_helpers import Broker, Received, Subscriber, make_event, unique_events  # noqa: E402

from edge_monitor.node.log import configure  # noqa: E402
from edge_monitor.node.mqtt.outbox import Outbox  # noqa: E402
from edge_monitor.node.mqtt.publisher import Publisher  # noqa: E402
from edge_monitor.node.settings import MqttSettings, OutboxSettings  # noqa: E402

MONITORS = [{"name": "fan-1", "model": "fan-id_00", "sha256": "ab" * 32}]


def publisher(broker: Broker, root: Path, name: str) -> Publisher:
    settings = MqttSettings(enabled=True, host="127.0.0.1", port=broker.port, keepalive=10,
                            reconnect_min_seconds=0.5, reconnect_max_seconds=1.0,
                            outbox=OutboxSettings(path=str(root / f"{name}.sqlite")))
    pub = Publisher(settings, name, monitors=MONITORS, version="bench")
    pub.start()
    return pub


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latency(broker: Broker, root: Path, count: int) -> None:
    received: dict[str, float] = {}

    def on_message(item: Received) -> None:
        received.setdefault(item.json()["event_id"], item.at)

    sub = Subscriber(broker.port, "edge-monitor/latency/+/event", on_message=on_message)
    pub = publisher(broker, root, "latency")
    time.sleep(0.5)
    sent: dict[str, float] = {}
    held = []
    for n in range(count):
        event = make_event(n, node="latency")
        start = time.perf_counter()
        pub.publish_event(event)
        held.append(time.perf_counter() - start)
        sent[event.event_id] = start
        time.sleep(0.005)
    sub.wait_for(lambda _: len(received) >= count, timeout=30)
    delays = [1000 * (received[k] - sent[k]) for k in sent if k in received]
    print(f"1. latency, publish_event → subscriber, {len(delays)}/{count} events at ~150/s:")
    print(f"   median {statistics.median(delays):6.2f} ms   p99 {pct(delays, 0.99):6.2f} ms   "
          f"max {max(delays):6.2f} ms")
    held_ms = [1000 * h for h in held]
    print(f"   caller held by publish_event: median {statistics.median(held_ms):.2f} ms   "
          f"p99 {pct(held_ms, 0.99):.2f} ms")
    pub.stop()
    sub.close()


def throughput(broker: Broker, root: Path, count: int) -> None:
    sub = Subscriber(broker.port, "edge-monitor/burst/+/event")
    pub = publisher(broker, root, "burst")
    time.sleep(0.5)
    broker.stop()
    time.sleep(0.2)
    start = time.perf_counter()
    for n in range(count):
        pub.publish_event(make_event(n, node="burst"))
    accepted = count / (time.perf_counter() - start)
    broker.start()
    start = time.perf_counter()
    pub.wait_drained(600)
    drained = time.perf_counter() - start
    sub.wait_for(lambda _: len(unique_events(sub)) >= count, timeout=120)
    print(f"2. outbox, broker down: {accepted:7.0f} events/s accepted by publish_event ({count} events)")
    print(f"   broker back: {count} events drained in {drained:.1f} s (from restart, incl. reconnect) = "
          f"{count / drained:.0f} events/s; subscriber got {len(unique_events(sub))} unique")
    pub.stop()
    sub.close()


def outage(broker: Broker, root: Path, seconds: float, rate: float) -> None:
    sub = Subscriber(broker.port, "edge-monitor/outage/+/event")
    pub = publisher(broker, root, "outage")
    sent: list[str] = []
    stop = threading.Event()

    def produce() -> None:
        n = 0
        next_at = time.monotonic()
        while not stop.is_set():
            event = make_event(n, node="outage")
            pub.publish_event(event)
            sent.append(event.event_id)
            n += 1
            next_at += 1 / rate
            stop.wait(max(0.0, next_at - time.monotonic()))

    producer = threading.Thread(target=produce)
    producer.start()
    time.sleep(5)
    broker.stop()
    down = time.monotonic()
    time.sleep(seconds)
    queued = pub.stats()["queued"]
    broker.start()
    up = time.monotonic()
    time.sleep(5)
    stop.set()
    producer.join()
    pub.wait_drained(60)
    sub.wait_for(lambda _: len(unique_events(sub)) >= len(sent), timeout=60)
    got = [e["event_id"] for e in unique_events(sub)]
    print(f"3. broker down {up - down:.0f} s while producing {rate:g} events/s "
          f"({queued} queued at the end of the outage):")
    print(f"   sent {len(sent)}   received {len(got)} unique ({len(sub.events())} with duplicates)   "
          f"lost {len(set(sent) - set(got))}   in order: {got == sent}   dropped by outbox: {pub.stats()['dropped']}")
    pub.stop()
    sub.close()


def open_cost(root: Path, rows: int) -> None:
    path = root / "open" / "outbox.sqlite"
    box = Outbox(path, rows)
    data = json.dumps(make_event(0, node="open").to_dict()).encode()
    for _ in range(rows):
        box.put("event", "edge-monitor/open/fan-1/event", data, 1, False)
    box.close()
    times = []
    for _ in range(3):
        begin = time.perf_counter()
        Outbox(path, rows).close()
        times.append((time.perf_counter() - begin) * 1000)
    print(f"4. opening an outbox of {rows} events ({path.stat().st_size / 1e6:.0f} MB, integrity check included): "
          f"median {statistics.median(times):.0f} ms of 3")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-events", type=int, default=1000)
    parser.add_argument("--burst", type=int, default=5000, help="events published while the broker is down")
    parser.add_argument("--outage", type=float, default=60.0, help="seconds the broker is down in part 3")
    parser.add_argument("--rate", type=float, default=4.0, help="events per second in part 3")
    parser.add_argument("--open-rows", type=int, default=20_000, help="rows in the outbox opened in part 4")
    args = parser.parse_args()
    configure("console", "error")  # the publisher's own log lines would drown the figures
    with tempfile.TemporaryDirectory(prefix="edge-monitor-bench-mqtt-") as tmp:
        root = Path(tmp)
        broker = Broker(root / "broker").start()
        try:
            print(f"mosquitto on 127.0.0.1:{broker.port}; outbox in {root} (SQLite WAL, synchronous=FULL)")
            latency(broker, root, args.latency_events)
            throughput(broker, root, args.burst)
            outage(broker, root, args.outage, args.rate)
            open_cost(root, args.open_rows)
        finally:
            broker.kill()


if __name__ == "__main__":
    main()
