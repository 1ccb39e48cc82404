"""Sparkplug B payloads: our metric values to and from the protobuf ``Payload`` of ``sparkplug_b.proto``.

Only the data types this node sends or accepts are mapped (the numbers are the specification's):
Int32 (3), Int64 (4), UInt64 (8), Double (10), Boolean (11), String (12). Signed integers travel in the
unsigned protobuf fields as two's complement, as the specification says. ``None`` is sent as ``is_null``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from edge_monitor.node.sparkplug.sparkplug_b_pb2 import Payload

INT32, INT64, UINT64, DOUBLE, BOOLEAN, STRING = 3, 4, 8, 10, 11, 12
TYPE_NAMES = {INT32: "Int32", INT64: "Int64", UINT64: "UInt64", DOUBLE: "Double", BOOLEAN: "Boolean",
              STRING: "String"}


@dataclass(frozen=True)
class Metric:
    """One metric of a payload. ``properties`` are (key, datatype, value) triples (``engUnit``, ...)."""

    name: str
    datatype: int
    value: Any
    timestamp: int | None = None          # epoch ms; None = the payload's
    is_historical: bool = False
    properties: tuple[tuple[str, int, Any], ...] = ()


def _set_value(target: Any, datatype: int, value: Any) -> None:
    if datatype == INT32:
        target.int_value = int(value) & 0xFFFFFFFF
    elif datatype in (INT64, UINT64):
        target.long_value = int(value) & 0xFFFFFFFFFFFFFFFF
    elif datatype == DOUBLE:
        target.double_value = float(value)
    elif datatype == BOOLEAN:
        target.boolean_value = bool(value)
    elif datatype == STRING:
        target.string_value = str(value)
    else:
        raise ValueError(f"Sparkplug datatype {datatype} is not supported here")


def _get_value(source: Any, datatype: int) -> Any:
    if datatype == INT32:
        v = source.int_value
        return v - (1 << 32) if v >= 1 << 31 else v
    if datatype == INT64:
        v = source.long_value
        return v - (1 << 64) if v >= 1 << 63 else v
    if datatype == UINT64:
        return source.long_value
    if datatype == DOUBLE:
        return source.double_value
    if datatype == BOOLEAN:
        return source.boolean_value
    if datatype == STRING:
        return source.string_value
    raise ValueError(f"Sparkplug datatype {datatype} is not supported here")


def encode(metrics: list[Metric] | tuple[Metric, ...], *, timestamp: int, seq: int | None) -> bytes:
    """A serialised ``Payload``; ``seq`` None leaves it out (NDEATH)."""
    payload = Payload()
    payload.timestamp = timestamp
    if seq is not None:
        payload.seq = seq
    for m in metrics:
        pm = payload.metrics.add()
        pm.name = m.name
        pm.datatype = m.datatype
        pm.timestamp = m.timestamp if m.timestamp is not None else timestamp
        if m.is_historical:
            pm.is_historical = True
        value = m.value
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            pm.is_null = True
        else:
            _set_value(pm, m.datatype, value)
        for key, datatype, pvalue in m.properties:
            pm.properties.keys.append(key)
            pv = pm.properties.values.add()
            pv.type = datatype
            _set_value(pv, datatype, pvalue)
    return payload.SerializeToString()


@dataclass(frozen=True)
class Decoded:
    timestamp: int | None
    seq: int | None
    metrics: tuple[Metric, ...]


class PayloadError(ValueError):
    """Bytes that are not a Sparkplug B payload we can read."""


def decode(data: bytes) -> Decoded:
    """Parse a payload (for NCMD/DCMD). Metrics of a type not mapped here keep ``value`` None."""
    payload = Payload()
    try:
        payload.ParseFromString(data)
    except Exception as exc:  # noqa: BLE001 (DecodeError, and RuntimeWarning-like errors of the C parser)
        raise PayloadError(f"not a Sparkplug B payload ({exc})") from None
    metrics = []
    for pm in payload.metrics:
        value = None
        if not pm.is_null and pm.WhichOneof("value") is not None:
            try:
                value = _get_value(pm, pm.datatype)
            except ValueError:
                value = None
        metrics.append(Metric(pm.name, pm.datatype, value, pm.timestamp if pm.HasField("timestamp") else None,
                              pm.is_historical))
    return Decoded(payload.timestamp if payload.HasField("timestamp") else None,
                   payload.seq if payload.HasField("seq") else None, tuple(metrics))
