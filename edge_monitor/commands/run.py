"""``edge-monitor run``: the daemon on the sensor node (``edge_monitor.node.daemon``), as systemd runs it."""

from __future__ import annotations

import argparse
from pathlib import Path

from edge_monitor.commands.check import default_config
from edge_monitor.node.config import load
from edge_monitor.node.daemon import Daemon


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path,
                        help="config file (default: /etc/edge-monitor/config.yaml, else ./config.yaml)")


def run(args: argparse.Namespace) -> int:
    path = args.config or default_config()
    settings = load(path)
    daemon = Daemon(path, settings, log_format=getattr(args, "log_format", None),
                    log_level=getattr(args, "log_level", None))
    return daemon.run()
