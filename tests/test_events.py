"""The event schema: what validate() accepts and refuses, and that README documents every field."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from edge_monitor.core.events import (
    _FIELDS,
    AnomalyInfo,
    Band,
    HealthInfo,
    MachineInfo,
    Origin,
    iso_ms,
    new_id,
    validate,
)

ORIGIN = Origin("node1", "fan-1", "fan", "id_00", "fan-id_00", "ab" * 32, "mic:usb:0")
README = Path(__file__).resolve().parents[1] / "README.md"


def anomaly_event() -> dict:
    info = AnomalyInfo(started_ms=1_700_000_000_000, started_position_s=1.5, duration_s=2.5, peak_score=0.9,
                       mean_score=0.85)
    bands = (Band(92, 99, 3278.0, 4072.5, 0.19),)
    return ORIGIN.event("anomaly_start", new_id(), 0, 4.0, score=0.9, threshold=0.75, anomaly=info,
                        bands=bands).to_dict()


def health_event() -> dict:
    return ORIGIN.event("health", new_id(), 0, 2.0, decisions_suspended=True,
                        health=HealthInfo("dead_input", "bad", 1.0, 0.99, "dead")).to_dict()


def machine_event(kind: str = "machine_stopped") -> dict:
    state = "stopped" if kind == "machine_stopped" else "running"
    return ORIGIN.event(kind, "0123456789abcdef", 0 if state == "stopped" else 1, 30.0,
                        decisions_suspended=state == "stopped",
                        machine_state=MachineInfo(state, -52.4, -47.8, 24.5, "machine " + state)).to_dict()


def test_valid_events_pass_and_survive_json():
    for event in (anomaly_event(), health_event(), machine_event(), machine_event("machine_running")):
        assert validate(event) == []
        assert validate(json.loads(json.dumps(event))) == []
        assert validate({**event, "seq": 7}) == []


def test_ids_sort_by_time_and_event_ids_by_cycle():
    first = new_id()
    assert len(first) == 16 and int(first, 16) >= 0
    event = anomaly_event()
    assert event["event_id"] == f"{event['id']}/0"
    assert event["ratio"] == pytest.approx(0.9 / 0.75, rel=1e-5)
    assert iso_ms(1_700_000_000_123) == "2023-11-14T22:13:20.123Z"


BROKEN = {  # case: (damage, the exact problem validate must report — not just "some error")
    "missing_field": (lambda e: e.pop("monitor"), ["missing field 'monitor'"]),
    "unknown_field": (lambda e: e.update(extra=1), ["unknown field 'extra'"]),
    "bad_type": (lambda e: e.update(type="anomaly_begin"),
                 [("type 'anomaly_begin' is not one of anomaly_start, anomaly_update, anomaly_end, health, "
                   "machine_stopped, machine_running")]),
    "bad_schema": (lambda e: e.update(schema_version=2),
                   ["schema is 'edge-monitor/event' v2, expected 'edge-monitor/event' v1"]),
    "time_disagrees": (lambda e: e.update(time_ms=e["time_ms"] + 5000), ["time and time_ms disagree"]),
    "time_format": (lambda e: e.update(time="2026-11-22 03:00:00"),
                    ["time '2026-11-22 03:00:00' is not ISO 8601 UTC (YYYY-MM-DDTHH:MM:SS.mmmZ)"]),
    "event_id": (lambda e: e.update(event_id="x/0"), ["event_id does not start with '<id>/'"]),
    "no_explanation": (lambda e: e.update(explanation=None), ["anomaly_start without an explanation"]),
    "no_anomaly": (lambda e: e.update(anomaly=None), ["anomaly_start without 'anomaly'"]),
    "bool_as_number": (lambda e: e.update(score=True), ["field 'score' has type bool"]),
    "seq_string": (lambda e: e.update(seq="7"), ["field 'seq' must be an integer"]),
    "machine_fields": (lambda e: e.update(machine={"type": "fan"}),
                       ["machine must have type and id; model must have name and sha256"]),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_events_are_refused_with_their_own_problem(case):
    event = copy.deepcopy(anomaly_event())
    damage, problems = BROKEN[case]
    damage(event)
    assert validate(event) == problems


def test_machine_events_carry_their_state_and_only_they():
    event = machine_event()
    assert event["machine_state"]["level_db"] == -52.4 and event["machine_state"]["since_position_s"] == 24.5
    assert validate({**event, "machine_state": None}) == ["machine_stopped without 'machine_state'"]
    running = machine_event("machine_running")
    assert validate({**event, "machine_state": running["machine_state"]}) == [
        ("machine_stopped has machine_state ['level_db', 'limit_db', 'message', 'since_position_s', 'state'] "
         "with state 'running'")]
    assert validate({**anomaly_event(), "machine_state": event["machine_state"]}) == [
        "anomaly_start with 'machine_state'"]
    old = anomaly_event()
    del old["machine_state"]  # an event of a node from before machine states is still valid
    assert validate(old) == []


def test_health_event_needs_a_known_condition():
    event = health_event()
    event["health"]["condition"] = "on_fire"
    assert validate(event) == ["health condition/status 'on_fire'/'bad' unknown"]
    assert validate([1, 2]) == ["event must be a JSON object, got list"]


def test_readme_documents_every_field():
    text = README.read_text()
    table = text[text.index("### Events"):]
    table = table[: table.index("\n### ", 5)]
    documented = set(re.findall(r"`([a-z_]+)`", "\n".join(line.split("|")[1] for line in table.splitlines()
                                                           if line.startswith("| `"))))
    assert set(_FIELDS) | {"seq", "machine_state"} <= documented, set(_FIELDS) - documented
