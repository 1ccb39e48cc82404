"""A publisher in its own process, for the tests that kill it (-9) or restart it.

    python tests/mqtt_publisher_proc.py --port P --outbox PATH [--events N] [--first K] [--then hang|stop]

Starts a :class:`Publisher`, publishes a state, ``N`` events (numbers K..K+N-1, see ``make_event``) and a
telemetry message, prints ``published <N>`` and then hangs (waiting to be killed) or stops cleanly and
prints its stats as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mqtt_helpers import make_event  # noqa: E402

from edge_monitor.node.log import configure  # noqa: E402
from edge_monitor.node.mqtt.publisher import Publisher  # noqa: E402
from edge_monitor.node.settings import MqttSettings, OutboxSettings  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--outbox", required=True)
    parser.add_argument("--node", default="node1")
    parser.add_argument("--protocol", default="5")
    parser.add_argument("--events", type=int, default=0)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--then", choices=("hang", "stop"), default="hang")
    args = parser.parse_args()
    configure("console", "info")  # log lines to stderr: stdout is for the test
    settings = MqttSettings(enabled=True, host="127.0.0.1", port=args.port, protocol=args.protocol, keepalive=5,
                            reconnect_min_seconds=0.2, reconnect_max_seconds=0.5,
                            outbox=OutboxSettings(path=args.outbox, max_messages=10_000))
    publisher = Publisher(settings, args.node, monitors=[{"name": "fan-1", "model": "fan-id_00", "sha256": "ab" * 32}],
                          version="test")
    publisher.start()
    publisher.publish_state("fan-1", "anomaly", 2.0, 1.0)
    for n in range(args.first, args.first + args.events):
        publisher.publish_event(make_event(n, node=args.node))
    publisher.publish_telemetry("fan-1", {"score_mean": 0.5})
    print(f"published {args.events}", flush=True)
    if args.then == "stop":
        publisher.wait_drained(5.0)
        stats = publisher.stats()
        publisher.stop()
        print(json.dumps(stats), flush=True)
        return
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
