"""``edge-monitor label EVENT_ID normal|anomaly [--note TEXT]``: the operator's verdict on an alert's evidence.

The verdict goes into the evidence's sidecar (``<state_dir>/evidence/<monitor>/<id>.json``: label, note,
time, user), and the clip joins a set the next training or evaluation uses:

- ``normal``: ``<state_dir>/normal/<monitor>/<type>/train/normal_id_<NN>_label_<id>.wav`` — the monitor's
  normal set (16-bit mono WAVs at the model rate in the DCASE layout ``record --out`` writes), read by
  ``train <state_dir>/normal/<monitor>`` and ``calibrate --from``;
- ``anomaly``: ``<state_dir>/faults/<monitor>/<id>.wav`` — labelled fault clips, which ``evaluate
  --labels <state_dir>`` scores as anomalous test clips (``training/plant.py``).

The clip is hard-linked when it can be (the evidence's retention may delete its own copy later), else
copied. Labelling again replaces the verdict (and moves the clip). EVENT_ID is the anomaly's id (16 hex
digits) or any of its event ids (``<id>/<n>``). Exit 0, or 2 with one line (no evidence for that id, ...).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from edge_monitor.core.errors import UserError
from edge_monitor.node.labels import apply_label

_EVENT_ID = re.compile(r"^(?P<id>[0-9a-f]{16})(?:/\d+)?$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("event_id", metavar="EVENT_ID", help="the alert's id (16 hex digits) or an event id <id>/<n>")
    parser.add_argument("label", choices=("normal", "anomaly"), help="the verdict")
    parser.add_argument("--note", default=None, help="a note kept with the verdict (what was found)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--config", type=Path,
                       help="node config whose state_dir holds the evidence (default: /etc/edge-monitor/config.yaml, "
                            "else ./config.yaml)")
    where.add_argument("--state-dir", type=Path, help="the state folder itself (e.g. the DIR of replay --evidence)")


def run(args: argparse.Namespace) -> int:
    match = _EVENT_ID.match(args.event_id.strip().lower())
    if match is None:
        raise UserError(f"label: {args.event_id!r} is not an event id (16 hex digits, optionally /<n>, as in the "
                        "event's id or event_id)")
    anomaly_id = match["id"]
    if args.state_dir is not None:
        state_dir = args.state_dir
    else:
        from edge_monitor.commands.check import default_config
        from edge_monitor.node.config import load

        state_dir = Path(load(args.config or default_config()).state_dir)
    monitor, target = apply_label(state_dir, anomaly_id, args.label, args.note)
    print(f"{anomaly_id} ({monitor}): labelled {args.label}; clip in {target}")
    return 0
