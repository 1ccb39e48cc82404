"""The one event schema (versioned) for everything the pipeline tells the outside world.

Every event — the anomaly life cycle and sensor health — is an :class:`Event`; ``to_dict()`` is its
JSON form, the same on stdout, in JSON lines and on MQTT (where the publisher adds ``seq``).
``validate()`` checks a decoded event against the schema; the tests and subscribers can use it.

Life cycle: an anomaly is ``anomaly_start`` → ``anomaly_update`` (every ``update_seconds``) →
``anomaly_end``, all with the same ``id``. A health condition is a ``health`` event with
``status: "bad"`` and later one with ``status: "ok"``, both with the same ``id``. A machine switched
off is ``machine_stopped`` and later ``machine_running``, both with the same ``id`` (``machine_state``:
the level, the limit it crossed). ``event_id`` is
unique per event (``<id>/<n>``, n counting from 0 within the life cycle).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

SCHEMA = "edge-monitor/event"
SCHEMA_VERSION = 1
ANOMALY_TYPES = ("anomaly_start", "anomaly_update", "anomaly_end")
MACHINE_TYPES = ("machine_stopped", "machine_running")
TYPES = ANOMALY_TYPES + ("health",) + MACHINE_TYPES
HEALTH_CONDITIONS = ("clipping", "dead_input", "silence", "level_high", "drops", "sensor_fault", "storage")
HEALTH_STATUS = ("bad", "ok")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def iso_ms(epoch_ms: int) -> str:
    """ISO 8601 UTC with milliseconds and a ``Z``: ``2026-11-22T03:21:43.120Z``."""
    stamp = datetime.fromtimestamp(epoch_ms / 1000, tz=timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{epoch_ms % 1000:03d}Z"


def new_id() -> str:
    """A life-cycle id: 16 hex digits, the first 11 from the epoch ms so ids sort by start time."""
    return f"{now_ms() & 0xFFFFFFFFFFF:011x}{os.urandom(3).hex()[:5]}"


@dataclass(frozen=True)
class Band:
    """A range of mel bands that carries ``share`` of a window's reconstruction error."""

    first: int
    last: int
    low_hz: float
    high_hz: float
    share: float

    def to_dict(self) -> dict:
        return {"mel_bands": [self.first, self.last], "hz": [round(self.low_hz, 1), round(self.high_hz, 1)],
                "share": round(self.share, 4)}

    def label(self) -> str:
        return f"{self.low_hz:.0f}-{self.high_hz:.0f} Hz ({100 * self.share:.0f} %)"


@dataclass(frozen=True)
class AnomalyInfo:
    started_ms: int
    started_position_s: float
    duration_s: float
    peak_score: float
    mean_score: float
    reason: str | None = None  # anomaly_end only: "recovered", "health", "machine_stopped", "end_of_stream",
    #                            "shutdown", "reload"

    def to_dict(self) -> dict:
        return {
            "started": iso_ms(self.started_ms),
            "started_ms": self.started_ms,
            "started_position_s": round(self.started_position_s, 3),
            "duration_s": round(self.duration_s, 3),
            "peak_score": _num(self.peak_score),
            "mean_score": _num(self.mean_score),
            "reason": self.reason,
        }


@dataclass(frozen=True)
class HealthInfo:
    condition: str   # one of HEALTH_CONDITIONS
    status: str      # "bad" or "ok"
    value: float
    limit: float
    message: str

    def to_dict(self) -> dict:
        return {"condition": self.condition, "status": self.status, "value": _num(self.value),
                "limit": _num(self.limit), "message": self.message}


@dataclass(frozen=True)
class MachineInfo:
    """A machine stopped or running again: its mean log-mel level (dB) over the last ``window_seconds``, the
    limit it crossed, and since when (stream position) the level was past the limit."""

    state: str       # "stopped" or "running"
    level_db: float
    limit_db: float
    since_position_s: float
    message: str

    def to_dict(self) -> dict:
        return {"state": self.state, "level_db": _num(self.level_db), "limit_db": _num(self.limit_db),
                "since_position_s": round(self.since_position_s, 3), "message": self.message}


@dataclass(frozen=True)
class EvidenceInfo:
    """The audio behind an anomaly: a WAV in the node's state folder (``node/evidence.py``)."""

    file: str                 # path of the WAV on the node
    sha256: str               # of the WAV file's bytes
    start_position_s: float   # audio position of its first sample (pre-roll included)
    duration_s: float

    def to_dict(self) -> dict:
        return {"file": self.file, "sha256": self.sha256, "start_position_s": round(self.start_position_s, 3),
                "duration_s": round(self.duration_s, 3)}


