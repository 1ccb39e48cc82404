"""``edge-monitor devices``: the audio input devices PortAudio sees."""

from __future__ import annotations

import argparse
import sys

from edge_monitor.node.mic import input_devices


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--all", action="store_true", help="also list output-only devices")


def run(args: argparse.Namespace) -> int:
    """Print the input devices: index, name, host API, input channels, default rate; ``*`` = default input."""
    devices = input_devices(include_outputs=getattr(args, "all", False))
    if not devices:
        print("no input devices found (is the microphone plugged in, and may this user open /dev/snd/*?)",
              file=sys.stderr)
        return 1
    width = max(len("name"), *(len(d.name) for d in devices))
    api_width = max(len("host API"), *(len(d.hostapi) for d in devices))
    print(f"  {'index':>5}  {'name':<{width}}  {'host API':<{api_width}}  {'inputs':>6}  default rate")
    for d in devices:
        mark = "*" if d.is_default else " "
        print(f"{mark} {d.index:>5}  {d.name:<{width}}  {d.hostapi:<{api_width}}  {d.channels:>6}  "
              f"{d.default_rate:.0f} Hz")
    print("* = default input; set audio.device (or a monitor's device) to a name substring or the index")
    return 0
