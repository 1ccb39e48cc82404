"""Home Assistant device-based MQTT discovery on a real mosquitto: the payload against the keys Home Assistant
documents, the value templates rendered (Jinja2, as Home Assistant does) on real messages of our publisher,
re-publishing on ``homeassistant/status``, removing the entities of a monitor that is gone.
"""

from __future__ import annotations

import json
import time

import pytest
from mqtt_helpers import MOSQUITTO, Broker, Subscriber, make_event

from edge_monitor.node.config import ConfigError, parse
from edge_monitor.node.homeassistant import HomeAssistant
from edge_monitor.node.mqtt.publisher import Publisher
from edge_monitor.node.settings import (
    HomeAssistantSettings,
    MqttSettings,
    OutboxSettings,
)

pytestmark = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed (apt-get install mosquitto)")
jinja2 = pytest.importorskip("jinja2")

# The keys of the documentation of MQTT discovery (device-based discovery, abbreviations allowed) and of the
# binary_sensor / sensor / event MQTT platforms, with the ones each requires.
DEVICE_KEYS = {"ids", "identifiers", "name", "mf", "manufacturer", "mdl", "model", "sw", "sw_version", "hw",
               "hw_version", "sn", "serial_number", "cns", "connections", "sa", "suggested_area", "via_device",
               "cu", "configuration_url", "mdl_id", "model_id"}
ORIGIN_KEYS = {"name", "sw", "sw_version", "url", "support_url"}
TOP_KEYS = {"dev", "device", "o", "origin", "cmps", "components", "availability", "availability_topic",
            "availability_mode", "avty", "qos", "state_topic", "stat_t", "command_topic", "encoding", "e"}
COMMON = {"p", "platform", "name", "unique_id", "uniq_id", "object_id", "entity_category", "ent_cat", "icon",
          "availability", "availability_mode", "enabled_by_default", "json_attributes_topic",
          "json_attributes_template", "qos", "state_topic", "value_template", "device_class", "encoding",
          "default_entity_id", "entity_picture"}
PLATFORMS = {
    "binary_sensor": (COMMON | {"payload_on", "payload_off", "off_delay", "expire_after", "force_update"},
                      {"state_topic"}),
    "sensor": (COMMON | {"state_class", "unit_of_measurement", "suggested_display_precision", "expire_after",
                         "force_update", "last_reset_value_template", "options"}, {"state_topic"}),
    "event": (COMMON | {"event_types"}, {"state_topic", "event_types"}),
}
DEVICE_CLASSES = {"binary_sensor": {"problem"}, "sensor": set(), "event": set()}
STATE_CLASSES = {"measurement", "total", "total_increasing", "measurement_angle"}


@pytest.fixture()
def broker(tmp_path):
    b = Broker(tmp_path / "broker").start()
    yield b
    b.kill()


def mqtt_settings(broker, tmp_path) -> MqttSettings:
    return MqttSettings(enabled=True, host="127.0.0.1", port=broker.port, reconnect_min_seconds=0.2,
                        reconnect_max_seconds=0.5, outbox=OutboxSettings(path=str(tmp_path / "outbox.sqlite")))


def configs(sub: Subscriber) -> list[dict | None]:
    return [json.loads(m.payload) if m.payload else None for m in sub.on("/device/n1/config")]


def check_schema(config: dict) -> None:
    assert set(config) <= TOP_KEYS, set(config) - TOP_KEYS
    assert set(config["dev"]) <= DEVICE_KEYS and config["dev"]["ids"] and config["dev"]["name"]
    assert set(config["o"]) <= ORIGIN_KEYS and config["o"]["name"] == "edge-monitor"
    for avail in config["availability"]:
        assert set(avail) <= {"topic", "t", "value_template", "val_tpl", "payload_available",
                              "payload_not_available"} and avail["topic"]
    for key, comp in config["cmps"].items():
        allowed, required = PLATFORMS[comp["p"]]
        assert set(comp) <= allowed, (key, set(comp) - allowed)
        assert required <= set(comp) and comp["unique_id"] == key
        if "device_class" in comp:
            assert comp["device_class"] in DEVICE_CLASSES[comp["p"]]
        if "state_class" in comp:
            assert comp["state_class"] in STATE_CLASSES
        if "entity_category" in comp:
            assert comp["entity_category"] in ("diagnostic", "config")


def render(template: str, payload: bytes) -> str:
    env = jinja2.Environment()
    env.filters["to_json"] = json.dumps  # Home Assistant's filter
    value_json = json.loads(payload)
    return env.from_string(template).render(value=payload.decode(), value_json=value_json)


