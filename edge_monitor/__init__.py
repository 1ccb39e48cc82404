"""edge-monitor: acoustic anomaly detection for machines, on the edge."""

__version__ = "0.1.0"
