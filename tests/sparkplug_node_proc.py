"""A Sparkplug edge node in its own process, for the tests of bdSeq across restarts, ``kill -9`` and a clean stop.

``python sparkplug_node_proc.py <port> <state_dir>``: one device ``fan-1``; SIGTERM stops it cleanly.
"""

from __future__ import annotations

import signal
import sys
import threading

from edge_monitor.node.settings import MqttSettings, SparkplugSettings
from edge_monitor.node.sparkplug.node import DeviceInfo, SparkplugNode


def main() -> None:
    port, state_dir = int(sys.argv[1]), sys.argv[2]
    node = SparkplugNode(SparkplugSettings(enabled=True, group_id="plant", state_dir=state_dir),
                         MqttSettings(host="127.0.0.1", port=port, reconnect_min_seconds=0.2,
                                      reconnect_max_seconds=0.5, keepalive=5),
                         "proc", [DeviceInfo("fan-1", "fan", "id_00", "ab" * 32, 1.0)])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    node.start()
    print("started", file=sys.stderr, flush=True)
    stop.wait()
    node.stop()


if __name__ == "__main__":
    main()
