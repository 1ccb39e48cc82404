"""Finding clips: DCASE 2020 / 2021+ layouts, plain folders, labelled test sets; cached features.

Training data (normal clips only), grouped by (machine type, machine id):
- a DCASE root: ``<type>/train/normal_id_XX_*.wav``
- one machine type folder: ``train/normal_id_XX_*.wav`` (or 2021+ ``section_XX_..._train_normal_...``)
- a folder of such files itself
- a plain folder of normal WAVs (or one with a ``normal/`` subfolder, as MIMII): type = folder name or
  ``--machine``, id = ``--id`` or ``default``

Test data: files named ``normal_*`` / ``anomaly_*`` (2020) or ``..._test_normal_...`` /
``..._test_anomaly_...`` (2021+), or ``normal/`` and ``abnormal/`` (or ``anomaly/``) folders.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_monitor.core.errors import UserError
from edge_monitor.core.features import FeatureParams, log_mel
from edge_monitor.core.wav import load_audio

_DCASE2020 = re.compile(r"^(?P<label>normal|anomaly)_(?P<id>id_\d+)_", re.IGNORECASE)
_DCASE2021 = re.compile(
    r"^(?P<id>section_\d+)_(?:(?:source|target)_)?(?P<split>train|test)_(?P<label>normal|anomaly)_", re.IGNORECASE
)
_LABEL_FOLDERS = {"normal": 0, "abnormal": 1, "anomaly": 1, "anomalous": 1}
DEFAULT_ID = "default"


@dataclass(frozen=True)
class Clip:
    path: Path
    machine_type: str
    machine_id: str | None  # None: the file name does not say (plain folders)
    label: int | None  # 0 normal, 1 anomaly, None unknown

    @property
    def key(self) -> str:
        return f"{self.machine_type}-{self.machine_id}"


def parse_name(path: Path) -> tuple[str | None, int | None]:
    """(machine id, label) from a DCASE-style file name, else (None, label of the parent folder or None)."""
    for pattern in (_DCASE2020, _DCASE2021):
        match = pattern.match(path.name)
        if match:
            return match["id"].lower(), int(match["label"].lower() == "anomaly")
    return None, _LABEL_FOLDERS.get(path.parent.name.lower())


_ID_NUMBER = re.compile(r"^(?:(?P<prefix>id|section)_)?(?P<number>\d+)$", re.IGNORECASE)


def same_machine_id(requested: str, found: str | None) -> bool:
    """Whether ``--id requested`` names the machine id ``found``: ``00``, ``0``, ``id_00`` and ``id_0``
    all name ``id_00`` (and ``section_00`` accepts ``00``, ``0`` and ``section_0``)."""
    if found is None:
        return False
    if requested.lower() == found.lower():
        return True
    a, b = _ID_NUMBER.match(requested), _ID_NUMBER.match(found)
    if not a or not b:
        return False
    prefix_ok = a["prefix"] is None or b["prefix"] is None or a["prefix"].lower() == b["prefix"].lower()
    return prefix_ok and int(a["number"]) == int(b["number"])


def _wavs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".wav")


def _type_dirs(root: Path, split: str) -> list[Path]:
    if (root / split).is_dir():
        return [root]
    return sorted(d for d in root.iterdir() if d.is_dir() and (d / split).is_dir())


def find_training_clips(data: Path, machine: str | None = None, machine_id: str | None = None) -> dict[str, list[Clip]]:
    """Normal training clips by ``<type>-<id>``, filtered by ``machine``/``machine_id`` when given."""
    data = Path(data)
    if not data.is_dir():
        raise UserError(f"{data}: no such folder; give a DCASE root, a machine folder or a folder of normal WAVs")
    groups: dict[str, list[Clip]] = defaultdict(list)
    type_dirs = _type_dirs(data, "train")
    if type_dirs:
        for type_dir in type_dirs:
            kind = type_dir.name if type_dir != data or machine is None else machine
            for path in _wavs(type_dir / "train"):
                clip_id, label = parse_name(path)
                if label != 1:
                    groups_key = clip_id or DEFAULT_ID
                    groups[f"{kind}-{groups_key}"].append(Clip(path, kind, groups_key, 0))
    else:
        folder = data / "normal" if (data / "normal").is_dir() else data
        kind = machine or (data.parent.name if data.name.lower() == "train" else data.name)
        for path in _wavs(folder):
            clip_id, label = parse_name(path)
            if label == 1:
                continue
            clip_id = clip_id or machine_id or DEFAULT_ID
            groups[f"{kind}-{clip_id}"].append(Clip(path, kind, clip_id, 0))
    selected = {
        key: clips
        for key, clips in groups.items()
        if (machine is None or clips[0].machine_type == machine)
        and (machine_id is None or same_machine_id(machine_id, clips[0].machine_id))
    }
    if not selected:
        what = " ".join(f"{flag} {value}" for flag, value in (("--machine", machine), ("--id", machine_id)) if value)
        raise UserError(f"{data}: no normal training WAVs found{' for ' + what if what else ''}; "
                        f"found {', '.join(sorted(groups)) or 'none'}")
    return dict(sorted(selected.items()))


def find_test_clips(test_dir: Path, machine_type: str | None = None) -> list[Clip]:
    """Labelled clips under ``test_dir``; unlabelled files are left out (a test set needs labels)."""
    test_dir = Path(test_dir)
    if not test_dir.is_dir():
        raise UserError(f"{test_dir}: no such folder; give a folder of labelled test WAVs")
    folders: list[tuple[str, Path]] = []
    type_dirs = _type_dirs(test_dir, "test")
    if type_dirs:
        for type_dir in type_dirs:
            if machine_type is None or type_dir == test_dir or type_dir.name == machine_type:
                folders.append((type_dir.name, type_dir / "test"))
    else:
        label_dirs = [d for d in sorted(test_dir.iterdir()) if d.is_dir() and d.name.lower() in _LABEL_FOLDERS]
        kind = machine_type or test_dir.name
        folders = [(kind, d) for d in label_dirs] or [(kind, test_dir)]
    clips = []
    for kind, folder in folders:
        for path in _wavs(folder):
            clip_id, label = parse_name(path)
            if label is not None:
                clips.append(Clip(path, kind, clip_id, label))
    if not clips:
        raise UserError(
            f"{test_dir}: no labelled test WAVs (names normal_*/anomaly_* or folders normal/ and abnormal/)"
        )
    return clips


class FeatureCache:
    """Log-mel frames per file, keyed by the file's content, the feature parameters and the channel."""

    def __init__(self, folder: Path | None, params: FeatureParams, channel: int | str = 0):
        self.folder = folder
        self.params = params
        self.channel = channel
        self.hits = 0
        self.misses = 0
        recipe = repr((sorted(params.to_dict().items()), channel)).encode()
        self._recipe = hashlib.sha256(recipe).hexdigest()[:16]
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)

    def frames(self, path: Path, digest: str) -> np.ndarray:
        """Log-mel frames of ``path`` (whose sha256 is ``digest``), from the cache when possible."""
        cached = self.folder / f"{digest[:32]}-{self._recipe}.npy" if self.folder is not None else None
        if cached is not None and cached.is_file():
            try:
                frames = np.load(cached)
                if frames.ndim == 2 and frames.shape[1] == self.params.n_mels:
                    self.hits += 1
                    return frames
            except (OSError, ValueError):
                pass  # a damaged cache entry is recomputed
        self.misses += 1
        frames = log_mel(load_audio(path, self.params.sample_rate, self.channel), self.params)
        if cached is not None:
            tmp = cached.with_suffix(".tmp.npy")
            np.save(tmp, frames)
            tmp.replace(cached)
        return frames
