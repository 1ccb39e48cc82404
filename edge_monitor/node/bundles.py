"""The model bundles a node config names, loaded and checked against that config."""

from __future__ import annotations

from edge_monitor.core.detector import decision_length
from edge_monitor.core.errors import BundleError
from edge_monitor.core.model import Bundle
from edge_monitor.node.settings import Settings


def open_bundles(settings: Settings) -> dict[str, Bundle]:
    """Load and check the bundle of every monitor against the node's settings; errors name the monitor."""
    bundles: dict[str, Bundle] = {}
    for i, m in enumerate(settings.monitors):
        where = f"monitors[{i}] ({m.name})"
        try:
            bundle = Bundle.load(m.model)
        except BundleError as exc:
            raise BundleError(f"{where}: {exc}") from None
        rate = settings.audio.sample_rate
        if rate is not None and rate < bundle.params.sample_rate:
            raise BundleError(f"{where}: the model {bundle.name} needs {bundle.params.sample_rate} Hz audio but "
                              f"audio.sample_rate is {rate}; capture at {bundle.params.sample_rate} Hz or more")
        decision = m.decision
        if decision_length(decision.window_seconds, bundle.params) < decision_length(decision.step_seconds,
                                                                                      bundle.params):
            raise BundleError(f"{where}: decision.step_seconds is longer than decision.window_seconds")
        bundles[m.name] = bundle
    return bundles
