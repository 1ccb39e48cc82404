"""The interpreter's own C++ log line stays off stderr (core/quiet.py) and shows under --log-level debug."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from edge_monitor import DEMO_DIR
from edge_monitor.core import quiet
from edge_monitor.core.model import interpreter_backend

XNNPACK_LINE = "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
NORMAL_CLIP = DEMO_DIR / "clips" / "normal_id_00_demo.wav"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != quiet.NATIVE_LOG_ENV}
    return subprocess.run([sys.executable, "-m", "edge_monitor", *args], capture_output=True, text=True,
                          timeout=120, env={**environment, **(env or {})})


def test_a_clean_replay_prints_nothing_on_stderr():
    proc = run("replay", str(NORMAL_CLIP))
    assert proc.returncode == 0, proc.stderr
    assert "no anomaly" in proc.stdout
    assert proc.stderr == ""


def test_a_user_error_is_its_own_line_and_nothing_else(tmp_path: Path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not a wav")
    # the normal clip after it: the bundle and its interpreter are loaded before the bad file is read
    proc = run("replay", str(bad), str(NORMAL_CLIP))
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"edge-monitor: error: {bad}: not a WAV file (no RIFF header); pass a RIFF/WAVE .wav file"]


def test_debug_shows_the_interpreter_line():
    if interpreter_backend()[0] != "ai_edge_litert":
        pytest.skip("only LiteRT prints the XNNPACK line (tflite-runtime 2.14 prints nothing to hide)")
    proc = run("--log-level", "debug", "replay", str(NORMAL_CLIP))
    assert proc.returncode == 0, proc.stderr
    assert XNNPACK_LINE in proc.stderr.splitlines()
    # and the environment switch does the same for a library user without the command line
    proc = run("replay", str(NORMAL_CLIP), env={quiet.NATIVE_LOG_ENV: "1"})
    assert XNNPACK_LINE in proc.stderr.splitlines()


def test_only_the_interpreters_info_lines_are_dropped_and_other_threads_lose_nothing(capfd):
    inside = threading.Event()
    written = threading.Event()

    def other_thread() -> None:
        inside.wait(10)
        os.write(2, b"a line another thread wrote meanwhile\n")
        written.set()

    thread = threading.Thread(target=other_thread)
    thread.start()
    quiet.show_native_log(False)
    try:
        with quiet.quiet_native_log():
            os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
            os.write(2, b"WARNING: the interpreter warns\n")
            inside.set()
            assert written.wait(10)
            os.write(2, b"ERROR: and errs\n")
    finally:
        quiet.show_native_log(None)
    thread.join()
    os.write(2, b"after\n")
    assert capfd.readouterr().err.splitlines() == [
        "WARNING: the interpreter warns", "a line another thread wrote meanwhile", "ERROR: and errs", "after"]


def test_shown_means_untouched(capfd):
    quiet.show_native_log(True)
    try:
        with quiet.quiet_native_log():
            os.write(2, b"INFO: shown\n")
    finally:
        quiet.show_native_log(None)
    assert capfd.readouterr().err == "INFO: shown\n"


def test_held_back_output_shows_only_when_the_block_fails(capfd):
    """training's hold-back of TensorFlow's chatter (fd 1 and 2): nothing on success, all of it on failure."""
    with quiet.held_back((1, 2), only_on_error=True):
        os.write(1, b"converter chatter on stdout\n")
        os.write(2, b"MLIR log on stderr\n")
    assert capfd.readouterr() == ("", "")
    with pytest.raises(RuntimeError):
        with quiet.held_back((1, 2), only_on_error=True, limit=1000):
            os.write(1, b"converter chatter on stdout\n")
            os.write(2, b"MLIR log on stderr\n")
            raise RuntimeError("conversion failed")
    out, err = capfd.readouterr()
    assert out == "" and err == "converter chatter on stdout\nMLIR log on stderr\n"
