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
import getpass
import json
import os
import re
from pathlib import Path

from edge_monitor.core.errors import UserError
from edge_monitor.core.events import iso_ms, now_ms
from edge_monitor.node.evidence import faults_dir, normal_clip
from edge_monitor.node.statedir import ensure_dir, write_atomic

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


def find_evidence(state_dir: Path, anomaly_id: str) -> Path | None:
    """The sidecar of ``anomaly_id`` in any monitor's evidence folder, or None."""
    folder = state_dir / "evidence"
    if not folder.is_dir():
        return None
    for monitor in sorted(p for p in folder.iterdir() if p.is_dir()):
        side = monitor / f"{anomaly_id}.json"
        if side.is_file():
            return side
    return None


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
    side = find_evidence(state_dir, anomaly_id)
    if side is None:
        raise UserError(f"label: no evidence for {anomaly_id} in {state_dir / 'evidence'} (never written, removed "
                        "by retention, or another node's alert)")
    try:
        data = json.loads(side.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"label: {side}: cannot read the evidence sidecar ({exc})") from None
    monitor = side.parent.name
    wav = side.with_suffix(".wav")
    if not wav.is_file():
        raise UserError(f"label: {wav}: the evidence WAV is missing; nothing to label")
    machine = data.get("machine") if isinstance(data.get("machine"), dict) else {}
    targets = {"normal": normal_clip(state_dir, monitor, str(machine.get("type") or monitor),
                                     str(machine.get("id") or "id_00"), "label", anomaly_id),
               "anomaly": faults_dir(state_dir, monitor) / f"{anomaly_id}.wav"}
    target = targets[args.label]
    try:
        ensure_dir(target.parent)
        _link_or_copy(wav, target)
        for label, other in targets.items():
            if label != args.label:
                other.unlink(missing_ok=True)
        data.update(label=args.label, note=args.note, labelled=iso_ms(now_ms()), labelled_by=_user(),
                    labelled_file=str(target))
        write_atomic(side, (json.dumps(data, indent=1) + "\n").encode())
    except OSError as exc:
        raise UserError(f"label: cannot write {exc.filename or target}: {exc.strerror}") from None
    print(f"{anomaly_id} ({monitor}): labelled {args.label}; clip in {target}")
    return 0


def _link_or_copy(source: Path, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:  # another file system, or links not allowed: a copy (0640, synced)
        write_atomic(target, source.read_bytes())
        return
    os.replace(tmp, target)


def _user() -> str:
    try:
        return os.environ.get("SUDO_USER") or getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())
