"""Typed, frozen settings of a node (a monitor's own settings are in ``edge_monitor.core.settings``).

``config.py`` builds them from ``config.yaml``; code takes them as values. Every default here is the
default a plant engineer gets when the key is left out of ``config.yaml``, and every field carries its
one bound (``core/checks.py``), checked whether the settings come from a file or are built in code:
what ``check`` accepts, ``run`` can start. Durations are in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_monitor.core.checks import (
    FRACTION,
    At,
    Validated,
    boolean,
    choice,
    device,
    name,
    number,
    path,
    positive,
    setting,
    show,
    text,
)
from edge_monitor.core.settings import (  # noqa: F401 (re-exported)
    DecisionSettings,
    HealthSettings,
    MachineSettings,
    MonitorSettings,
)

MAX_RING_SECONDS = 120.0   # a ring per monitor, float32 at up to 48 kHz: 23 MB at this bound


def _protocol(value: object, at: At) -> object:
    if value == "5" or (type(value) is int and value == 5):
        return "5"
    if value == "3.1.1":
        return "3.1.1"
    raise at.bad('5 or "3.1.1"', value)


@dataclass(frozen=True)
class AudioSettings(Validated):
    device: str | int | None = setting(None, device)   # name substring or index; None = the system's default input
    sample_rate: int | None = setting(None, number(8000, 192000, integer=True, null=True))  # None = the model's rate
    block_seconds: float = setting(0.064, FRACTION)     # audio callback block
    ring_seconds: float = setting(10.0, number(1, MAX_RING_SECONDS))  # ring per monitor; older samples dropped, counted

    def _check_fields(self, at: At) -> None:
        if self.ring_seconds < 4 * self.block_seconds:
            raise at.key("ring_seconds").bad(f"≥ 4 × block_seconds ({4 * self.block_seconds:g})", self.ring_seconds)


@dataclass(frozen=True)
class TlsSettings(Validated):
    ca_file: str | None = setting(None, path(null=True))
    cert_file: str | None = setting(None, path(null=True))
    key_file: str | None = setting(None, path(null=True))
    insecure: bool = setting(False, boolean)            # skip host name check (test brokers only)


@dataclass(frozen=True)
class OutboxSettings(Validated):
    path: str = setting("/var/lib/edge-monitor/outbox.sqlite", path())
    # when full: oldest telemetry first, events last; every loss counted
    max_messages: int = setting(100_000, number(1, 10_000_000, integer=True))


@dataclass(frozen=True)
class MqttSettings(Validated):
    enabled: bool = setting(False, boolean)
    host: str = setting("localhost", text(r"\S+", "a host name or address", max_length=253))
    port: int = setting(1883, number(1, 65535, integer=True))
    prefix: str = setting("edge-monitor", text(r"[^/+#\x00]([^+#\x00]*[^/+#\x00])?",
                                               "a non-empty topic prefix without '+', '#' or a leading or "
                                               "trailing '/'", max_length=200))
    client_id: str | None = setting(None, text(r"\S+", "a client id without spaces", null=True, max_length=200))
    protocol: str = setting("5", _protocol)             # "5" or "3.1.1"
    keepalive: int = setting(30, number(1, 3600, integer=True))  # seconds; also the connect timeout
    tls: TlsSettings | None = setting(None, section=TlsSettings, null=True)  # null: no TLS
    username: str | None = setting(None, text(r".+", "a user name", null=True, max_length=256))
    password_file: str | None = setting(None, path(null=True))  # the password never lives in config.yaml
    password_env: str | None = setting(None, text(r"[A-Za-z_][A-Za-z0-9_]*", "an environment variable name",
                                                  null=True, max_length=256))
    telemetry_seconds: float = setting(10.0, positive(86400))
    reconnect_min_seconds: float = setting(1.0, positive(3600))
    reconnect_max_seconds: float = setting(60.0, positive(86400))
    outbox: OutboxSettings = setting(factory=OutboxSettings, section=OutboxSettings)

    def _check_fields(self, at: At) -> None:
        if self.reconnect_min_seconds > self.reconnect_max_seconds:
            raise at.key("reconnect_min_seconds").bad(
                f"≤ reconnect_max_seconds ({show(self.reconnect_max_seconds)})", self.reconnect_min_seconds)
        if self.password_file is not None and self.password_env is not None:
            raise at.key("password_env").fail("password_file is set too; keep one of the two", self.password_env)


@dataclass(frozen=True)
class LoggingSettings(Validated):
    level: str = setting("info", choice("debug", "info", "warning", "error"))
    format: str = setting("auto", choice("auto", "console", "json"))  # auto: JSON under systemd


@dataclass(frozen=True)
class EvidenceSettings(Validated):
    """The audio behind every alert (``node/evidence.py``): WAV + log-mel PNG in ``<state_dir>/evidence/<monitor>/``.

    The defaults fit a 16-GB SD card: a 70-s clip at 16 kHz is 2.2 MB, so 2 GB holds about 900 alerts."""

    enabled: bool = setting(True, boolean)
    pre_roll_seconds: float = setting(10.0, number(0, 60))      # audio kept before the anomaly's start
    max_seconds: float = setting(60.0, number(1, 600))          # anomaly audio per clip (the clip is cut here)
    quota_mb: float = setting(2000.0, number(1, 1_000_000))     # evidence/ at most this big: oldest clips go first
    max_age_days: float = setting(90.0, number(0.001, 36500))   # clips older than this go (never a monitor's newest)
    normal_sample_seconds: float = setting(3600.0, number(0, 31_536_000))  # keep a normal clip this often; 0: off
    normal_sample_max: int = setting(500, number(1, 1_000_000, integer=True))  # rolling normal clips per monitor


# ---------------------------------------------------------------- SCADA: Sparkplug B and Home Assistant (issue 12)

_TOPIC_LEVEL = text(r"[^/+#\x00]+", "a non-empty MQTT topic level without '/', '+' or '#'", max_length=200)


@dataclass(frozen=True)
class SparkplugSettings(Validated):
    """The Sparkplug B 3.0 edge node. It talks to the broker of ``mqtt:`` (host, port, TLS, login) in a
    session of its own (clean session, QoS 0 data, nothing retained); ``mqtt.enabled`` is not needed."""

    enabled: bool = setting(False, boolean)
    group_id: str = setting("edge-monitor", _TOPIC_LEVEL)     # Sparkplug group (one topic level)
    edge_node_id: str | None = setting(None, text(r"[^/+#\x00]+", "null or a non-empty MQTT topic level without "
                                                  "'/', '+' or '#'", null=True, max_length=200))  # None: the node's name
    client_id: str | None = setting(None, text(r"\S+", "a client id without spaces", null=True, max_length=200))
    primary_host_id: str | None = setting(None, text(r"[^/+#\x00]+", "a non-empty MQTT topic level without '/', "
                                                     "'+' or '#'", null=True, max_length=200))  # birth only while online
    host_state: str = setting("3.0", choice("3.0", "legacy"))  # "3.0": spBv1.0/STATE/<host> JSON; legacy: STATE/<host>
    heartbeat_seconds: float = setting(60.0, number(1, 86400))  # every changing metric at least this often
    deadband: float = setting(0.05, number(0, 1))  # a Double re-sent when it moved this fraction of the threshold
    queue_max: int = setting(10_000, number(10, 1_000_000, integer=True))  # waiting calls; more dropped, counted
    state_dir: str = setting("/var/lib/edge-monitor/sparkplug", path())  # bdSeq and the store-and-forward outbox
    history_max: int = setting(10_000, number(10, 1_000_000, integer=True))  # transitions kept while the broker is away


@dataclass(frozen=True)
class HomeAssistantSettings(Validated):
    """Home Assistant MQTT discovery of the JSON topics (needs ``mqtt.enabled``)."""

    enabled: bool = setting(False, boolean)
    discovery_prefix: str = setting("homeassistant", text(r"[^/+#\x00]([^+#\x00]*[^/+#\x00])?",
                                                          "a non-empty topic prefix without '+', '#' or a leading "
                                                          "or trailing '/'", max_length=200))
    client_id: str | None = setting(None, text(r"\S+", "a client id without spaces", null=True, max_length=200))


@dataclass(frozen=True)
class HttpSettings(Validated):
    """The node's page, ``/metrics`` and ``/healthz`` (``node/web/``), served by ``edge-monitor run``.

    Off by default. Anything but a loopback ``bind`` needs ``token_file``: a file (mode 0600, outside
    config.yaml) holding the token every request must carry; ``check`` refuses the config otherwise."""

    enabled: bool = setting(False, boolean)
    bind: str = setting("127.0.0.1", text(r"[0-9A-Za-z.:\-]+", "an IP address or host name to listen on",
                                          max_length=253))
    port: int = setting(8470, number(1, 65535, integer=True))
    token_file: str | None = setting(None, path(null=True))

    def _check_fields(self, at: At) -> None:
        if self.enabled and self.token_file is None and not is_loopback(self.bind):
            raise at.key("token_file").fail(
                f"bind {self.bind} reaches beyond this machine: set http.token_file to a file (mode 0600) holding "
                "a token, or bind 127.0.0.1 and use an SSH tunnel", None)


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Settings(Validated):
    node: str = setting(check=name)
    monitors: tuple[MonitorSettings, ...] = setting(items=MonitorSettings)
    audio: AudioSettings = setting(factory=AudioSettings, section=AudioSettings)
    mqtt: MqttSettings = setting(factory=MqttSettings, section=MqttSettings)
    events_jsonl: str | None = setting(None, path(null=True))  # also append every event to this file as JSON lines
    # the node's own state: calibration/ (per-monitor thresholds), evidence/ (alert clips), normal/ (clips for retraining)
    state_dir: str = setting("/var/lib/edge-monitor", path())
    evidence: EvidenceSettings = setting(factory=EvidenceSettings, section=EvidenceSettings)
    logging: LoggingSettings = setting(factory=LoggingSettings, section=LoggingSettings)
    sparkplug: SparkplugSettings = setting(factory=SparkplugSettings, section=SparkplugSettings)  # SCADA (issue 12)
    homeassistant: HomeAssistantSettings = setting(factory=HomeAssistantSettings, section=HomeAssistantSettings)
    http: HttpSettings = setting(factory=HttpSettings, section=HttpSettings)  # the node's page (issue 11)
    source: str | None = None            # the file these settings were read from (not a config key)

    def _check_fields(self, at: At) -> None:
        if not self.monitors:
            raise at.key("monitors").bad("a non-empty list of monitors", [])
        first: dict[str, int] = {}
        for i, monitor in enumerate(self.monitors):
            if monitor.name in first:
                raise at.key("monitors").item(i).key("name").fail(
                    f"duplicate monitor name (monitors[{first[monitor.name]}] has it)", monitor.name)
            first[monitor.name] = i
        if self.homeassistant.enabled and not self.mqtt.enabled:
            raise at.key("homeassistant").key("enabled").fail(
                "Home Assistant discovery describes the JSON topics: set mqtt.enabled: true too", True)
        sp = self.sparkplug
        if sp.enabled and sp.client_id is not None and sp.client_id == (self.mqtt.client_id or f"edge-monitor-{self.node}"):
            raise at.key("sparkplug").key("client_id").fail("must differ from the JSON session's client id",
                                                           sp.client_id)

    def monitor(self, name: str) -> MonitorSettings:
        for m in self.monitors:
            if m.name == name:
                return m
        raise KeyError(name)

