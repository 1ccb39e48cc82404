"""A seeded fuzz of the two other inputs a user hands the node: WAV files and config files.

Every input is either really valid or refused cleanly (issue 15):

- **WAV headers**: a valid 16-bit mono file with one header field mutated (RIFF/WAVE magic, chunk ids and
  sizes past EOF, format tag, channels, sample rate, byte rate, block align, bits per sample, the data size),
  random bytes after a valid header, truncations at every header offset. Oracle: the file is valid only when
  the mutation leaves a readable PCM file with a plausible rate; anything else must be refused.
  In process: ``WavFile`` + one ``read`` either succeeds or raises a one-line ``AudioError``.
- **Configs**: every key of a valid config mutated with wrong types, NaN, ±Infinity (YAML ``.nan``,
  ``.inf``), huge and tiny numbers, huge lists, deep nesting, long strings. In process: ``load`` either
  returns settings or raises a one-line ``ConfigError``; a valid-looking mutation must build settings
  that pass their own bounds.
- Through the command line, a seeded sample of each: ``edge-monitor replay FILE`` and ``edge-monitor check
  CONFIG`` exit 0 (or 1 for an anomaly — never for a normal clip) only for valid input, otherwise 2 with
  exactly one ``edge-monitor: error:`` line and no traceback.

The counts (tried, refused cleanly, accepted as valid) are printed; run with ``-s`` to see them.
"""

from __future__ import annotations

import random
import struct
import subprocess
import sys

import numpy as np
import yaml

from edge_monitor import DEMO_DIR
from edge_monitor.core.errors import UserError
from edge_monitor.core.wav import MAX_RATE, MIN_RATE, WavFile
from edge_monitor.node.config import load

SEED = 1512
BUNDLE = DEMO_DIR / "fan-id_00"


def one_line(text: str) -> bool:
    return "\n" not in text.strip() and "Traceback" not in text


# ---------------------------------------------------------------- WAV headers

def valid_wav(seconds: float = 1.5, rate: int = 16000) -> bytes:
    rng = np.random.default_rng(0)
    pcm = (rng.standard_normal(int(seconds * rate)) * 3000).astype("<i2").tobytes()
    return struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + len(pcm), b"WAVE", b"fmt ", 16, 1, 1, rate, rate * 2, 2,
                       16, b"data", len(pcm)) + pcm


# (name, byte offset, struct format) of the header fields
FIELDS = [("riff", 0, "4s"), ("riff_size", 4, "<I"), ("wave", 8, "4s"), ("fmt_id", 12, "4s"), ("fmt_size", 16, "<I"),
          ("tag", 20, "<H"), ("channels", 22, "<H"), ("rate", 24, "<I"), ("byte_rate", 28, "<I"),
          ("block_align", 32, "<H"), ("bits", 34, "<H"), ("data_id", 36, "4s"), ("data_size", 40, "<I")]

NUMBERS = [0, 1, 2, 3, 7, 8, 12, 15, 17, 24, 44, 255, 256, 999, 1000, 8000, 16000, 44100, 65535, 65536,
           768000, 768001, 1 << 31, (1 << 32) - 1]


