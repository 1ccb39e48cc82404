"""Sparkplug B (report by exception) against the JSON topics: messages and bytes per hour per monitor, and the
time from a fault's onset to the DDATA carrying ``Anomaly/Active`` = true. Prints, never asserts.

    python bench/sparkplug.py [--seconds 120] [--telemetry 10] [--heartbeat 60]

The demo model runs in a real :class:`~edge_monitor.core.monitor.Monitor` on the demo clips, looped and paced
as live (blocks of 0.1 s every 0.1 s), through the daemon's :class:`~edge_monitor.node.daemon.Sink` to the JSON
publisher and the Sparkplug node on a private mosquitto on loopback; a subscriber counts what arrives
(bytes = topic + payload, the MQTT headers not counted). Scenario "normal": the normal clip for ``--seconds``;
scenario "anomaly": the anomalous clip for ``--seconds`` (one anomaly, lasting). The latency is measured at the
switch from normal to anomalous sound (wall clock, onset = first anomalous block handed to the Monitor), over
``--faults`` switches.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import numpy as np
from mqtt_helpers import Broker, Subscriber

from edge_monitor import DEMO_DIR
from edge_monitor.core.model import Bundle
from edge_monitor.core.monitor import Monitor
from edge_monitor.core.settings import MonitorSettings
from edge_monitor.core.wav import load_audio
from edge_monitor.node.daemon import Sink
from edge_monitor.node.log import configure
from edge_monitor.node.mqtt.publisher import Publisher
from edge_monitor.node.settings import (
    MqttSettings,
    OutboxSettings,
    Settings,
    SparkplugSettings,
)
from edge_monitor.node.sparkplug.node import DeviceInfo, SparkplugNode
from edge_monitor.node.sparkplug.payload import decode

BLOCK_S = 0.1
BUNDLE = DEMO_DIR / "fan-id_00"


class Rig:
    def __init__(self, broker: Broker, root: Path, name: str, heartbeat: float) -> None:
        bundle = Bundle.load(BUNDLE)
        self.bundle = bundle
        mq = MqttSettings(enabled=True, host="127.0.0.1", port=broker.port, client_id=f"json-{name}",
                          outbox=OutboxSettings(path=str(root / f"{name}.sqlite")))
        self.settings = Settings(node=name, monitors=(MonitorSettings("fan-1", str(BUNDLE)),), mqtt=mq)
        self.publisher = Publisher(mq, name, monitors=[{"name": "fan-1"}], version="bench")
        self.node = SparkplugNode(SparkplugSettings(enabled=True, group_id="bench", heartbeat_seconds=heartbeat,
                                                    state_dir=str(root / f"spb-{name}")), mq, name,
                                  [DeviceInfo("fan-1", bundle.machine_type, bundle.machine_id, bundle.sha256,
                                              bundle.threshold)],
                                  outbox_depth=lambda: self.publisher.stats()["queued"])
        self.publisher.start()
        self.node.start()
        self.sink = Sink(self.settings, self.publisher, [self.node])
        self.monitor = Monitor(self.settings.monitors[0], bundle, node=name, source="bench", live=True)
        self.started_at: list[float] = []  # perf_counter when each anomaly_start left the Monitor

    def run(self, audio: np.ndarray, seconds: float, telemetry_s: float, on_block=None) -> None:
        """Feed ``seconds`` of ``audio`` (looped) paced as live, as the daemon's Runner does."""
        rate = self.bundle.params.sample_rate
        block = int(BLOCK_S * rate)
        start = time.monotonic()
        next_telemetry = start + telemetry_s
        pos = 0
        for i in range(int(seconds / BLOCK_S)):
            chunk = np.take(audio, range(pos, pos + block), mode="wrap").astype(np.float32)
            pos = (pos + block) % len(audio)
            before = self.monitor.state
            if on_block is not None:
                on_block(i)
            for event in self.monitor.process(chunk):
                if event.type == "anomaly_start":
                    self.started_at.append(time.perf_counter())
                self.sink.event(event)
            if self.monitor.state != before:
                self.sink.state("fan-1", self.monitor.state, self.monitor.detector.last_score,
                                self.monitor.threshold.value)
            now = time.monotonic()
            if now >= next_telemetry:
                next_telemetry = now + telemetry_s
                self.sink.telemetry("fan-1", self.monitor.telemetry())
            wait = start + (i + 1) * BLOCK_S - time.monotonic()
            if wait > 0:
                time.sleep(wait)

    def close(self) -> None:
        self.sink.close()
        self.publisher.stop(timeout=1.0)


