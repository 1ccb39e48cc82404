"""The SCADA sinks beside the JSON publisher: the Sparkplug B edge node and Home Assistant discovery.

The daemon's hook (and the one loop's, later) is only: ``start_scada(settings, bundles, publisher)`` →
a list of sinks, each with ``event(e)``, ``state(monitor, state, score, threshold)``,
``telemetry(monitor, values)``, ``device(monitor, ok)`` and ``stop()``; none of them blocks the caller.
"""

from __future__ import annotations

from typing import Any

from edge_monitor.core.model import Bundle
from edge_monitor.node.settings import Settings


def start_scada(settings: Settings, bundles: dict[str, Bundle], publisher: Any = None) -> list[Any]:
    """Construct and start what ``sparkplug:`` and ``homeassistant:`` enable (nothing by default)."""
    sinks: list[Any] = []
    try:
        if settings.sparkplug.enabled:
            from edge_monitor.node.sparkplug.node import DeviceInfo, SparkplugNode

            devices = [DeviceInfo(m.name, bundles[m.name].machine_type, bundles[m.name].machine_id,
                                  bundles[m.name].sha256, float(m.threshold or bundles[m.name].threshold))
                       for m in settings.monitors]
            depth = (lambda: publisher.stats()["queued"]) if publisher is not None else None
            node = SparkplugNode(settings.sparkplug, settings.mqtt, settings.node, devices, outbox_depth=depth)
            node.start()
            sinks.append(node)
        if settings.homeassistant.enabled:
            from edge_monitor.node.homeassistant import HomeAssistant

            ha = HomeAssistant(settings.homeassistant, settings.mqtt, settings.node,
                               [(m.name, bundles[m.name]) for m in settings.monitors])
            ha.start()
            sinks.append(ha)
    except BaseException:
        for sink in sinks:
            sink.stop()
        raise
    return sinks
