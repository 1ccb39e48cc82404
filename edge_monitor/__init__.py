"""edge-monitor: acoustic anomaly detection for machines, on the edge.

Layers (a test enforces the import rules):

- ``edge_monitor.core``: pure and I/O-free — features, WAV reading, resampling, model bundle and
  manifest, detector, health, events, the Monitor and the loop around it. Imports numpy, scipy, the
  interpreter; never ``node`` or ``commands``.
- ``edge_monitor.node``: what only a sensor node needs — settings and config, ring, microphone,
  daemon, systemd, logging, MQTT.
- ``edge_monitor.commands``: the command line, one module per command, imported only when chosen.
- ``training`` (beside this package) imports only ``core``.
"""

from pathlib import Path

__version__ = "0.1.0"

DEMO_DIR = Path(__file__).resolve().parent / "demo"
"""The bundled demo: a fan id_00 bundle and two clips (``edge-monitor demo``)."""