def tally(sub: Subscriber, since: float, until: float) -> dict[str, tuple[int, int]]:
    out: dict[str, list[int]] = {"json": [0, 0], "sparkplug": [0, 0], "json telemetry": [0, 0]}
    for m in sub.messages:
        if not since <= m.at <= until:
            continue
        key = "sparkplug" if m.topic.startswith("spBv1.0/") else "json"
        out[key][0] += 1
        out[key][1] += len(m.topic) + len(m.payload)
        if m.topic.endswith("/telemetry"):
            out["json telemetry"][0] += 1
            out["json telemetry"][1] += len(m.topic) + len(m.payload)
    return {k: (v[0], v[1]) for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--telemetry", type=float, default=10.0)
    parser.add_argument("--heartbeat", type=float, default=60.0)
    parser.add_argument("--faults", type=int, default=3)
    args = parser.parse_args()
    configure("console", "warning")
    bundle = Bundle.load(BUNDLE)
    normal = load_audio(DEMO_DIR / "clips" / "normal_id_00_demo.wav", bundle.params.sample_rate)
    anomaly = load_audio(DEMO_DIR / "clips" / "anomaly_id_00_demo.wav", bundle.params.sample_rate)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        broker = Broker(root / "broker").start()
        sub = Subscriber(broker.port, ["edge-monitor/#", "spBv1.0/#"])
        try:
            print(f"paced as live, telemetry every {args.telemetry:g} s, Sparkplug heartbeat {args.heartbeat:g} s, "
                  f"{args.seconds:g} s per scenario; bytes = topic + payload")
            print(f"{'scenario':<10} {'session':<16} {'msgs/h':>9} {'kB/h':>9}")
            for scenario, audio in (("normal", normal), ("anomaly", anomaly)):
                rig = Rig(broker, root, f"bench-{scenario}", args.heartbeat)
                time.sleep(1.0)  # births and the online status out of the way
                since = time.perf_counter()
                rig.run(audio, args.seconds, args.telemetry)
                time.sleep(0.5)
                until = time.perf_counter()
                rig.close()
                scale = 3600.0 / args.seconds
                for key, (n, size) in tally(sub, since, until).items():
                    print(f"{scenario:<10} {key:<16} {n * scale:>9.0f} {size * scale / 1000:>9.1f}")
            # latency: normal sound, then the fault starts
            rig = Rig(broker, root, "bench-latency", args.heartbeat)
            latencies, hops = [], []
            for _ in range(args.faults):
                rig.run(normal, 12.0, args.telemetry)
                onset: list[float] = []
                seen = len(sub.messages)

                def mark(i: int, onset: list[float] = onset) -> None:
                    if i == 0:
                        onset.append(time.perf_counter())

                rig.run(anomaly, 12.0, args.telemetry, on_block=mark)
                hits = [m.at for m in sub.messages[seen:] if m.topic.startswith("spBv1.0/bench/DDATA/bench-latency")
                        and any(x.name == "Anomaly/Active" and x.value is True for x in decode(m.payload).metrics)]
                if hits:
                    latencies.append(hits[0] - onset[0])
                    if rig.started_at:
                        hops.append(hits[0] - rig.started_at[-1])
                rig.run(normal, 15.0, args.telemetry)  # recover (hysteresis, cooldown)
            rig.close()
            shown = ", ".join(f"{x:.2f}" for x in latencies)
            if latencies:
                print(f"fault onset → DDATA Anomaly/Active=true on loopback: median {statistics.median(latencies):.2f} s "
                      f"over {len(latencies)} faults ({shown} s)")
                if hops:
                    print(f"  of which anomaly_start event → DDATA received: median "
                          f"{1000 * statistics.median(hops):.1f} ms (the rest is the decision: k of n, min duration)")
            else:
                print("fault onset → DDATA: no anomaly detected in the latency runs")
        finally:
            sub.close()
            broker.kill()


if __name__ == "__main__":
    main()