@dataclass(frozen=True)
class Origin:
    """Who emits: the fields every event of one monitor shares."""

    node: str
    monitor: str
    machine_type: str
    machine_id: str
    model_name: str
    model_sha256: str
    source: str

    def event(self, type: str, id: str, seq_in_cycle: int, position_s: float, *, time_ms: int | None = None,
              **fields: Any) -> Event:
        return Event(type=type, id=id, seq_in_cycle=seq_in_cycle, origin=self,
                     time_ms=now_ms() if time_ms is None else time_ms, audio_position_s=position_s, **fields)


@dataclass(frozen=True)
class Event:
    type: str
    id: str
    seq_in_cycle: int
    origin: Origin
    time_ms: int
    audio_position_s: float
    score: float | None = None
    threshold: float | None = None
    anomaly: AnomalyInfo | None = None
    bands: tuple[Band, ...] = ()
    health: HealthInfo | None = None
    decisions_suspended: bool = False
    machine_state: MachineInfo | None = None
    evidence: EvidenceInfo | None = None  # anomaly events, once the clip is written (only then in to_dict)

    @property
    def monitor(self) -> str:
        return self.origin.monitor

    @property
    def node(self) -> str:
        return self.origin.node

    @property
    def event_id(self) -> str:
        return f"{self.id}/{self.seq_in_cycle}"

    @property
    def ratio(self) -> float | None:
        if self.score is None or not self.threshold:
            return None
        return self.score / self.threshold

    def to_dict(self) -> dict:
        data = {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "type": self.type,
            "id": self.id,
            "event_id": self.event_id,
            "node": self.origin.node,
            "monitor": self.origin.monitor,
            "machine": {"type": self.origin.machine_type, "id": self.origin.machine_id},
            "model": {"name": self.origin.model_name, "sha256": self.origin.model_sha256},
            "time": iso_ms(self.time_ms),
            "time_ms": self.time_ms,
            "audio_position_s": round(self.audio_position_s, 3),
            "source": self.origin.source,
            "score": _num(self.score),
            "threshold": _num(self.threshold),
            "ratio": _num(self.ratio),
            "anomaly": self.anomaly.to_dict() if self.anomaly else None,
            "explanation": {"bands": [b.to_dict() for b in self.bands]} if self.bands else None,
            "health": self.health.to_dict() if self.health else None,
            "decisions_suspended": self.decisions_suspended,
            "machine_state": self.machine_state.to_dict() if self.machine_state else None,
        }
        if self.evidence is not None:
            data["evidence"] = self.evidence.to_dict()
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False)


def _num(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), 6)


# field → (types allowed, may be null)
_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "schema": ((str,), False),
    "schema_version": ((int,), False),
    "type": ((str,), False),
    "id": ((str,), False),
    "event_id": ((str,), False),
    "node": ((str,), False),
    "monitor": ((str,), False),
    "machine": ((dict,), False),
    "model": ((dict,), False),
    "time": ((str,), False),
    "time_ms": ((int,), False),
    "audio_position_s": ((int, float), False),
    "source": ((str,), False),
    "score": ((int, float), True),
    "threshold": ((int, float), True),
    "ratio": ((int, float), True),
    "anomaly": ((dict,), True),
    "explanation": ((dict,), True),
    "health": ((dict,), True),
    "decisions_suspended": ((bool,), False),
}
# "seq": added by the MQTT publisher; "machine_state": machine_stopped/machine_running (null otherwise);
# "evidence": anomaly events, once the clip is written
_OPTIONAL = {"seq": (int,), "machine_state": (dict, type(None)), "evidence": (dict,)}
_EVIDENCE = {"file": (str,), "sha256": (str,), "start_position_s": (int, float), "duration_s": (int, float)}


