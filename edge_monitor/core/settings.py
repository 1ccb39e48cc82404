"""Typed, frozen settings of one monitor: what the core pipeline (``Monitor``, ``Detector``, ``Health``) needs.

Node-wide settings (audio devices, MQTT, logging) live in ``edge_monitor.node.settings``. Every default
here is the default a plant engineer gets when the key is left out of ``config.yaml``. Durations are in
seconds, levels in dB.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DecisionSettings:
    """How per-window errors become anomaly decisions (see ``detector.py``)."""

    window_seconds: float = 1.0          # decision score = mean window error over this much audio
    step_seconds: float = 0.25           # a decision every this many seconds
    k_of_n: tuple[int, int] = (3, 4)     # k of the last n decisions above threshold → anomaly candidate
    hysteresis: float = 0.9              # anomaly ends when k of n decisions fall below hysteresis × threshold
    min_duration_seconds: float = 1.0    # a candidate must last this long before anomaly_start is emitted
    cooldown_seconds: float = 5.0        # no new anomaly_start this long after an anomaly_end
    update_seconds: float = 10.0         # anomaly_update every this many seconds while an anomaly lasts
    explain_bands: int = 3               # mel band ranges named in each anomaly event

@dataclass(frozen=True)
class HealthSettings:
    """When the input itself is bad (see ``health.py``). Decisions are suspended while it is."""

    window_seconds: float = 1.0          # health is judged over this much audio
    clip_fraction: float = 0.001         # more full-scale samples than this fraction → clipping
    dead_fraction: float = 0.99          # more exact digital zeros than this fraction → dead input
    low_db: float = 30.0                 # log-mel level this far below the training level → silence / machine off
    high_db: float = 20.0                # this far above → level too high (gain or wrong machine)
    hold_seconds: float = 2.0            # a condition must hold (or be gone) this long to change health

@dataclass(frozen=True)
class MonitorSettings:
    name: str
    model: str                           # path of a bundle folder
    channel: int = 0                     # input channel of the device (0-based)
    device: str | int | None = None      # overrides audio.device for this monitor
    threshold: float | None = None       # overrides the bundle's decision threshold
    decision: DecisionSettings = field(default_factory=DecisionSettings)
    health: HealthSettings = field(default_factory=HealthSettings)
