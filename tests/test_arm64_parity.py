"""Replay on this machine equals replay on the machine that wrote the reference (x86 → arm64).

The arm64 stage (``tests/arm64.sh``) writes the reference natively with ``tests/arm64_parity.py`` and
runs this test inside the arm64 root file system with ``EDGE_MONITOR_PARITY_REFERENCE`` (and
``EDGE_MONITOR_PARITY_DATA``, the shared MIMII clips) set. Elsewhere there is nothing to compare with.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from arm64_parity import clip_set, compare, max_relative_difference, summarise  # noqa: E402

REFERENCE = os.environ.get("EDGE_MONITOR_PARITY_REFERENCE")


@pytest.mark.skipif(not REFERENCE, reason="no reference replay (the arm64 stage, tests/arm64.sh, sets one)")
def test_replay_equals_reference_replay():
    reference = json.loads(Path(REFERENCE).read_text())
    data = os.environ.get("EDGE_MONITOR_PARITY_DATA")
    clips = clip_set(Path(data) if data else None)
    assert set(clips) == set(reference["files"]), "not the same clips as the reference run"
    assert len(clips) > 2, "only the demo clips: the shared MIMII clips were not found"
    here = summarise(clips)
    out = os.environ.get("EDGE_MONITOR_PARITY_OUT")
    if out:  # for the stage's figures (differences, CPU time as a ratio to the reference run)
        Path(out).write_text(json.dumps(here, indent=1) + "\n")
    problems = compare(reference, here)
    print(f"{len(clips)} clips, {reference['machine']} → {here['machine']}: largest relative clip-score "
          f"difference {max_relative_difference(reference, here):.3g}")
    assert not problems, "\n".join(problems)


def test_compare_finds_what_differs():
    """The comparison itself: a score beyond 1e-5, a moved event, a missing file are each reported."""
    ref = {"exit_status": 1, "files": {"a.wav": {"clip_score": 1.0, "anomalies": 1, "events": [
        {"type": "anomaly_start", "audio_position_s": 2.688, "started_position_s": 0.164, "score": 0.86}]}}}
    same = json.loads(json.dumps(ref))
    same["files"]["a.wav"]["clip_score"] = 1.0 + 5e-6
    assert compare(ref, same) == []
    far = json.loads(json.dumps(ref))
    far["files"]["a.wav"]["clip_score"] = 1.0 + 2e-5
    assert "clip score" in compare(ref, far)[0]
    moved = json.loads(json.dumps(ref))
    moved["files"]["a.wav"]["events"][0]["audio_position_s"] = 2.72
    assert "events" in compare(ref, moved)[0]
    score = json.loads(json.dumps(ref))
    score["files"]["a.wav"]["events"][0]["score"] = 0.87
    assert "score" in compare(ref, score)[0]
    assert compare(ref, {"exit_status": 1, "files": {}}) == ["a.wav: not replayed"]
