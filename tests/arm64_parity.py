"""Replay summaries that one architecture writes and another compares: clip scores and events.

``tests/arm64.sh`` runs this natively (x86) before it enters the arm64 root file system:

    python tests/arm64_parity.py write REFERENCE.json [DATA_ROOT]

which replays the demo clips and every WAV under DATA_ROOT (the shared MIMII clips) through
``edge-monitor replay`` (the command itself, as a user runs it) and records, per file, the clip score,
the exit status and every event (type, audio positions, score). ``tests/test_arm64_parity.py`` replays
the same files under arm64 and compares with :func:`compare`.
"""

from __future__ import annotations

import csv
import json
import platform
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from edge_monitor import DEMO_DIR

SCORE_RTOL = 1e-5
"""Relative tolerance for clip scores and event scores between architectures."""


def clip_set(data_root: Path | None) -> dict[str, Path]:
    """Name → path of the clips to compare: ``demo/<file>`` and ``<set>/<class>/<file>`` under data_root."""
    clips = {f"demo/{p.name}": p for p in sorted((DEMO_DIR / "clips").glob("*.wav"))}
    if data_root is not None and data_root.is_dir():
        for p in sorted(data_root.glob("*/*/*.wav")):
            clips[str(p.relative_to(data_root))] = p
    return clips


def summarise(clips: dict[str, Path]) -> dict[str, Any]:
    """Replay ``clips`` with ``edge-monitor replay`` (one process) and summarise each file."""
    with tempfile.TemporaryDirectory() as tmp:
        scores, events = Path(tmp) / "scores.csv", Path(tmp) / "events.jsonl"
        paths = list(clips.values())
        cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = subprocess.run([sys.executable, "-m", "edge_monitor", "replay", *map(str, paths),
                               "--scores", str(scores), "--jsonl", str(events)],
                              capture_output=True, text=True, timeout=3600)
        cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_s = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        if proc.returncode not in (0, 1):
            raise RuntimeError(f"edge-monitor replay exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
        by_path = {str(p): name for name, p in clips.items()}
        files: dict[str, Any] = {name: {"events": []} for name in clips}
        with scores.open(newline="") as f:
            for row in csv.DictReader(f):
                entry = files[by_path[row["file"]]]
                entry["clip_score"] = float(row["clip_score"])
                entry["anomalies"] = int(row["anomalies"])
        for line in events.read_text().splitlines():
            event = json.loads(line)
            anomaly = event.get("anomaly") or {}
            files[by_path[event["source"]]]["events"].append({
                "type": event["type"],
                "audio_position_s": event.get("audio_position_s"),
                "started_position_s": anomaly.get("started_position_s"),
                "score": event.get("score"),
            })
    return {
        "machine": platform.machine(),
        "python": platform.python_version(),
        "exit_status": proc.returncode,
        "replay_cpu_s": cpu_s,  # CPU seconds of the replay process (with its start-up)
        "files": files,
    }


def compare(reference: dict[str, Any], other: dict[str, Any], rtol: float = SCORE_RTOL) -> list[str]:
    """Every difference that matters, one line each: missing files, scores beyond rtol, other events."""
    problems: list[str] = []

    def close(a: float | None, b: float | None) -> bool:
        if a is None or b is None:
            return a is b
        return abs(a - b) <= rtol * max(abs(a), abs(b))

    if reference["exit_status"] != other["exit_status"]:
        problems.append(f"exit status {other['exit_status']} != reference {reference['exit_status']}")
    for name, ref in reference["files"].items():
        got = other["files"].get(name)
        if got is None:
            problems.append(f"{name}: not replayed")
            continue
        if not close(ref.get("clip_score"), got.get("clip_score")):
            problems.append(f"{name}: clip score {got.get('clip_score')} != reference {ref.get('clip_score')}")
        if ref.get("anomalies") != got.get("anomalies"):
            problems.append(f"{name}: {got.get('anomalies')} anomalies != reference {ref.get('anomalies')}")
        strip = [{k: v for k, v in e.items() if k != "score"} for e in ref["events"]]
        if strip != [{k: v for k, v in e.items() if k != "score"} for e in got["events"]]:
            problems.append(f"{name}: events {got['events']} != reference {ref['events']}")
        else:
            for a, b in zip(ref["events"], got["events"]):
                if not close(a["score"], b["score"]):
                    problems.append(f"{name}: {a['type']} at {a['audio_position_s']} s: score {b['score']} "
                                    f"!= reference {a['score']}")
    return problems


def max_relative_difference(reference: dict[str, Any], other: dict[str, Any]) -> float:
    """The largest relative clip-score difference over the files both have."""
    worst = 0.0
    for name, ref in reference["files"].items():
        a, b = ref.get("clip_score"), other["files"].get(name, {}).get("clip_score")
        if a is not None and b is not None and max(abs(a), abs(b)) > 0:
            worst = max(worst, abs(a - b) / max(abs(a), abs(b)))
    return worst


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3) or argv[0] != "write":
        print("usage: python tests/arm64_parity.py write REFERENCE.json [DATA_ROOT]", file=sys.stderr)
        return 2
    data_root = Path(argv[2]) if len(argv) == 3 else None
    summary = summarise(clip_set(data_root))
    Path(argv[1]).write_text(json.dumps(summary, indent=1) + "\n")
    print(f"reference: {len(summary['files'])} clips replayed on {summary['machine']} → {argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
