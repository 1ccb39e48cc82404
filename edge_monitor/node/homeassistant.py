"""Home Assistant MQTT discovery of the JSON topics (device-based discovery, Home Assistant 2024.11+).

One retained message, QoS 1, on ``<discovery_prefix>/device/<node>/config`` describes the node as one
device whose components (``cmps``), per monitor ``<m>``, are:

- ``<node>_<m>_anomaly``: ``binary_sensor``, device_class ``problem``, ON while ``<m>/state`` says anomaly;
- ``<node>_<m>_score``: ``sensor``, state_class ``measurement``, the mean decision score of each telemetry;
- ``<node>_<m>_event``: ``event``, event types ``anomaly_start`` / ``anomaly_update`` / ``anomaly_end`` /
  ``health`` / ``machine_stopped`` / ``machine_running``, from ``<m>/event``;
- diagnostic entities (``entity_category: diagnostic``): the state (``sensor``: normal, anomaly, stopped,
  sensor_fault, unknown), the input level in dBFS,
  the clipped fraction, and a ``binary_sensor`` (``problem``) for bad input health.

Every component is available while the retained ``<prefix>/<node>/status`` says ``online`` (a value
template on its JSON). The config is published on connect and again whenever ``homeassistant/status``
says ``online`` (Home Assistant restarted). A monitor that was in the retained config and is no longer
configured is removed: its components are published once with only their platform (``{"p": ...}``),
the documented way to remove a component of a device. ``remove()`` publishes the empty payload that
removes the whole device.

Its own small MQTT session (``mqtt:`` connection settings, client id ``edge-monitor-<node>-ha``); nothing here is
on the audio path: ``event``/``state``/``telemetry``/``device`` are no-ops (Home Assistant reads the JSON
topics directly).
"""

from __future__ import annotations

import json
import threading
from typing import Any

import paho.mqtt.client as paho
import structlog

from edge_monitor import __version__
from edge_monitor.core.events import TYPES
from edge_monitor.core.model import Bundle
from edge_monitor.node.mqtt.connection import (
    auth_hint,
    connect_async,
    json_bytes,
    make_client,
    read_password,
    topic_level,
)
from edge_monitor.node.settings import HomeAssistantSettings, MqttSettings

log = structlog.get_logger()

ORIGIN = {"name": "edge-monitor", "sw": __version__}


def discovery_config(node: str, prefix: str, monitors: list[tuple[str, Bundle | None]],
                     version: str = __version__) -> dict[str, Any]:
    """The device-based discovery payload for ``node`` whose JSON topics start with ``prefix``."""
    base = f"{prefix}/{node}"
    cmps: dict[str, dict[str, Any]] = {}
    for name, bundle in monitors:
        m = f"{base}/{name}"
        uid = f"{node}_{name}"
        model = f" ({bundle.name})" if bundle is not None else ""
        cmps[f"{uid}_anomaly"] = {
            "p": "binary_sensor", "name": f"{name} anomaly{model}", "unique_id": f"{uid}_anomaly",
            "device_class": "problem", "state_topic": f"{m}/state",
            "value_template": "{{ 'ON' if value_json.state == 'anomaly' else 'OFF' }}",
        }
        cmps[f"{uid}_score"] = {
            "p": "sensor", "name": f"{name} decision score", "unique_id": f"{uid}_score",
            "state_class": "measurement", "state_topic": f"{m}/telemetry",
            "value_template": "{{ value_json.score_mean if value_json.score_mean is not none else 'unknown' }}",
            "suggested_display_precision": 3,
        }
        cmps[f"{uid}_event"] = {
            "p": "event", "name": f"{name} events", "unique_id": f"{uid}_event", "state_topic": f"{m}/event",
            "event_types": list(TYPES),  # every event type of the schema (Home Assistant drops others)
            "value_template": "{{ {'event_type': value_json.type, 'event_id': value_json.event_id, "
                              "'score': value_json.score} | to_json }}",
        }
        cmps[f"{uid}_state"] = {
            "p": "sensor", "name": f"{name} state", "unique_id": f"{uid}_state", "entity_category": "diagnostic",
            "state_topic": f"{m}/state", "value_template": "{{ value_json.state }}",
        }
        cmps[f"{uid}_level"] = {
            "p": "sensor", "name": f"{name} input level", "unique_id": f"{uid}_level",
            "entity_category": "diagnostic", "state_class": "measurement", "unit_of_measurement": "dBFS",
            "state_topic": f"{m}/telemetry",
            "value_template": "{{ value_json.level_dbfs if value_json.level_dbfs is not none else 'unknown' }}",
        }
        cmps[f"{uid}_clipping"] = {
            "p": "sensor", "name": f"{name} clipped fraction", "unique_id": f"{uid}_clipping",
            "entity_category": "diagnostic", "state_class": "measurement", "unit_of_measurement": "%",
            "state_topic": f"{m}/telemetry", "value_template": "{{ (value_json.clip_fraction or 0) * 100 }}",
        }
        cmps[f"{uid}_input"] = {
            "p": "binary_sensor", "name": f"{name} input health", "unique_id": f"{uid}_input",
            "entity_category": "diagnostic", "device_class": "problem", "state_topic": f"{m}/telemetry",
            "value_template": "{{ 'ON' if value_json.health else 'OFF' }}",
        }
    return {
        "dev": {"ids": [f"edge-monitor-{node}"], "name": f"edge-monitor {node}", "mf": "edge-monitor",
                "mdl": "acoustic anomaly monitor", "sw": version},
        "o": dict(ORIGIN, sw=version),
        "cmps": cmps,
        "availability": [{"topic": f"{base}/status", "value_template": "{{ value_json.state }}",
                          "payload_available": "online", "payload_not_available": "offline"}],
        "qos": 1,
    }


