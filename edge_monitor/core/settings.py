"""Typed, frozen settings of one monitor: what the core pipeline (``Monitor``, ``Detector``, ``Health``) needs.

Node-wide settings (audio devices, MQTT, logging) live in ``edge_monitor.node.settings``. Every default
here is the default a plant engineer gets when the key is left out of ``config.yaml``; every field
carries its one bound (``core/checks.py``), checked whether the settings come from ``config.yaml`` or
are built in code. Durations are in seconds, levels in dB.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_monitor.core.checks import (
    FRACTION,
    At,
    Validated,
    boolean,
    channel,
    device,
    k_of_n,
    name,
    non_negative,
    number,
    path,
    positive,
    setting,
    show,
)

MAX_DECISION_SECONDS = 60.0   # a decision window longer than this is a typo (and would hold a huge history)
MAX_THRESHOLD = 1000.0        # window errors of standardised log-mel windows are O(1); 1e3 can never be reached


@dataclass(frozen=True)
class DecisionSettings(Validated):
    """How per-window errors become anomaly decisions (see ``detector.py``)."""

    window_seconds: float = setting(1.0, positive(MAX_DECISION_SECONDS))  # decision score = mean window error over this much audio
    step_seconds: float = setting(0.25, positive(MAX_DECISION_SECONDS))   # a decision every this many seconds
    k_of_n: tuple[int, int] = setting((3, 4), k_of_n)     # k of the last n decisions above threshold → anomaly candidate
    hysteresis: float = setting(0.9, FRACTION)             # anomaly ends when k of n decisions fall below hysteresis × threshold
    min_duration_seconds: float = setting(1.0, non_negative(3600))  # a candidate must last this long before anomaly_start
    cooldown_seconds: float = setting(5.0, non_negative(86400))     # no new anomaly_start this long after an anomaly_end
    update_seconds: float = setting(10.0, positive(3600))           # anomaly_update every this many seconds while it lasts
    explain_bands: int = setting(3, number(1, 16, integer=True))    # mel band ranges named in each anomaly event

    def _check_fields(self, at: At) -> None:
        if self.step_seconds > self.window_seconds:
            raise at.key("step_seconds").bad(f"≤ window_seconds ({show(self.window_seconds)})", self.step_seconds)


@dataclass(frozen=True)
class HealthSettings(Validated):
    """When the input itself is bad (see ``health.py``). Decisions are suspended while it is."""

    window_seconds: float = setting(1.0, positive(MAX_DECISION_SECONDS))  # health is judged over this much audio
    clip_fraction: float = setting(0.001, FRACTION)   # more full-scale samples than this fraction → clipping
    dead_fraction: float = setting(0.99, FRACTION)    # more exact digital zeros than this fraction → dead input
    low_db: float = setting(30.0, positive(200))      # log-mel level this far below the training level → silence
    high_db: float = setting(20.0, positive(200))     # this far above → level too high (gain or wrong machine)
    hold_seconds: float = setting(2.0, non_negative(3600))  # a condition must hold (or be gone) this long


@dataclass(frozen=True)
class MachineSettings(Validated):
    """Is the machine running or stopped (see ``machine.py``)? Needs a bundle that records its level."""

    enabled: bool = setting(True, boolean)            # false: never judge the machine stopped (old behaviour)
    # stopped below p1 − margin_db of the training level distribution, running again above p1 − margin_db/2;
    # 10 dB: faults of the real MIMII fans lie down to 5.6 dB below p1, a fan switched off (−22 dB) ≥ 14 dB below
    margin_db: float = setting(10.0, positive(100))
    hold_seconds: float = setting(5.0, non_negative(3600))  # the level must stay past the limit this long


@dataclass(frozen=True)
class MonitorSettings(Validated):
    name: str = setting(check=name)
    model: str = setting(check=path())                              # path of a bundle folder
    channel: int | str = setting(0, channel)                        # input channel (0-based); replay also takes "mix"
    device: str | int | None = setting(None, device)                # overrides audio.device for this monitor
    threshold: float | None = setting(None, number(0, MAX_THRESHOLD, lo_open=True, null=True))  # overrides the bundle's
    decision: DecisionSettings = setting(factory=DecisionSettings, section=DecisionSettings)
    health: HealthSettings = setting(factory=HealthSettings, section=HealthSettings)
    machine: MachineSettings = setting(factory=MachineSettings, section=MachineSettings)
