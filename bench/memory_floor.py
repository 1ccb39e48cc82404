"""The memory floor of a node process, one import at a time: resident memory (VmRSS) after each step.

    python bench/memory_floor.py [--python-cmd CMD] [--emulated]

Steps, each in the same child process: bare Python; + numpy; + sounddevice with PortAudio initialised
(its device scan); + the TFLite interpreter module (``EDGE_MONITOR_TFLITE`` picks it, as in the
daemon); + the demo bundle loaded and one ``WindowScorer`` (the interpreter with the int8 model,
one window scored); + the daemon's modules (``edge_monitor.node.daemon``). The first four are the
floor no edge-monitor code can go below.

``--python-cmd`` runs the child with another interpreter (e.g. the arm64 stage's wrapper into its
emulated root file system); the child must keep the PID of the command. With ``--emulated`` the RSS
is split into the guest's and qemu's own (:func:`qemu_split`, which ``bench/daemon.py`` uses too).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

CHILD = r'''
import sys
def step(name):
    print(name, flush=True)
    sys.stdin.readline()
step("python")
import numpy
step("+ numpy " + numpy.__version__)
import sounddevice
sounddevice.query_devices()
step("+ sounddevice, PortAudio initialised (" + sounddevice.get_portaudio_version()[1].split(",")[0] + ")")
from edge_monitor.core.model import interpreter_backend
name, _ = interpreter_backend()
step("+ interpreter module (" + name + ")")
from edge_monitor import DEMO_DIR
from edge_monitor.core.model import Bundle, WindowScorer
bundle = Bundle.load(DEMO_DIR / "fan-id_00")
scorer = WindowScorer(bundle, batch_size=1)
scorer.errors(numpy.zeros((1, bundle.params.window_size), dtype=numpy.float32))
step("+ demo bundle and one WindowScorer (one window scored)")
import edge_monitor.node.daemon
step("+ edge_monitor.node.daemon imported")
'''


GUEST_TOP = 0x7F00_0000_0000
"""qemu-user (64-bit guest on a 64-bit host, no reserved address space) maps the guest from 0x40_0000_0000
and the guest program at 0x55_0000_0000; its own heap is the host's ``[heap]`` and its own mmaps
(translation cache, thread stacks of its own, libraries) are where the host kernel puts them, near
the top of the address space (0x7f…)."""


def qemu_split(pid: int) -> tuple[float, float]:
    """(guest MB, qemu MB) of a qemu-user process's RSS, from /proc/<pid>/smaps.

    qemu's own: the qemu binary's mappings, ``[heap]``, ``[stack]``, ``[vdso]``/``[vvar]`` and every
    mapping at or above ``GUEST_TOP``; the guest's: the rest (its programs, libraries, heap and stacks).
    """
    guest = own = 0
    current_own = False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split(maxsplit=5)
        if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
            start = int(head[0].split("-")[0], 16)
            name = head[5] if len(head) > 5 else ""
            current_own = (start >= GUEST_TOP or "qemu-" in name
                           or name in ("[heap]", "[stack]", "[vdso]", "[vvar]", "[vsyscall]"))
        elif head[0] == "Rss:":
            if current_own:
                own += int(head[1])
            else:
                guest += int(head[1])
    return guest / 1024, own / 1024


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python-cmd", help="command (shell words) that runs the child's Python")
    parser.add_argument("--emulated", action="store_true", help="the child runs under qemu-user: split its RSS")
    args = parser.parse_args()
    cmd = shlex.split(args.python_cmd) if args.python_cmd else [sys.executable]
    proc = subprocess.Popen([*cmd, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        previous = 0.0
        for line in proc.stdout:
            name = line.strip()
            total = rss_mb(proc.pid)
            extra = ""
            if args.emulated:
                guest, own = qemu_split(proc.pid)
                extra = f"   guest {guest:6.1f} MB, qemu {own:5.1f} MB"
                total_shown = guest
            else:
                total_shown = total
            print(f"{name:66s} RSS {total:6.1f} MB{extra}   step +{total_shown - previous:5.1f} MB")
            previous = total_shown
            proc.stdin.write("\n")
            proc.stdin.flush()
    finally:
        proc.stdin.close()
        if proc.wait(60) != 0:
            sys.exit(f"the child failed (exit {proc.returncode})")


if __name__ == "__main__":
    main()
