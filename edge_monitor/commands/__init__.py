"""``edge-monitor``: the one console command; each subcommand is a module imported only when chosen.

Exit codes, the same for every command: 0 ran and found nothing; 1 an anomaly was found (replay);
2 a user error (one line on stderr, never a traceback); 70 (EX_SOFTWARE) an unexpected error, i.e. a
bug: one line saying so, the traceback only with ``--log-level debug``.
"""

from __future__ import annotations

import argparse
import sys
import traceback
import warnings
from dataclasses import dataclass
from importlib import import_module

from edge_monitor import __version__
from edge_monitor.core.errors import UserError

EX_SOFTWARE = 70


@dataclass(frozen=True)
class Command:
    module: str
    help: str
    example: str
    add_hook: str = "add_arguments"
    run_hook: str = "run"


# In the order of the work: commission a machine, run it, look after the node; then the tools.
# Training modules import TensorFlow only inside the training step, so the sensor node never needs it.
COMMANDS: dict[str, Command] = {
    "record": Command("edge_monitor.commands.record",
                      "record normal sound of a monitor's machine through the daemon's chain, as training clips",
                      "edge-monitor record --config /etc/edge-monitor/config.yaml --monitor fan-1 --seconds 600 --out data"),
    "train": Command("training.train", "train one int8 bundle per machine id from normal WAVs (needs the train extra)",
                     "edge-monitor train data/dcase/fan --machine fan --id 00 --out models"),
    "evaluate": Command("training.evaluate", "AUC/pAUC (int8 and float), precision/recall/F1 and the detector's verdicts on labelled test clips",
                        "edge-monitor evaluate models/fan-id_00 data/dcase/fan"),
    "calibrate": Command("edge_monitor.commands.calibrate",
                         "fit a monitor's decision threshold on the node's own normal sound (live or WAVs)",
                         "edge-monitor calibrate --config /etc/edge-monitor/config.yaml --monitor fan-1 --seconds 300"),
    "replay": Command("edge_monitor.commands.replay",
                      "push WAV files through the monitoring pipeline; exit 1 when an anomaly is found",
                      "edge-monitor replay recording.wav --model models/fan-id_00 --jsonl events.jsonl"),
    "run": Command("edge_monitor.commands.run",
                   "the daemon: listen to the configured microphones, publish events (systemd service)",
                   "edge-monitor run --config /etc/edge-monitor/config.yaml"),
    "check": Command("edge_monitor.commands.check",
                     "validate a node config and every model bundle it names; print what would run",
                     "edge-monitor check /etc/edge-monitor/config.yaml"),
    "label": Command("edge_monitor.commands.label",
                     "record the operator's verdict on an alert's evidence: normal joins the normal set, anomaly "
                     "the labelled faults",
                     "edge-monitor label 1a23588de4300b12 normal --note 'belt replaced' --config "
                     "/etc/edge-monitor/config.yaml"),
    "devices": Command("edge_monitor.commands.devices",
                       "list audio input devices with their channels and default rates",
                       "edge-monitor devices"),
    "mqtt-test": Command("edge_monitor.commands.mqtt_test",
                         "connect to the configured broker, publish a test message, say exactly what failed",
                         "edge-monitor mqtt-test --config /etc/edge-monitor/config.yaml"),
    "synth": Command("training.synth", "write a synthetic DCASE-layout data set of machine sounds",
                     "edge-monitor synth data/synthetic --kinds fan"),
    "demo": Command("training.demo", "evaluate the bundled demo model on the bundled demo clips",
                    "edge-monitor demo", "add_demo_arguments", "run_demo"),
    "make-demo": Command("training.demo", "rebuild the bundled demo from synthetic data (needs the train extra)",
                         "edge-monitor make-demo", "add_make_arguments", "run_make"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, as for every user error
        raise UserError(f"{self.prog}: {message}")


def _chosen(argv: list[str]) -> str | None:
    """The subcommand named in ``argv`` (the first word that is not a global option or its value)."""
    takes_value = {"--log-format", "--log-level"}
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word in takes_value:
            skip = True
        elif not word.startswith("-"):
            return word
    return None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; only the chosen command's module is imported (all of them when ``argv`` is None)."""
    # Raw description and epilog: an example stays one line, whatever the terminal's width, to copy whole
    parser = _Parser(prog="edge-monitor", description="Acoustic anomaly detection for machines, on the edge.",
                     epilog="exit codes: 0 nothing found, 1 anomaly found, 2 user error, 70 a bug in edge-monitor",
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"edge-monitor {__version__}")
    # None: the config's logging section (run), else auto / info
    parser.add_argument("--log-format", choices=("auto", "console", "json"), default=None)
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default=None,
                        help="debug also shows the interpreter's own messages and the traceback of a bug")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")
    chosen = _chosen(argv) if argv is not None else None
    for name, command in COMMANDS.items():
        sp = sub.add_parser(name, help=command.help, description=command.help,
                            epilog=f"example: {command.example}", formatter_class=argparse.RawDescriptionHelpFormatter)
        sp.set_defaults(run=(command.module, command.run_hook))
        if argv is None or name == chosen:
            getattr(import_module(command.module), command.add_hook)(sp)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--log-level=debug" in argv or ("--log-level" in argv and "debug" in argv)
    if not debug and not sys.warnoptions:  # a user error stays one line: no RuntimeWarning / overflow chatter
        warnings.simplefilter("ignore")  # (with -W or --log-level debug they show)
    try:
        parser = build_parser(argv)
        args = parser.parse_args(argv)
        debug = args.log_level == "debug"
        from edge_monitor.node.log import configure

        configure(args.log_format or "auto", args.log_level or "info")
        module, run_hook = args.run
        return int(getattr(import_module(module), run_hook)(args) or 0)
    except UserError as exc:
        print(f"edge-monitor: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("edge-monitor: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - a bug: one line, never exit 1 ("anomaly found")
        if debug:
            traceback.print_exc()
        print(f"edge-monitor: internal error (a bug in edge-monitor, please report it): "
              f"{type(exc).__name__}: {exc}" + ("" if debug else "; run with --log-level debug for the traceback"),
              file=sys.stderr)
        return EX_SOFTWARE

