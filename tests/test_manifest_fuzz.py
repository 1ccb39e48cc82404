"""A seeded fuzz of the demo bundle's manifest: every bundle is either really valid or refused cleanly.

Each case mutates one field of a copy of the committed demo bundle's ``model.json`` (wrong types,
NaN, ±Infinity, huge and tiny numbers, huge arrays, 100 000-level nesting, 5 000-digit integers,
100 000-character names, missing keys). The oracle is written beside every case: a mutation is
"valid" only where the runtime really does not care (documentary fields, a missing optional
section, a plausible different number); every other mutation must be refused.

- In process (most cases): ``Bundle.load`` + the decision threshold ``check`` prints must either
  succeed (valid cases) or raise a ``UserError`` whose text is one line; anything else is a bug.
- Through the command line (a seeded sample of a few dozen): ``python -m edge_monitor replay
  <normal demo clip> --model COPY`` exits 0 for a valid bundle, otherwise 2 with exactly one
  ``edge-monitor: error:`` line and no traceback; never 1 (the clip is normal).

The counts (tried, refused cleanly, accepted as valid, wrong) are printed; run with ``-s`` to see them.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge_monitor import DEMO_DIR
from edge_monitor.core.detector import decision_threshold
from edge_monitor.core.errors import UserError
from edge_monitor.core.model import Bundle

DEMO = DEMO_DIR / "fan-id_00"
NORMAL_CLIP = DEMO_DIR / "clips" / "normal_id_00_demo.wav"
SEED = 20261202
CLI_CASES = 30
INTERPRETER_NOTE = "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."  # LiteRT's own C++ log line

MISSING = object()
DEEP = "\x00DEEP\x00"  # placeholders spliced into the JSON text (json.dumps cannot write them)
BIGINT = "\x00BIGINT\x00"
HUGE_ARRAY = "\x00HUGE\x00"
GIANT_ARRAY = "\x00GIANT\x00"
SPLICE = {
    json.dumps(DEEP): "[" * 100_000 + "]" * 100_000,
    json.dumps(BIGINT): "9" * 5000,
    json.dumps(HUGE_ARRAY): "[" + ",".join(["1.5"] * 100_000) + "]",  # 400 kB: under any size cap
    json.dumps(GIANT_ARRAY): "[" + ",".join(["1.5"] * 6_000_000) + "]",  # 24 MB: over the size cap
}

# Values that are wrong for every number, string or list the runtime reads.
BAD_ANYWHERE: list[tuple[str, Any]] = [
    ("null", None), ("true", True), ("string", "0.5"), ("empty list", []), ("object", {"value": 1}),
    ("NaN", float("nan")), ("+Infinity", float("inf")), ("-Infinity", float("-inf")),
    ("1e308", 1e308), ("-1e308", -1e308), ("5000 digits", BIGINT), ("nested 100000 deep", DEEP),
    ("huge array", HUGE_ARRAY), ("missing", MISSING),
]
NEGATIVE = [("negative", -1.0)]
ZERO = [("zero", 0)]
TINY = [("1e-45", 1e-45)]
BIG = [("1e9", 1e9)]

# Fields the runtime uses, with the extra mutations that are also wrong for them.
RUNTIME_FIELDS: dict[str, list[tuple[str, Any]]] = {
    "format": [],
    "model.json": [],
    "format_version": ZERO,
    "machine.type": [("100000 chars", "x" * 100_000), ("slash", "a/b")],
    "machine.id": [("100000 chars", "x" * 100_000), ("empty", "")],
    "features.sample_rate": ZERO + NEGATIVE + BIG + [("10**9", 10**9), ("2**40", 2**40)],
    "features.n_fft": ZERO + NEGATIVE + [("2**28", 2**28), ("odd", 1023)],
    "features.hop_length": ZERO + NEGATIVE + [("2**40", 2**40)],
    "features.n_mels": ZERO + NEGATIVE + [("2**20", 2**20)],
    "features.fmax": ZERO + NEGATIVE + BIG,
    "features.power": ZERO + [("3", 3.0)],
    "features.frames": ZERO + NEGATIVE + [("2**30", 2**30)],
    "window.size": ZERO + NEGATIVE + BIG,
    "window.frames": ZERO + [("4", 4)],
    "window.stride_frames": ZERO + [("2", 2)],
    "model.file": [("100000 chars", "m" * 100_000), ("parent", "../model.tflite"), ("absolute", "/etc/passwd")],
    "model.sha256": [("short", "abc"), ("100000 chars", "0" * 100_000)],
    "model.float_file": [("100000 chars", "f" * 100_000), ("int", 7), ("parent", "../x.tflite")],
    "model.float_sha256": [("zeros", "0" * 64)],
    "quantization.input.scale": ZERO + NEGATIVE + TINY + BIG,
    "quantization.output.scale": ZERO + NEGATIVE + TINY + BIG,
    "quantization.input.zero_point": [("200", 200), ("float", 17.5)],
    "quantization.output.zero_point": [("-200", -200)],
    "quantization.input.dtype": [("uint8", "uint8")],
    "standardization.mean": [("639 numbers", [0.0] * 639)],
    "standardization.std": [("639 numbers", [1.0] * 639), ("24 MB array", GIANT_ARRAY)],
    "standardization.mean[0]": [],
    "standardization.std[0]": ZERO + NEGATIVE + TINY + BIG,
    "standardization.std[639]": TINY,
    "threshold.value": ZERO + NEGATIVE + TINY + BIG,
    "decision.thresholds": [("object", {"window_seconds": 1.0, "value": 0.7}), ("list of null", [None])],
    "decision.thresholds[0].value": ZERO + NEGATIVE + TINY + BIG,
    "decision.thresholds[1].value": ZERO + NEGATIVE + BIG,
    "decision.thresholds[3].value": TINY,
    "decision.thresholds[0].window_seconds": ZERO + NEGATIVE + TINY,
    "decision.thresholds[1].window_seconds": [("0.5 again", 0.5), ("1e9", 1e9)],
    "decision.thresholds[2]": [("null", None), ("number", 0.7)],
}
# "missing" is fine for these (older or smaller bundles): not among the wrong mutations.
OPTIONAL = {"model.float_file", "standardization.mean[0]", "standardization.std[0]",
            "standardization.std[639]", "decision.thresholds[2]"}
FREE_TEXT = {"machine.type", "machine.id"}  # any short name will do: "0.5" is valid there
# Values the runtime accepts: a plausible different number, a documentary field, an optional section.
VALID: list[tuple[str, Any]] = [
    ("threshold.value", 0.8), ("threshold.value", 2), ("decision.thresholds[1].value", 0.9),
    ("decision.thresholds[0].window_seconds", 0.25), ("standardization.mean[0]", -40.0),
    ("standardization.mean[0]", 1e-45), ("standardization.std[5]", 0.1), ("features.fmin", 1e-45),
    ("decision", MISSING), ("decision.thresholds", []), ("training", MISSING), ("evaluation", MISSING),
    ("training.seed", "seven"), ("training.seed", float("nan")), ("evaluation.test", {"x": [1, 2]}),
    ("machine.type", "0.5"), ("machine.id", "7"), ("created_at", None), ("threshold.gamma", MISSING), ("decision.thresholds[0].held_out_max", MISSING),
    ("model.bytes", "many"), ("model.architecture", 12), ("score.definition", "x" * 1000),
    ("standardization.where", MISSING), ("edge_monitor_version", MISSING),
]


@dataclass(frozen=True)
class Case:
    field: str
    kind: str
    value: Any
    valid: bool

    @property
    def id(self) -> str:
        return f"{self.field}={self.kind}"


def _cases() -> list[Case]:
    cases = []
    for field, extra in RUNTIME_FIELDS.items():
        mutations = BAD_ANYWHERE + extra
        for kind, value in mutations:
            if value is MISSING and field in OPTIONAL or kind == "string" and field in FREE_TEXT:
                continue
            if field == "decision.thresholds" and kind == "empty list":
                continue  # valid: training writes it when the held-out clips are too short to calibrate
            cases.append(Case(field, kind, value, False))
    for field, value in VALID:
        kind = "missing" if value is MISSING else repr(value)[:30]
        cases.append(Case(field, kind, value, True))
    return cases


CASES = _cases()
CLI_MUST = {  # the cases the issues name, always among the command-line runs
    "decision.thresholds[1].value=missing", "decision.thresholds[0].value=negative",
    "decision.thresholds[1].value=NaN", "threshold.value=1e9", "decision.thresholds[0].value=1e9",
    "standardization.std[0]=1e-45", "model.json=nested 100000 deep", "features.n_fft=5000 digits",
    "model.float_file=int", "model.float_file=100000 chars", "decision.thresholds[0].window_seconds=string",
    "features.sample_rate=10**9", "features.n_fft=2**28", "decision.thresholds[0].value=zero",
    "decision=missing", "threshold.value=0.8",
}


def _parts(field: str) -> list[str | int]:
    parts: list[str | int] = []
    for piece in field.split("."):
        name, _, rest = piece.partition("[")
        parts.append(name)
        while rest:
            index, _, rest = rest.partition("]")
            parts.append(int(index))
            rest = rest.lstrip("[")
    return parts


def mutate(manifest: dict, case: Case) -> str:
    """The JSON text of ``manifest`` with ``case`` applied."""
    if case.field == "model.json":  # the whole document
        text = "" if case.value is MISSING else json.dumps(case.value)
    else:
        data = copy.deepcopy(manifest)
        *parents, last = _parts(case.field)
        node: Any = data
        for part in parents:
            node = node[part]
        if case.value is MISSING:
            del node[last]
        else:
            node[last] = case.value
        text = json.dumps(data)
    for placeholder, replacement in SPLICE.items():
        text = text.replace(placeholder, replacement)
    return text


@pytest.fixture(scope="module")
def base() -> dict:
    return json.loads((DEMO / "model.json").read_text())


def _copy_bundle(target: Path) -> Path:
    target.mkdir(parents=True)
    for name in ("model.tflite", "model_float.tflite"):
        os.symlink(DEMO / name, target / name)
    return target


def _load_like_check(bundle_dir: Path) -> str:
    """What `check` and the Monitor do with a bundle: load it, pick decision thresholds."""
    bundle = Bundle.load(bundle_dir)
    for seconds in (0.5, 1.0, 3.0):
        value = decision_threshold(bundle.manifest, seconds, None).value
        if not (math.isfinite(value) and value > 0):
            return f"accepted a decision threshold of {value}"
    return "ok"


def test_in_process_fuzz(base, tmp_path):
    bundle_dir = _copy_bundle(tmp_path / "bundle")
    counts = {"tried": 0, "refused cleanly": 0, "accepted as valid": 0}
    wrong: list[str] = []
    for case in CASES:
        counts["tried"] += 1
        (bundle_dir / "model.json").write_text(mutate(base, case))
        try:
            outcome = _load_like_check(bundle_dir)
        except UserError as exc:
            message = str(exc)
            if "\n" in message or not message:
                wrong.append(f"{case.id}: refused with a message of {message.count(chr(10)) + 1} lines")
            elif case.valid:
                wrong.append(f"{case.id}: a valid bundle was refused: {message[:160]}")
            else:
                counts["refused cleanly"] += 1
            continue
        except BaseException as exc:  # noqa: BLE001 - the fuzz counts every crash
            wrong.append(f"{case.id}: {type(exc).__name__} {str(exc)[:100]}")
            continue
        if outcome != "ok" or not case.valid:
            wrong.append(f"{case.id}: accepted ({outcome})")
        else:
            counts["accepted as valid"] += 1
    counts["wrong"] = len(wrong)
    print("\nin-process manifest fuzz:", counts)
    for line in wrong:
        print("  WRONG", line)
    assert not wrong, f"{len(wrong)} of {len(CASES)} cases wrong, first: {wrong[:5]}"


def test_cli_replay_fuzz(base, tmp_path):
    """A seeded sample through `python -m edge_monitor replay`: exit 0 valid, else 2 and one line; never 1."""
    rng = random.Random(SEED)
    named = [c for c in CASES if c.id in CLI_MUST]
    sample = named + rng.sample([c for c in CASES if c.id not in CLI_MUST], CLI_CASES - len(named))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    counts = {"tried": 0, "refused cleanly": 0, "accepted as valid": 0}
    wrong = []
    for number, case in enumerate(sample):
        bundle_dir = _copy_bundle(tmp_path / f"b{number}")
        (bundle_dir / "model.json").write_text(mutate(base, case))
        counts["tried"] += 1
        try:
            run = subprocess.run([sys.executable, "-m", "edge_monitor", "replay", str(NORMAL_CLIP), "--model",
                                  str(bundle_dir)], capture_output=True, text=True, timeout=60, env=env)
        except subprocess.TimeoutExpired:
            wrong.append(f"{case.id}: still running after 60 s")
            continue
        lines = [line for line in run.stderr.splitlines() if line.strip() and line != INTERPRETER_NOTE]
        clean_refusal = (run.returncode == 2 and len(lines) == 1 and lines[0].startswith("edge-monitor: error:")
                         and "Traceback" not in run.stderr)
        if case.valid and run.returncode == 0:
            counts["accepted as valid"] += 1
        elif not case.valid and clean_refusal:
            counts["refused cleanly"] += 1
        else:
            wrong.append(f"{case.id}: exit {run.returncode}, stderr {run.stderr.strip()[-200:]!r}")
        shutil.rmtree(bundle_dir)
    counts["wrong"] = len(wrong)
    print("\nCLI replay manifest fuzz:", counts)
    for line in wrong:
        print("  WRONG", line)
    assert not wrong, f"{len(wrong)} of {CLI_CASES} CLI cases wrong, first: {wrong[:3]}"