def wav_cases(rng: random.Random) -> list[tuple[str, bytes, bool]]:
    """(name, bytes, really valid?)."""
    base = valid_wav()
    cases: list[tuple[str, bytes, bool]] = [("valid", base, True)]
    for name, offset, fmt in FIELDS:
        if fmt == "4s":
            for value in (b"RIFX", b"JUNK", b"\x00\x00\x00\x00", b"data", b"fmt "):
                mutated = base[:offset] + value + base[offset + 4:]
                cases.append((f"{name}={value!r}", mutated, mutated == base))
            continue
        width = struct.calcsize(fmt)
        for value in NUMBERS:
            if value >= 1 << (8 * width):
                continue
            mutated = base[:offset] + struct.pack(fmt, value) + base[offset + width:]
            original = struct.unpack_from(fmt, base, offset)[0]
            # what a reader may accept: a field it does not use, or the same value
            valid = value == original or name in ("riff_size", "byte_rate") or (
                name == "rate" and MIN_RATE <= value <= MAX_RATE)
            if name == "data_size" and value % 2 == 0 and 0 < value <= len(base) - 44:
                valid = True  # a shorter data chunk: the rest is a trailing chunk the reader skips
            cases.append((f"{name}={value}", mutated, valid))
    for cut in list(range(0, 44, 3)) + [45, 47]:
        cases.append((f"truncated at {cut}", base[:cut], False))
    for i in range(20):  # a valid header, then garbage in place of the audio: still PCM, still readable
        junk = bytes(rng.getrandbits(8) for _ in range(rng.randrange(2, 4000, 2)))
        header = base[:40] + struct.pack("<I", len(junk))
        cases.append((f"random audio {i}", header + junk, len(junk) >= 2))
    for i in range(10):  # random bytes in the header itself
        spot = rng.randrange(0, 44)
        mutated = bytearray(base)
        mutated[spot] = rng.getrandbits(8)
        cases.append((f"random header byte {spot}", bytes(mutated), None))  # None: either is fine, cleanly
    return cases


def test_wav_header_fuzz_every_file_is_read_or_refused_in_one_line(tmp_path, capsys):
    rng = random.Random(SEED)
    cases = wav_cases(rng)
    counts = {"tried": 0, "refused cleanly": 0, "accepted as valid": 0}
    wrong = []
    for i, (name, data, valid) in enumerate(cases):
        path = tmp_path / f"case{i}.wav"
        path.write_bytes(data)
        counts["tried"] += 1
        try:
            with WavFile(path) as wav:
                wav.read(0, 4096)
            counts["accepted as valid"] += 1
            if valid is False:
                wrong.append(f"{name}: accepted")
        except UserError as exc:
            counts["refused cleanly"] += 1
            if valid is True:
                wrong.append(f"{name}: refused: {exc}")
            if not one_line(str(exc)):
                wrong.append(f"{name}: error not one line: {exc!r}")
        except Exception as exc:  # noqa: BLE001 - exactly what the fuzz looks for
            wrong.append(f"{name}: {type(exc).__name__}: {exc}")
    with capsys.disabled():
        print(f"\nWAV header fuzz: {counts}")
    assert wrong == []


def test_wav_fuzz_through_replay_exits_0_or_2_with_one_line(tmp_path):
    rng = random.Random(SEED + 1)
    cases = [c for c in wav_cases(rng) if c[2] is not None]
    sample = [cases[0]] + rng.sample(cases[1:], 11)
    for i, (name, data, valid) in enumerate(sample):
        path = tmp_path / f"cli{i}.wav"
        path.write_bytes(data)
        proc = subprocess.run([sys.executable, "-m", "edge_monitor", "replay", str(path), "--quiet"],
                              capture_output=True, text=True, timeout=120)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("edge-monitor: error:")]
        assert "Traceback" not in proc.stderr, (name, proc.stderr)
        if valid:
            # 1.5 s is long enough for a 1-s decision window; random noise may alarm, but never a bug
            assert proc.returncode in (0, 1, 2), (name, proc.stderr)
        else:
            assert proc.returncode == 2 and len(errors) == 1, (name, proc.returncode, proc.stderr)


# ---------------------------------------------------------------- configs

VALID_CONFIG = {
    "node": "fuzz-node",
    "audio": {"device": "pulse", "sample_rate": 16000, "block_seconds": 0.064, "ring_seconds": 10.0},
    "monitors": [{"name": "fan-1", "model": str(BUNDLE), "channel": 0, "threshold": None,
                  "decision": {"window_seconds": 1.0, "step_seconds": 0.25, "k_of_n": [3, 4], "hysteresis": 0.9,
                               "min_duration_seconds": 1.0, "cooldown_seconds": 5.0, "update_seconds": 10.0,
                               "explain_bands": 3},
                  "health": {"window_seconds": 1.0, "clip_fraction": 0.001, "dead_fraction": 0.99, "low_db": 30.0,
                             "high_db": 20.0, "hold_seconds": 2.0}}],
    "mqtt": {"enabled": False, "host": "localhost", "port": 1883, "keepalive": 30, "telemetry_seconds": 10.0,
             "outbox": {"max_messages": 1000}},
    "logging": {"level": "info", "format": "auto"},
}

