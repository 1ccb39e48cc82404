"""Typed, frozen settings of a node (a monitor's own settings are in ``edge_monitor.core.settings``). ``config.py`` builds them from ``config.yaml``; code takes them as values.

Every default here is the default a plant engineer gets when the key is left out of ``config.yaml``.
Durations are in seconds, levels in dB.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edge_monitor.core.settings import DecisionSettings, HealthSettings, MonitorSettings  # noqa: F401 (re-exported)


@dataclass(frozen=True)
class AudioSettings:
    device: str | int | None = None      # name substring or index; None = the system's default input
    sample_rate: int | None = None       # capture rate; None = the model's rate (resampled if unsupported)
    block_seconds: float = 0.064         # audio callback block
    ring_seconds: float = 10.0           # ring buffer per monitor; older samples are dropped and counted


@dataclass(frozen=True)
class TlsSettings:
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False               # skip host name check (test brokers only)


@dataclass(frozen=True)
class OutboxSettings:
    path: str = "/var/lib/edge-monitor/outbox.sqlite"
    max_messages: int = 100_000          # when full: oldest telemetry first, events last; every loss counted


@dataclass(frozen=True)
class MqttSettings:
    enabled: bool = False
    host: str = "localhost"
    port: int = 1883
    prefix: str = "edge-monitor"
    client_id: str | None = None         # None → "edge-monitor-<node>"
    protocol: str = "5"                  # "5" or "3.1.1"
    keepalive: int = 30
    tls: TlsSettings | None = None
    username: str | None = None
    password_file: str | None = None     # the password never lives in config.yaml
    password_env: str | None = None
    telemetry_seconds: float = 10.0
    reconnect_min_seconds: float = 1.0
    reconnect_max_seconds: float = 60.0
    outbox: OutboxSettings = field(default_factory=OutboxSettings)


@dataclass(frozen=True)
class LoggingSettings:
    level: str = "info"                  # debug | info | warning | error
    format: str = "auto"                 # auto (JSON under systemd) | console | json


@dataclass(frozen=True)
class Settings:
    node: str
    monitors: tuple[MonitorSettings, ...]
    audio: AudioSettings = field(default_factory=AudioSettings)
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    events_jsonl: str | None = None      # also append every event to this file as JSON lines
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    source: str | None = None            # the file these settings were read from
    # SCADA (issue 12): the classes are at the end of this file
    sparkplug: SparkplugSettings = field(default_factory=lambda: SparkplugSettings())
    homeassistant: HomeAssistantSettings = field(default_factory=lambda: HomeAssistantSettings())

    def monitor(self, name: str) -> MonitorSettings:
        for m in self.monitors:
            if m.name == name:
                return m
        raise KeyError(name)


# ---------------------------------------------------------------- SCADA: Sparkplug B and Home Assistant (issue 12)
# Self-contained block: the config schema for these is the matching block at the end of config.py.

@dataclass(frozen=True)
class SparkplugSettings:
    """The Sparkplug B 3.0 edge node. It talks to the broker of ``mqtt:`` (host, port, TLS, login) in a
    session of its own (clean session, QoS 0 data, nothing retained); ``mqtt.enabled`` is not needed."""

    enabled: bool = False
    group_id: str = "edge-monitor"       # Sparkplug group (one topic level: no '/', '+', '#')
    edge_node_id: str | None = None      # None → the node's name
    client_id: str | None = None         # None → "edge-monitor-<node>-spb"; must differ from mqtt.client_id
    primary_host_id: str | None = None   # birth only while this host's STATE says online; None = do not wait
    host_state: str = "3.0"              # "3.0": spBv1.0/STATE/<host> (JSON); "legacy": STATE/<host> (ONLINE/OFFLINE)
    heartbeat_seconds: float = 60.0      # DDATA with every changing metric at least this often (report by exception otherwise)
    deadband: float = 0.05               # a Double metric is re-sent when it moved more than this fraction of the threshold (score) or 0.5 dB (level)
    queue_max: int = 10_000              # calls waiting for the session thread; more are dropped and counted
    state_dir: str = "/var/lib/edge-monitor/sparkplug"  # bdSeq and the store-and-forward outbox
    history_max: int = 10_000            # anomaly transitions kept while the broker is away (oldest go first, counted)


@dataclass(frozen=True)
class HomeAssistantSettings:
    """Home Assistant MQTT discovery of the JSON topics (needs ``mqtt.enabled``)."""

    enabled: bool = False
    discovery_prefix: str = "homeassistant"
    client_id: str | None = None         # None → "edge-monitor-<node>-ha"
