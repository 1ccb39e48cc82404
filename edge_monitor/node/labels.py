"""An operator's verdict on an alert's evidence: one implementation for ``edge-monitor label`` and the
node page's ``POST /api/label`` (``node/web/server.py``). See ``commands/label.py`` for where clips go."""

from __future__ import annotations

import getpass
import json
import os
from pathlib import Path

from edge_monitor.core.errors import UserError
from edge_monitor.core.events import iso_ms, now_ms
from edge_monitor.node.evidence import faults_dir, normal_clip
from edge_monitor.node.statedir import ensure_dir, write_atomic

VERDICTS = ("normal", "anomaly")


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


def apply_label(state_dir: Path, anomaly_id: str, verdict: str, note: str | None = None) -> tuple[str, Path]:
    """Write ``verdict`` into the sidecar of ``anomaly_id`` and put its clip where that verdict's set lives.
    Returns (monitor, the clip's new path); raises UserError (unknown id, unreadable sidecar, disk)."""
    if verdict not in VERDICTS:
        raise UserError(f"label: {verdict!r} is not a verdict (normal or anomaly)")
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
    target = targets[verdict]
    try:
        ensure_dir(target.parent)
        _link_or_copy(wav, target)
        for label, other in targets.items():
            if label != verdict:
                other.unlink(missing_ok=True)
        data.update(label=verdict, note=note, labelled=iso_ms(now_ms()), labelled_by=_user(),
                    labelled_file=str(target))
        write_atomic(side, (json.dumps(data, indent=1) + "\n").encode())
    except OSError as exc:
        raise UserError(f"label: cannot write {exc.filename or target}: {exc.strerror}") from None
    return monitor, target


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