def test_discovery_payload_schema_templates_and_republish(broker, tmp_path):
    mq = mqtt_settings(broker, tmp_path)
    sub = Subscriber(broker.port, ["homeassistant/#", "edge-monitor/#"])
    publisher = Publisher(mq, "n1", monitors=[{"name": "fan-1"}])
    ha = HomeAssistant(HomeAssistantSettings(enabled=True), mq, "n1", [("fan-1", None), ("pump-2", None)])
    try:
        publisher.start()
        ha.start()
        assert sub.wait_for(lambda ms: any(m.topic == "homeassistant/device/n1/config" for m in ms), 10)
        message = sub.on("/device/n1/config")[0]
        config = json.loads(message.payload)
        check_schema(config)
        kinds = sorted((c["p"], c.get("device_class") or "", c.get("entity_category") or "") for c in config["cmps"].values()
                       if c["unique_id"].startswith("n1_fan-1_"))
        assert kinds == sorted([("binary_sensor", "problem", ""), ("sensor", "", ""), ("event", "", ""),
                                ("sensor", "", "diagnostic"), ("sensor", "", "diagnostic"),
                                ("sensor", "", "diagnostic"), ("binary_sensor", "problem", "diagnostic")])
        score = config["cmps"]["n1_fan-1_score"]
        assert score["state_class"] == "measurement"
        # the templates on real messages of the JSON publisher
        publisher.publish_state("fan-1", "anomaly", 1.5, 1.0)
        publisher.publish_event(make_event(0, node="n1", monitor="fan-1"))
        publisher.publish_telemetry("fan-1", {"state": "anomaly", "score_mean": 1.25, "level_dbfs": -31.5,
                                              "clip_fraction": 0.002, "health": ["clipping"]})
        assert publisher.wait_drained(5)
        assert sub.wait_for(lambda ms: {m.topic.rsplit("/", 1)[1] for m in ms} >= {"state", "event", "telemetry",
                                                                                   "status"}, 5)
        last = {m.topic: m.payload for m in sub.messages}
        cmps = config["cmps"]
        for key, expected in [("n1_fan-1_anomaly", "ON"), ("n1_fan-1_score", "1.25"), ("n1_fan-1_state", "anomaly"),
                              ("n1_fan-1_level", "-31.5"), ("n1_fan-1_clipping", "0.2"), ("n1_fan-1_input", "ON")]:
            assert render(cmps[key]["value_template"], last[cmps[key]["state_topic"]]) == expected, key
        event = json.loads(render(cmps["n1_fan-1_event"]["value_template"], last[cmps["n1_fan-1_event"]["state_topic"]]))
        assert event["event_type"] == "anomaly_start" and event["event_type"] in cmps["n1_fan-1_event"]["event_types"]
        avail = config["availability"][0]
        assert render(avail["value_template"], last[avail["topic"]]) == avail["payload_available"]
        # Home Assistant restarts: it says online, we publish again
        sub.client.publish("homeassistant/status", b"online")
        assert sub.wait_for(lambda ms: len([m for m in ms if m.topic.endswith("/device/n1/config")]) >= 2, 5)
    finally:
        ha.stop()
        publisher.stop(timeout=0.5)
        sub.close()
    # retained: a subscriber that comes later gets the config at once
    late = Subscriber(broker.port, "homeassistant/device/#")
    try:
        assert late.wait_for(lambda ms: bool(ms), 5) and late.messages[0].retain
    finally:
        late.close()


def test_a_removed_monitor_loses_its_entities(broker, tmp_path):
    mq = mqtt_settings(broker, tmp_path)
    first = HomeAssistant(HomeAssistantSettings(enabled=True), mq, "n1", [("fan-1", None), ("pump-2", None)])
    first.start()
    sub = Subscriber(broker.port, "homeassistant/device/#")
    try:
        assert sub.wait_for(lambda ms: bool(ms), 10)
        first.stop()
        second = HomeAssistant(HomeAssistantSettings(enabled=True), mq, "n1", [("fan-1", None)])
        second.start()
        assert sub.wait_for(lambda ms: len(ms) >= 3, 10)
        removal, final = configs(sub)[1], configs(sub)[2]
        assert {k: v for k, v in removal["cmps"].items() if k.startswith("n1_pump-2_")} == {
            "n1_pump-2_anomaly": {"p": "binary_sensor"}, "n1_pump-2_score": {"p": "sensor"},
            "n1_pump-2_event": {"p": "event"}, "n1_pump-2_state": {"p": "sensor"}, "n1_pump-2_level": {"p": "sensor"},
            "n1_pump-2_clipping": {"p": "sensor"}, "n1_pump-2_input": {"p": "binary_sensor"}}
        assert not any(k.startswith("n1_pump-2_") for k in final["cmps"]) and "n1_fan-1_anomaly" in final["cmps"]
        second.remove()  # the whole device goes: the empty retained payload
        assert sub.wait_for(lambda ms: ms[-1].payload == b"", 5)
        second.stop()
    finally:
        sub.close()
    time.sleep(0.3)
    late = Subscriber(broker.port, "homeassistant/device/#")
    try:
        time.sleep(0.5)
        assert late.messages == []  # nothing retained any more
    finally:
        late.close()


def test_homeassistant_needs_the_json_topics(tmp_path):
    data = {"node": "n1", "monitors": [{"name": "fan-1", "model": "m"}], "homeassistant": {"enabled": True}}
    with pytest.raises(ConfigError, match=r"^config.yaml: homeassistant.enabled: .*set mqtt.enabled: true too"):
        parse(data, base_dir=tmp_path, source="config.yaml")


def test_a_stopped_machine_is_a_state_and_its_events_are_known_event_types():
    from edge_monitor.core.events import MachineInfo, Origin, new_id
    from edge_monitor.node.homeassistant import discovery_config

    cmps = discovery_config("n1", "edge-monitor", [("fan-1", None)])["cmps"]
    state = json.dumps({"state": "stopped", "score": None, "threshold": 0.7}).encode()
    assert render(cmps["n1_fan-1_anomaly"]["value_template"], state) == "OFF"  # stopped is no anomaly
    assert render(cmps["n1_fan-1_state"]["value_template"], state) == "stopped"
    origin = Origin("n1", "fan-1", "fan", "id_00", "fan-id_00", "ab" * 32, "test")
    for kind, info in (("machine_stopped", MachineInfo("stopped", -52.0, -49.0, 12.0, "stopped")),
                       ("machine_running", MachineInfo("running", -30.0, -44.0, 30.0, "running"))):
        event = origin.event(kind, new_id(), 0, 17.0, machine_state=info).to_json().encode()
        rendered = json.loads(render(cmps["n1_fan-1_event"]["value_template"], event))
        assert rendered["event_type"] == kind and kind in cmps["n1_fan-1_event"]["event_types"]
