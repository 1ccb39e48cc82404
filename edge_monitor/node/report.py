"""``replay --report DIR``: the picture of each replayed file (``core.report``) written into ``DIR``.

``DIR/<file stem>.html`` (self-contained) and ``DIR/<file stem>.png`` (the same figure, only where
matplotlib is installed: the train extra; without it the PNG is skipped with one info line per run).
With several monitors (``--config``) each gets its own pair: ``<file stem>.<monitor>.html``. Files go
through ``statedir`` (folders 0750, files 0640, written atomically).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import structlog

from edge_monitor.core.features import FeatureParams, log_mel
from edge_monitor.core.report import Trace, render_html, render_png
from edge_monitor.core.wav import load_audio
from edge_monitor.node.statedir import ensure_dir, write_atomic

log = structlog.get_logger()
_told_no_matplotlib = False


@dataclass(frozen=True)
class ReportFiles:
    html: Path
    png: Path | None  # None: matplotlib is not installed


def prepare(folder: Path) -> Path:
    """Create the report folder (0750) or raise OSError / NotADirectoryError."""
    ensure_dir(folder)
    if not folder.is_dir():
        raise NotADirectoryError(20, "Not a directory", str(folder))
    return folder


def write_report(folder: Path, trace: Trace, wav: Path, channel: int | str, params: FeatureParams,
                 stem: str) -> ReportFiles:
    """Render ``trace`` with the log-mel of ``wav`` (read and resampled as replay reads it, the bundle's
    ``params``) and write ``folder/<stem>.html`` and, with matplotlib, ``folder/<stem>.png``."""
    global _told_no_matplotlib
    frames = log_mel(load_audio(wav, params.sample_rate, channel), params)
    html_path = folder / f"{stem}.html"
    write_atomic(html_path, render_html(trace, frames, params).encode("utf-8"))
    png = render_png(trace, frames, params)
    png_path = None
    if png is not None:
        png_path = folder / f"{stem}.png"
        write_atomic(png_path, png)
    elif not _told_no_matplotlib:
        _told_no_matplotlib = True
        log.info("report PNG skipped: matplotlib is not installed (the train extra); the HTML report has the "
                 "same figure", monitor=trace.monitor, folder=str(folder))
    return ReportFiles(html_path, png_path)
