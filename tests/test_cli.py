"""The console command: the demo works on a base install, user errors are one line and exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_monitor import DEMO_DIR
from edge_monitor.core.wav import write_wav


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_monitor", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("edge-monitor: error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def test_demo_flags_the_anomalous_clip_only(tmp_path):
    proc = run("demo", "--out", str(tmp_path / "report"))
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines() if line.startswith("  ")}
    assert lines["anomaly_id_00_demo.wav"].endswith("ANOMALY")
    assert lines["normal_id_00_demo.wav"].endswith("normal")
    result = json.loads((tmp_path / "report" / "results.json").read_text())
    assert result["int8"]["detected"] == 1 and result["int8"]["false_alarms"] == 0


def test_demo_bundle_is_small_and_reproducible_by_documented_command():
    files = [p for p in DEMO_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 3_000_000
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert "edge-monitor make-demo" in readme


@pytest.mark.parametrize(
    "args, phrase",
    [
        (("frobnicate",), "invalid choice"),
        (("train",), "required"),
        (("evaluate", "/nonexistent/bundle", "/nonexistent/test"), "no model bundle"),
        (("synth", "OUT", "--kinds", "blender"), "blender"),
        (("train", "/nonexistent", "--out", "x"), "no such folder"),
        (("train", "DATA", "--out", "x", "--val-fraction", "1.5"), "--val-fraction"),
        (("train", "DATA", "--out", "x", "--channel", "left"), "channel"),
    ],
)
def test_user_errors_are_one_line(args, phrase, tmp_path):
    (tmp_path / "DATA").mkdir()
    assert phrase in one_error_line(run(*args, cwd=tmp_path))


def test_evaluate_refuses_a_bad_test_clip(tmp_path):
    test = tmp_path / "test"
    test.mkdir()
    write_wav(test / "normal_id_00_0.wav", np.zeros(32000, np.float32), 16000)
    (test / "anomaly_id_00_1.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEdata")
    line = one_error_line(run("evaluate", str(DEMO_DIR / "fan-id_00"), str(test), "--out", str(tmp_path / "o")))
    assert "anomaly_id_00_1.wav" in line


def test_version():
    proc = run("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("edge-monitor ")


BUG = """
import sys, types
from edge_monitor import commands
boom = types.ModuleType("boom")
boom.add_arguments = lambda parser: None
def run(args):
    return {}["no such key"]  # a bug, as a KeyError from deep inside a command would be
boom.run = run
sys.modules["boom"] = boom
commands.COMMANDS["boom"] = commands.Command("boom", "a command with a bug", "edge-monitor boom")
sys.exit(commands.main(sys.argv[1:]))
"""


def test_a_bug_exits_70_with_one_line_never_1():
    """Exit codes scripts can trust: 1 means "anomaly found", so an unexpected error is 70 (EX_SOFTWARE), one
    line saying it is a bug; the traceback only with --log-level debug. (The bug is planted: there is no
    other way to have one on purpose.)"""
    proc = subprocess.run([sys.executable, "-c", BUG, "boom"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 70, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "edge-monitor: internal error (a bug in edge-monitor, please report it): KeyError: 'no such key'; "
        "run with --log-level debug for the traceback"]
    debug = subprocess.run([sys.executable, "-c", BUG, "--log-level", "debug", "boom"], capture_output=True,
                           text=True, timeout=60)
    assert debug.returncode == 70 and "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1].startswith("edge-monitor: internal error")


def test_help_names_the_exit_codes():
    proc = run("--help")
    assert proc.returncode == 0
    assert "0 nothing found, 1 anomaly found, 2 user error, 70 a bug in edge-" in " ".join(proc.stdout.split())


def test_a_warning_does_not_turn_a_one_line_error_into_three(tmp_path):
    """Issue 15: a RuntimeWarning (here numpy's overflow, raised by a planted command) made a user error three
    lines; outside --log-level debug, the command line prints only its one line."""
    code = BUG.replace('return {}["no such key"]  # a bug, as a KeyError from deep inside a command would be',
                       'import numpy as np, warnings; np.float32(3e38) * np.float32(10); '
                       'warnings.warn("something odd", RuntimeWarning); '
                       'from edge_monitor.core.errors import UserError; raise UserError("bad input, do this")')
    proc = subprocess.run([sys.executable, "-c", code, "boom"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["edge-monitor: error: bad input, do this"]
    debug = subprocess.run([sys.executable, "-c", code, "--log-level", "debug", "boom"], capture_output=True,
                           text=True, timeout=60)
    assert "RuntimeWarning" in debug.stderr  # shown when asked for
