"""A picture of one replay: what the detector saw in one file, for the engineer who asks "why (not)?".

One figure, two forms:

- a self-contained HTML page (:func:`render_html`): the log-mel spectrogram (the model's own features,
  an embedded ``data:image/png`` URI written by ``core.picture``), below it the decision score against the
  decision threshold over the audio position (inline SVG), shaded anomaly spans (from the anomaly's
  start to its end), health spans (a condition bad → ok) and machine-stopped spans, a marker where each
  ``anomaly_start`` fired, and a table of the events with the bands each one named. No script, no
  external resource (no CDN, no font, no link): it opens offline and from an e-mail attachment.
- a PNG of the same figure (:func:`render_png`) where matplotlib is installed (the train extra); without
  it, None. The HTML never needs it.

The decision scores are the detector's own: ``core.detector.sliding_means`` of the window errors the
Monitor kept (``keep_errors``) over ``decision_length`` windows, each placed at the audio position where
its last window ends (the position the detector gives its decisions). The detector takes one of them
every ``step_seconds``; the page shows all of them. A mean that spans a window the detector did not judge
(a frame far below the training level, ``Monitor._decide``) is left out.

Pure: values in, text and bytes out. ``node/report.py`` writes replay's reports, ``training/evaluate.py``
those of the misclassified clips.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge_monitor.core.detector import decision_length, sliding_means
from edge_monitor.core.events import Event
from edge_monitor.core.features import FeatureParams, mel_band_edges
from edge_monitor.core.picture import log_mel_image, png_bytes

MAX_COLUMNS = 2000  # spectrogram columns in a report (longer files: frames averaged in groups)
MAX_POINTS = 4000   # score points in a report (longer files: the largest score of each group, peaks kept)


@dataclass(frozen=True)
class Span:
    """A stretch of the file: ``kind`` is ``anomaly``, ``health`` or ``stopped``; ``open``: not closed before
    the end of the file (``end_s`` is then the file's end)."""

    kind: str
    start_s: float
    end_s: float
    label: str
    open: bool = False


@dataclass(frozen=True, eq=False)
class Trace:
    """What one replay of one file gave one monitor: its decision scores over time and its events."""

    file: str
    monitor: str
    model: str
    duration_s: float
    threshold: float          # the decision threshold in force
    window_seconds: float     # the decision window
    positions_s: np.ndarray   # audio position of each decision score (end of its last window)
    scores: np.ndarray        # decision scores; NaN where the mean spans a window the detector did not judge
    events: tuple[Event, ...]
    clip_score: float = math.nan

    @property
    def alerts(self) -> tuple[Event, ...]:
        return tuple(e for e in self.events if e.type == "anomaly_start")

    @property
    def spans(self) -> tuple[Span, ...]:
        return spans_of(self.events, self.duration_s)


def decision_scores(errors: np.ndarray, judged: np.ndarray | None, params: FeatureParams,
                    window_seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """(positions in s, scores): every decision score a stream of window errors gives (``sliding_means`` over
    ``decision_length`` windows), at the end of its last window; NaN where it spans an unjudged window."""
    length = decision_length(window_seconds, params)
    scores = sliding_means(errors, length)
    if judged is not None and len(scores) and not np.all(judged):
        scores = scores.copy()
        scores[sliding_means((~np.asarray(judged, bool)).astype(np.float64), length) > 0] = np.nan
    last_window = np.arange(len(scores)) + length - 1
    positions = ((last_window + params.frames - 1) * params.hop_length + params.n_fft) / params.sample_rate
    return positions, scores


def trace_of(monitor, events: Sequence[Event], file: str, duration_s: float) -> Trace:  # noqa: ANN001
    """The trace of a finished replay: ``monitor`` (a ``core.monitor.Monitor`` made with ``keep_errors``) after
    the loop ran the file, ``events`` what the loop emitted (``Loop.keep_events``)."""
    window = monitor.settings.decision.window_seconds
    positions, scores = decision_scores(monitor.window_errors(), monitor.judged_windows(), monitor.params, window)
    return Trace(file=file, monitor=monitor.name, model=monitor.bundle.name, duration_s=float(duration_s),
                 threshold=float(monitor.threshold.value), window_seconds=float(window), positions_s=positions,
                 scores=scores, events=tuple(events), clip_score=monitor.clip_score())


def spans_of(events: Sequence[Event], duration_s: float) -> tuple[Span, ...]:
    """Anomaly spans (the anomaly's start → its ``anomaly_end``), health spans (``bad`` → ``ok`` of one
    condition) and machine-stopped spans (``machine_stopped`` → ``machine_running``), in order of start."""
    spans: list[Span] = []
    opened: dict[tuple[str, str], tuple[float, str]] = {}
    for e in events:
        if e.type == "anomaly_start" and e.anomaly is not None:
            opened[("anomaly", e.id)] = (e.anomaly.started_position_s, "anomaly")
        elif e.type == "anomaly_end" and ("anomaly", e.id) in opened:
            start, label = opened.pop(("anomaly", e.id))
            reason = e.anomaly.reason if e.anomaly else None
            spans.append(Span("anomaly", start, e.audio_position_s, f"{label} (ended: {reason})"))
        elif e.type == "health" and e.health is not None:
            key = ("health", e.id)
            if e.health.status == "bad":
                opened[key] = (e.audio_position_s, e.health.condition)
            elif key in opened:
                start, label = opened.pop(key)
                spans.append(Span("health", start, e.audio_position_s, label))
        elif e.type == "machine_stopped":
            opened[("stopped", e.id)] = (e.audio_position_s, "machine stopped")
        elif e.type == "machine_running" and ("stopped", e.id) in opened:
            start, label = opened.pop(("stopped", e.id))
            spans.append(Span("stopped", start, e.audio_position_s, label))
    for (kind, _), (start, label) in opened.items():
        spans.append(Span(kind, start, duration_s, label, open=True))
    return tuple(sorted(spans, key=lambda s: (s.start_s, s.kind)))


def spectrogram_png(frames: np.ndarray) -> bytes:
    """The log-mel frames as the report's PNG (``core.picture``), at most ``MAX_COLUMNS`` wide."""
    frames = np.asarray(frames, np.float32)
    if len(frames) > MAX_COLUMNS:
        group = math.ceil(len(frames) / MAX_COLUMNS)
        usable = len(frames) // group * group
        frames = frames[:usable].reshape(-1, group, frames.shape[1]).mean(axis=1)
    return png_bytes(log_mel_image(frames))


def _decimate(positions: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(scores) <= MAX_POINTS:
        return positions, scores
    group = math.ceil(len(scores) / MAX_POINTS)
    usable = len(scores) // group * group
    with np.errstate(all="ignore"):
        blocks = scores[:usable].reshape(-1, group)
        peak = np.where(np.all(np.isnan(blocks), axis=1), np.nan,
                        np.nanmax(np.where(np.isnan(blocks), -np.inf, blocks), axis=1))
    return positions[group - 1:usable:group], peak


def _ticks(duration: float) -> list[float]:
    raw = max(duration, 1e-3) / 8
    step = min((m * 10 ** math.floor(math.log10(raw)) for m in (1, 2, 5, 10)), key=lambda s: abs(s - raw))
    return [i * step for i in range(int(duration / step) + 1)]


def _num(value: float | None, fmt: str = ".4f") -> str:
    return "" if value is None or not math.isfinite(value) else format(value, fmt)


# ------------------------------------------------------------------------------ HTML

_W, _LEFT, _RIGHT = 1000, 70, 20
_SPEC_TOP, _SPEC_H = 30, 220
_SCORE_TOP, _SCORE_H = _SPEC_TOP + _SPEC_H + 30, 200
_H = _SCORE_TOP + _SCORE_H + 40
_COLOURS = {"anomaly": "#d62728", "health": "#ff7f0e", "stopped": "#7f7f7f"}

_STYLE = """body{font:14px system-ui,sans-serif;margin:16px;color:#222;background:#fff}
h1{font-size:18px;margin:0 0 4px}p.meta{margin:0 0 12px;color:#555}
svg{display:block;max-width:100%;height:auto}svg text{font:11px system-ui,sans-serif;fill:#333}
.grid{stroke:#ddd;stroke-width:1}.axis{stroke:#555;stroke-width:1}
.score{fill:none;stroke:#1f77b4;stroke-width:1.5}.threshold{stroke:#d62728;stroke-width:1.5;stroke-dasharray:6 4}
.span{fill-opacity:.18}.span-anomaly{fill:#d62728}.span-health{fill:#ff7f0e}.span-stopped{fill:#7f7f7f}
.alert line{stroke:#d62728;stroke-width:2}.alert path{fill:#d62728}
table{border-collapse:collapse;margin-top:12px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;
vertical-align:top}th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
.legend span{display:inline-block;margin-right:14px}.sw{display:inline-block;width:12px;height:12px;
vertical-align:-2px;margin-right:4px}"""


def render_html(trace: Trace, frames: np.ndarray, params: FeatureParams) -> str:
    """The report page of ``trace``; ``frames`` are the file's log-mel frames (``core.features.log_mel`` with
    the bundle's ``params``)."""
    duration = max(trace.duration_s, 1e-3)
    plot_w = _W - _LEFT - _RIGHT

    def x(t: float) -> float:
        return _LEFT + plot_w * min(max(t, 0.0), duration) / duration

    finite = trace.scores[np.isfinite(trace.scores)]
    top = max(float(finite.max()) if finite.size else 0.0, trace.threshold) * 1.1 or 1.0

    def y(score: float) -> float:
        return _SCORE_TOP + _SCORE_H * (1 - min(max(score, 0.0), top) / top)

    esc = html.escape
    parts: list[str] = []
    add = parts.append
    add(f'<svg viewBox="0 0 {_W} {_H}" width="{_W}" height="{_H}" '
        f'role="img" aria-label="log-mel and decision score of {esc(trace.file)}">')
    # the spectrogram: frame j covers samples j·hop .. j·hop + n_fft
    frames_end = ((len(frames) - 1) * params.hop_length + params.n_fft) / params.sample_rate if len(frames) else 0.0
    if len(frames):
        data = base64.b64encode(spectrogram_png(frames)).decode("ascii")
        add(f'<image class="spectrogram" x="{x(0):.1f}" y="{_SPEC_TOP}" width="{x(frames_end) - x(0):.1f}" '
            f'height="{_SPEC_H}" preserveAspectRatio="none" style="image-rendering:pixelated" '
            f'href="data:image/png;base64,{data}"/>')
    edges = mel_band_edges(params)
    add(f'<text x="{_LEFT - 6}" y="{_SPEC_TOP + 10}" text-anchor="end">{edges[-1]:.0f} Hz</text>')
    add(f'<text x="{_LEFT - 6}" y="{_SPEC_TOP + _SPEC_H}" text-anchor="end">{edges[0]:.0f} Hz</text>')
    add(f'<text x="{_LEFT}" y="{_SPEC_TOP - 8}">log-mel ({params.n_mels} bands, the model\'s features)</text>')
    # score axes, grid, time ticks
    for i in range(5):
        value = top * i / 4
        add(f'<line class="grid" x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{y(value):.1f}" y2="{y(value):.1f}"/>')
        add(f'<text x="{_LEFT - 6}" y="{y(value) + 4:.1f}" text-anchor="end">{value:.3g}</text>')
    for t in _ticks(duration):
        add(f'<line class="axis" x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{_SCORE_TOP + _SCORE_H}" '
            f'y2="{_SCORE_TOP + _SCORE_H + 5}"/>')
        add(f'<text x="{x(t):.1f}" y="{_SCORE_TOP + _SCORE_H + 18}" text-anchor="middle">{t:g} s</text>')
    add(f'<text x="{_LEFT}" y="{_SCORE_TOP - 8}">decision score (mean window error over {trace.window_seconds:g} s) '
        f'and the decision threshold</text>')
    # spans over both panels
    for s in trace.spans:
        add(f'<rect class="span span-{s.kind}" data-kind="{s.kind}" data-start-s="{s.start_s:.3f}" '
            f'data-end-s="{s.end_s:.3f}" data-open="{str(s.open).lower()}" x="{x(s.start_s):.1f}" y="{_SPEC_TOP}" '
            f'width="{max(x(s.end_s) - x(s.start_s), 1.0):.1f}" height="{_SCORE_TOP + _SCORE_H - _SPEC_TOP}">'
            f'<title>{esc(s.label)}: {s.start_s:.2f}–{s.end_s:.2f} s</title></rect>')
    # the score line (gaps where the detector judged nothing)
    positions, scores = _decimate(trace.positions_s, trace.scores)
    run: list[str] = []
    for t, v in [*zip(positions.tolist(), scores.tolist()), (math.nan, math.nan)]:
        if math.isfinite(v):
            run.append(f"{x(t):.1f},{y(v):.1f}")
        elif run:
            add(f'<polyline class="score" points="{" ".join(run)}"/>')
            run = []
    add(f'<line class="threshold" data-threshold="{trace.threshold!r}" x1="{_LEFT}" x2="{_W - _RIGHT}" '
        f'y1="{y(trace.threshold):.1f}" y2="{y(trace.threshold):.1f}"><title>threshold {trace.threshold:.4f}'
        f'</title></line>')
    for e in trace.alerts:
        at = x(e.audio_position_s)
        bands = "; ".join(b.label() for b in e.bands)
        add(f'<g class="alert" data-event-id="{esc(e.id)}" data-position-s="{e.audio_position_s!r}" '
            f'data-score="{e.score!r}"><title>alert at {e.audio_position_s:.2f} s, score {e.score:.4f}; '
            f'bands {esc(bands)}</title><line x1="{at:.1f}" x2="{at:.1f}" y1="{_SPEC_TOP}" '
            f'y2="{_SCORE_TOP + _SCORE_H}"/><path d="M{at - 6:.1f},{_SPEC_TOP - 2} h12 l-6,10 z"/></g>')
    add(f'<line class="axis" x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{_SCORE_TOP + _SCORE_H}" '
        f'y2="{_SCORE_TOP + _SCORE_H}"/>')
    add(f'<text x="{(_LEFT + _W - _RIGHT) / 2}" y="{_H - 4}" text-anchor="middle">audio position</text>')
    add("</svg>")
    svg = "\n".join(parts)

    legend = ('<p class="legend"><span><i class="sw" style="background:#1f77b4"></i>decision score</span>'
              '<span><i class="sw" style="background:#d62728;height:3px;vertical-align:3px"></i>threshold</span>'
              + "".join(f'<span><i class="sw" style="background:{c};opacity:.35"></i>{k}</span>'
                        for k, c in _COLOURS.items())
              + '<span><i class="sw" style="background:#d62728;width:3px"></i>alert (anomaly_start)</span></p>')
    rows = []
    for e in trace.events:
        detail = ""
        if e.anomaly is not None:
            detail = (f"from {e.anomaly.started_position_s:.2f} s, peak {_num(e.anomaly.peak_score)}"
                      + (f", ended: {e.anomaly.reason}" if e.anomaly.reason else ""))
        elif e.health is not None:
            detail = f"{e.health.condition} {e.health.status}: {e.health.message}"
        elif e.machine_state is not None:
            detail = e.machine_state.message
        bands = "<br>".join(esc(b.label()) for b in e.bands)
        rows.append(f'<tr class="event" data-type="{esc(e.type)}"><td>{esc(e.type)}</td>'
                    f'<td class="num">{e.audio_position_s:.2f}</td><td class="num">{_num(e.score)}</td>'
                    f'<td class="num">{_num(e.threshold)}</td><td>{bands}</td><td>{esc(detail)}</td></tr>')
    table = ('<table><tr><th>event</th><th>position (s)</th><th>score</th><th>threshold</th><th>bands</th>'
             '<th>detail</th></tr>' + "".join(rows) + "</table>") if rows else "<p>No events: no anomaly, healthy input.</p>"
    alerts = len(trace.alerts)
    verdict = f"{alerts} alert{'s' if alerts != 1 else ''}" if alerts else "no alert"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(trace.file)} — {esc(trace.monitor)}</title><style>{_STYLE}</style></head><body>\n"
            f"<h1>{esc(trace.file)}: {verdict}</h1>\n"
            f'<p class="meta">monitor {esc(trace.monitor)} · model {esc(trace.model)} · {trace.duration_s:.2f} s · '
            f"decision threshold {trace.threshold:.4f} · clip score {_num(trace.clip_score)}</p>\n"
            f"{svg}\n{legend}\n{table}\n</body></html>\n")


# ------------------------------------------------------------------------------ PNG (matplotlib)


def render_png(trace: Trace, frames: np.ndarray, params: FeatureParams) -> bytes | None:
    """The same figure as a PNG with matplotlib (the train extra); None when matplotlib is not installed.
    Imported here only, through its object API (no pyplot, no global backend switch)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    duration = max(trace.duration_s, 1e-3)
    alerts = trace.alerts
    fig = Figure(figsize=(12, 6.5 + 0.25 * len(alerts)), dpi=100)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, 1, height_ratios=(1.1, 1), hspace=0.25, bottom=0.1 + 0.03 * len(alerts))
    spec, score = fig.add_subplot(grid[0]), fig.add_subplot(grid[1])
    if len(frames):
        frames_end = ((len(frames) - 1) * params.hop_length + params.n_fft) / params.sample_rate
        edges = mel_band_edges(params)
        spec.imshow(log_mel_image(np.asarray(frames, np.float32)), aspect="auto", interpolation="nearest",
                    extent=(0, frames_end, 0, params.n_mels))
        spec.set_yticks([0, params.n_mels], [f"{edges[0]:.0f} Hz", f"{edges[-1]:.0f} Hz"])
    spec.set_title(f"{trace.file} — monitor {trace.monitor}, model {trace.model}", fontsize=11)
    spec.set_ylabel(f"log-mel ({params.n_mels} bands)")
    finite = np.isfinite(trace.scores)
    score.plot(trace.positions_s, np.where(finite, trace.scores, np.nan), color="#1f77b4", lw=1.2,
               label="decision score")
    score.axhline(trace.threshold, color="#d62728", ls="--", lw=1.2, label=f"threshold {trace.threshold:.4f}")
    for ax in (spec, score):
        ax.set_xlim(0, duration)
        for s in trace.spans:
            ax.axvspan(s.start_s, s.end_s, color=_COLOURS[s.kind], alpha=0.18, lw=0)
        for e in alerts:
            ax.axvline(e.audio_position_s, color="#d62728", lw=2)
    score.set_ylim(bottom=0)
    score.set_xlabel("audio position (s)")
    score.set_ylabel(f"mean error over {trace.window_seconds:g} s")
    score.legend(loc="upper left", fontsize=9)
    for i, e in enumerate(alerts):
        bands = "; ".join(b.label() for b in e.bands) or "-"
        fig.text(0.07, 0.02 + 0.03 * (len(alerts) - 1 - i), f"alert at {e.audio_position_s:.2f} s, score "
                 f"{e.score:.4f}: bands {bands}", fontsize=9, color="#d62728")
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()