class HomeAssistant:
    """Publishes and keeps the discovery config of one node; see the module docstring."""

    def __init__(self, settings: HomeAssistantSettings, mqtt: MqttSettings, node: str,
                 monitors: list[tuple[str, Bundle | None]]) -> None:
        self.settings = settings
        self.mqtt = mqtt
        self.node = topic_level(node, "node")
        self.discovery = topic_level(settings.discovery_prefix.strip("/"), "homeassistant.discovery_prefix",
                                     slash_ok=True)
        self.topic = f"{self.discovery}/device/{self.node}/config"
        self.status_topic = f"{self.discovery}/status"
        self.config = discovery_config(self.node, mqtt.prefix.strip("/"), monitors)
        self.client_id = settings.client_id or f"edge-monitor-{self.node}-ha"
        self._client: paho.Client | None = None
        self._lock = threading.Lock()
        self._checked_old = False
        self.published = 0
        self._problem: str | None = None

    def start(self) -> None:
        client = make_client(self.mqtt, self.client_id, persistent=False, password=read_password(self.mqtt))
        client.reconnect_delay_set(self.mqtt.reconnect_min_seconds,  # type: ignore[arg-type]
                                   max(self.mqtt.reconnect_min_seconds, self.mqtt.reconnect_max_seconds))
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        self._client = client
        connect_async(client, self.mqtt, persistent=False)
        client.loop_start()

    def stop(self, timeout: float = 1.0) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            stopper = threading.Thread(target=client.loop_stop, daemon=True)
            stopper.start()
            stopper.join(timeout)

    # the sink interface: Home Assistant reads the JSON topics itself
    def event(self, event: Any) -> None:
        pass

    def state(self, monitor: str, state: str, score: float | None, threshold: float | None) -> None:
        pass

    def telemetry(self, monitor: str, values: dict) -> None:
        pass

    def device(self, monitor: str, ok: bool) -> None:
        pass

    def remove(self, timeout: float = 2.0) -> None:
        """Remove the whole device from Home Assistant (the empty retained payload)."""
        if self._client is not None:
            self._client.publish(self.topic, b"", qos=1, retain=True).wait_for_publish(timeout)

    def _publish(self, why: str) -> None:
        if self._client is not None:
            self._client.publish(self.topic, json_bytes(self.config), qos=1, retain=True)
            self.published += 1
            log.info("home assistant discovery published", topic=self.topic, why=why,
                     monitors=len(self.config["cmps"]) // 7)

    def _on_connect(self, client: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            problem = f"broker refused the Home Assistant session: {reason}{auth_hint(reason, self.mqtt)}"
            if problem != self._problem:
                self._problem = problem
                log.error("home assistant discovery cannot connect; retrying", problem=problem)
            return
        self._problem = None
        # our own retained config first (to remove monitors that are gone), then Home Assistant's status
        client.subscribe([(self.topic, 1), (self.status_topic, 1)])
        if self._checked_old:
            self._publish("reconnected")
        else:
            # no retained config at all: nothing to compare, publish after a short wait for it
            threading.Timer(1.0, self._first_publish).start()

    def _first_publish(self) -> None:
        with self._lock:
            if not self._checked_old:
                self._checked_old = True
                self._publish("connected")

    def _on_message(self, _c: paho.Client, _u: Any, message: paho.MQTTMessage) -> None:
        if message.topic == self.status_topic:
            if message.payload.strip() == b"online":
                self._publish("home assistant online")
            return
        if message.topic != self.topic:
            return
        with self._lock:
            if self._checked_old:
                return
            self._checked_old = True
            try:
                old = json.loads(message.payload)["cmps"] if message.payload else {}
                assert isinstance(old, dict)
            except (ValueError, KeyError, TypeError, AssertionError):
                old = {}
            gone = {key: {"p": c.get("p")} for key, c in old.items()
                    if key not in self.config["cmps"] and isinstance(c, dict) and c.get("p") and len(c) > 1}
            if gone:
                log.info("home assistant: removing the entities of monitors no longer configured",
                         components=sorted(gone))
                cmps = dict(self.config["cmps"], **gone)
                self._client.publish(self.topic, json_bytes(dict(self.config, cmps=cmps)), qos=1, retain=True)
            self._publish("connected")