def validate(data: Any) -> list[str]:
    """Problems of a decoded event against schema version 1; an empty list means valid."""
    if not isinstance(data, dict):
        return [f"event must be a JSON object, got {type(data).__name__}"]
    problems = []
    for key, (kinds, nullable) in _FIELDS.items():
        if key not in data:
            problems.append(f"missing field '{key}'")
            continue
        value = data[key]
        if value is None and nullable:
            continue
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            problems.append(f"field '{key}' has type {type(value).__name__}")
    for key in data:
        if key not in _FIELDS and key not in _OPTIONAL:
            problems.append(f"unknown field '{key}'")
    if problems:
        return problems
    if data["schema"] != SCHEMA or data["schema_version"] != SCHEMA_VERSION:
        problems.append(f"schema is {data['schema']!r} v{data['schema_version']}, expected {SCHEMA!r} v{SCHEMA_VERSION}")
    if data["type"] not in TYPES:
        problems.append(f"type {data['type']!r} is not one of {', '.join(TYPES)}")
    if not data["event_id"].startswith(data["id"] + "/"):
        problems.append("event_id does not start with '<id>/'")
    if set(data["machine"]) != {"type", "id"} or set(data["model"]) != {"name", "sha256"}:
        problems.append("machine must have type and id; model must have name and sha256")
    try:
        parsed = datetime.strptime(data["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
        if abs(parsed.timestamp() * 1000 - data["time_ms"]) > 1:
            problems.append("time and time_ms disagree")
    except ValueError:
        problems.append(f"time {data['time']!r} is not ISO 8601 UTC (YYYY-MM-DDTHH:MM:SS.mmmZ)")
    if data["type"] in ANOMALY_TYPES:
        anomaly = data["anomaly"]
        if anomaly is None:
            problems.append(f"{data['type']} without 'anomaly'")
        elif set(anomaly) != {"started", "started_ms", "started_position_s", "duration_s", "peak_score",
                              "mean_score", "reason"}:
            problems.append(f"anomaly has fields {sorted(anomaly)}")
        if data["explanation"] is None or not data["explanation"].get("bands"):
            problems.append(f"{data['type']} without an explanation")
        if data["score"] is None or data["threshold"] is None:
            problems.append(f"{data['type']} without score and threshold")
    elif data["type"] == "health":
        health = data["health"]
        if health is None:
            problems.append("health event without 'health'")
        elif health.get("condition") not in HEALTH_CONDITIONS or health.get("status") not in HEALTH_STATUS:
            problems.append(f"health condition/status {health.get('condition')!r}/{health.get('status')!r} unknown")
    if data["type"] in MACHINE_TYPES:
        info = data.get("machine_state")
        want = "stopped" if data["type"] == "machine_stopped" else "running"
        if not isinstance(info, dict):
            problems.append(f"{data['type']} without 'machine_state'")
        elif set(info) != {"state", "level_db", "limit_db", "since_position_s", "message"} or info["state"] != want:
            problems.append(f"{data['type']} has machine_state {sorted(info)} with state {info.get('state')!r}")
    elif data.get("machine_state") is not None:
        problems.append(f"{data['type']} with 'machine_state'")
    if "machine_state" in data and not isinstance(data["machine_state"], (dict, type(None))):
        problems.append("field 'machine_state' must be an object or null")
    if "evidence" in data:
        problems += _evidence_problems(data["evidence"], data["type"])
    if "seq" in data and (isinstance(data["seq"], bool) or not isinstance(data["seq"], int)):
        problems.append("field 'seq' must be an integer")
    return problems


def _evidence_problems(evidence: Any, kind: str) -> list[str]:
    if kind not in ANOMALY_TYPES:
        return [f"{kind} event with 'evidence' (only anomaly events carry it)"]
    if not isinstance(evidence, dict):
        return [f"field 'evidence' has type {type(evidence).__name__}"]
    if set(evidence) != set(_EVIDENCE):
        return [f"evidence has fields {sorted(evidence)}, expected {sorted(_EVIDENCE)}"]
    problems = []
    for key, kinds in _EVIDENCE.items():
        value = evidence[key]
        if isinstance(value, bool) or not isinstance(value, kinds):
            problems.append(f"evidence.{key} has type {value.__class__.__name__}")
    if problems:
        return problems
    if not evidence["file"]:
        problems.append("evidence.file is empty")
    if len(evidence["sha256"]) != 64 or any(c not in "0123456789abcdef" for c in evidence["sha256"]):
        problems.append("evidence.sha256 is not 64 lowercase hex digits")
    if not evidence["duration_s"] > 0 or not math.isfinite(evidence["duration_s"]):
        problems.append("evidence.duration_s must be > 0")
    if not math.isfinite(evidence["start_position_s"]) or evidence["start_position_s"] < 0:
        problems.append("evidence.start_position_s must be ≥ 0")
    return problems