BAD_VALUES = [None, True, "x", "", [], {}, [1, 2, 3], float("nan"), float("inf"), float("-inf"), -1, 0, 1e300,
              -1e300, 1e-300, 10 ** 30, "1e3", "9" * 5000, "a" * 100_000, list(range(100_000))]


def leaves(doc, path=()):
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from leaves(value, path + (key,))
    elif isinstance(doc, list) and doc and isinstance(doc[0], dict):
        for i, value in enumerate(doc):
            yield from leaves(value, path + (i,))
    else:
        yield path


def mutated(doc, path, value):
    import copy

    doc = copy.deepcopy(doc)
    node = doc
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return doc


def deep(levels: int):
    value: object = 1
    for _ in range(levels):
        value = [value]
    return value


def config_cases(rng: random.Random) -> list[tuple[str, str]]:
    cases = [("valid", yaml.safe_dump(VALID_CONFIG))]
    for path in leaves(VALID_CONFIG):
        for value in BAD_VALUES:
            cases.append((f"{'.'.join(map(str, path))}={str(value)[:20]}", yaml.safe_dump(mutated(VALID_CONFIG, path,
                                                                                                 value))))
        cases.append((f"{'.'.join(map(str, path))}=deep", yaml.safe_dump(mutated(VALID_CONFIG, path, deep(200)))))
    for i in range(20):  # random bytes after a valid document
        junk = "".join(chr(rng.randrange(1, 0x2FF)) for _ in range(rng.randrange(1, 200)))
        cases.append((f"junk {i}", yaml.safe_dump(VALID_CONFIG) + junk))
    return cases


def test_config_fuzz_every_config_loads_within_its_bounds_or_is_refused_in_one_line(tmp_path, capsys):
    rng = random.Random(SEED + 2)
    counts = {"tried": 0, "refused cleanly": 0, "accepted as valid": 0}
    wrong = []
    for i, (name, text) in enumerate(config_cases(rng)):
        path = tmp_path / f"c{i}.yaml"
        path.write_text(text, encoding="utf-8")
        counts["tried"] += 1
        try:
            settings = load(path)
            counts["accepted as valid"] += 1
            # accepted: within the bounds the types carry (built again, the checks run again)
            type(settings)(**{f: getattr(settings, f) for f in settings.__dataclass_fields__})
        except UserError as exc:
            counts["refused cleanly"] += 1
            if name == "valid":
                wrong.append(f"{name}: refused: {exc}")
            if not one_line(str(exc)):
                wrong.append(f"{name}: error not one line: {str(exc)[:200]!r}")
        except Exception as exc:  # noqa: BLE001 - exactly what the fuzz looks for
            wrong.append(f"{name}: {type(exc).__name__}: {str(exc)[:200]}")
    with capsys.disabled():
        print(f"\nconfig fuzz: {counts}")
    assert wrong == []
    assert counts["refused cleanly"] > counts["tried"] * 0.8  # the bad values are bad for nearly every key


def test_config_fuzz_through_check_exits_0_or_2_with_one_line(tmp_path):
    rng = random.Random(SEED + 3)
    cases = config_cases(rng)
    sample = [cases[0]] + rng.sample(cases[1:], 15)
    for i, (name, text) in enumerate(sample):
        path = tmp_path / f"cli{i}.yaml"
        path.write_text(text, encoding="utf-8")
        proc = subprocess.run([sys.executable, "-m", "edge_monitor", "check", str(path)], capture_output=True,
                              text=True, timeout=120)
        assert "Traceback" not in proc.stderr, (name, proc.stderr)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("edge-monitor: error:")]
        assert (proc.returncode == 0 and not errors) or (proc.returncode == 2 and len(errors) == 1), \
            (name, proc.returncode, proc.stderr[-500:])
        if name == "valid":
            assert proc.returncode == 0, proc.stderr
