"""``edge-monitor``: the one console command.

User errors (bad files, bad bundles, bad arguments) end in one line on stderr and exit code 2;
they never print a traceback.
"""

from __future__ import annotations

import argparse
import sys
from importlib import import_module
from pathlib import Path

from . import __version__
from .errors import UserError
from .log import configure

DEMO_DIR = Path(__file__).resolve().parent / "demo"

# subcommand → (module, argument hook, run hook, help). Modules are imported only when needed and
# import TensorFlow only inside the training step, so the sensor node never needs it.
COMMANDS = {
    "train": ("training.train", "add_arguments", "run",
              "train one int8 bundle per machine id from normal WAVs (needs the train extra)"),
    "evaluate": ("training.evaluate", "add_arguments", "run",
                 "AUC/pAUC of a bundle (int8 and float) on labelled test clips"),
    "synth": ("training.synth", "add_arguments", "run", "write a synthetic DCASE-layout data set of machine sounds"),
    "demo": ("training.demo", "add_demo_arguments", "run_demo",
             "evaluate the bundled demo model on the bundled demo clips"),
    "replay": ("edge_monitor.replay", "add_arguments", "run",
               "push WAV files through the monitoring pipeline; exit 1 when an anomaly is found"),
    "run": ("edge_monitor.daemon", "add_arguments", "run",
            "the daemon: listen to the configured microphones, publish events (systemd service)"),
    "devices": ("edge_monitor.mic", "add_devices_arguments", "run_devices",
                "list audio input devices with their channels and default rates"),
    "mqtt-test": ("edge_monitor.mqtt", "add_test_arguments", "run_test",
                  "connect to the configured broker, publish a test message, say exactly what failed"),
    "check": ("edge_monitor.check", "add_arguments", "run",
              "validate a node config and every model bundle it names; print what would run"),
    "make-demo": ("training.demo", "add_make_arguments", "run_make",
                  "rebuild the bundled demo from synthetic data (needs the train extra)"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, as for every user error
        raise UserError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="edge-monitor", description="Acoustic anomaly detection for machines, on the edge.")
    parser.add_argument("--version", action="version", version=f"edge-monitor {__version__}")
    # None: the config's logging section (run), else auto / info
    parser.add_argument("--log-format", choices=("auto", "console", "json"), default=None)
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default=None)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (module, add_hook, run_hook, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        command.set_defaults(run=(module, run_hook))
        getattr(import_module(module), add_hook)(command)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        configure(args.log_format or "auto", args.log_level or "info")
        module, run_hook = args.run
        return int(getattr(import_module(module), run_hook)(args) or 0)
    except UserError as exc:
        print(f"edge-monitor: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("edge-monitor: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
