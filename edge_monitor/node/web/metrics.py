"""``GET /metrics``: the node in Prometheus' text format, through prometheus-client.

A custom collector in a registry of its own (not the process-wide default one): at each scrape it reads
the snapshots of ``live.LiveView``, so the processing threads pay nothing for metrics between scrapes.
"""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from edge_monitor import __version__

STATES = ("starting", "normal", "anomaly", "stopped", "sensor_fault")


class NodeCollector:
    def __init__(self, live):
        self.live = live

    def collect(self):
        live = self.live
        labels = ["monitor"]
        score = GaugeMetricFamily("edge_monitor_decision_score", "Decision score (mean window error over the "
                                  "decision window) of the last decision", labels=labels)
        threshold = GaugeMetricFamily("edge_monitor_threshold", "Decision threshold in use", labels=labels)
        state = GaugeMetricFamily("edge_monitor_state", "1 for the monitor's current state", labels=["monitor", "state"])
        level = GaugeMetricFamily("edge_monitor_level_dbfs", "Input level of the last second, dBFS (-Inf: digital silence)", labels=labels)
        clip = GaugeMetricFamily("edge_monitor_clip_fraction", "Fraction of clipped samples in the last second",
                                 labels=labels)
        drops = CounterMetricFamily("edge_monitor_dropped_samples", "Audio samples lost before processing",
                                    labels=labels)
        infer = CounterMetricFamily("edge_monitor_inference_seconds", "Time spent in the interpreter", labels=labels)
        invokes = CounterMetricFamily("edge_monitor_inference_calls", "Interpreter calls", labels=labels)
        anomalies = CounterMetricFamily("edge_monitor_anomalies", "Anomalies started (this process)", labels=labels)
        for view in live.current():
            snap = view.snapshot()
            name = [view.name]
            if snap["score"] is not None:
                score.add_metric(name, snap["score"])
            if snap["threshold"] is not None:
                threshold.add_metric(name, snap["threshold"])
            for s in STATES:
                state.add_metric([view.name, s], 1.0 if snap["state"] == s else 0.0)
            level_dbfs = view.monitor.health.level_dbfs  # -inf for digital silence: Prometheus takes it
            if not math.isnan(level_dbfs):  # NaN: no level yet
                level.add_metric(name, level_dbfs)
            if snap["clip_fraction"] is not None:
                clip.add_metric(name, snap["clip_fraction"])
            drops.add_metric(name, snap["drops"])
            calls, seconds = view.inference()
            infer.add_metric(name, seconds)
            invokes.add_metric(name, calls)
            anomalies.add_metric(name, snap["anomalies_total"])
        yield from (score, threshold, state, level, clip, drops, infer, invokes, anomalies)
        mqtt = live.mqtt()
        yield GaugeMetricFamily("edge_monitor_mqtt_connected", "1 while the MQTT session is up",
                                value=1.0 if mqtt["connected"] else 0.0)
        yield GaugeMetricFamily("edge_monitor_outbox_depth", "Messages waiting in the MQTT outbox",
                                value=mqtt["outbox_depth"])
        yield CounterMetricFamily("edge_monitor_mqtt_published", "MQTT messages acknowledged (this process)",
                                  value=mqtt["published"])
        yield CounterMetricFamily("edge_monitor_mqtt_dropped", "MQTT messages dropped by a full outbox",
                                  value=mqtt["dropped"])
        yield GaugeMetricFamily("edge_monitor_evidence_bytes", "Disk used by evidence clips",
                                value=live.evidence_bytes())
        info = InfoMetricFamily("edge_monitor_build", "edge-monitor version and node")
        info.add_metric([], {"version": __version__, "node": live.daemon.settings.node})
        yield info


def exposition(live) -> tuple[bytes, str]:
    """The text exposition of ``live`` (its registry is made on first use)."""
    registry = getattr(live, "registry", None)
    if registry is None:
        registry = live.registry = CollectorRegistry(auto_describe=False)
        registry.register(NodeCollector(live))
    return generate_latest(registry), CONTENT_TYPE_LATEST
