"""Metrics a plant reads: precision/recall/F1 at the bundle's threshold, the F1-optimal threshold, and the
detector's verdicts (clips replayed through the real decision layer).

AUC says how well clip scores *rank*; a plant asks how many faults the alarm catches, how many times it
rings for nothing, and how long after a fault begins. ``edge-monitor evaluate`` therefore also gives:

- **at the threshold** (the bundle's clip threshold, ``score > threshold`` is flagged), per machine id:
  precision = flagged anomalies / flagged clips, recall = flagged anomalies / anomalous clips, F1;
- **the F1-optimal threshold** on these labelled clips (midpoint between neighbouring scores that
  maximises F1). It is fitted on the evaluation clips themselves, so it is optimistic; it is only
  reported, and written into the bundle (its clip threshold, ``threshold.value``) only with
  ``--apply-threshold f1`` — with a warning below ``MIN_ANOMALIES_TO_APPLY`` anomalous clips;
- **the detector's verdicts**: each clip pushed through :class:`edge_monitor.core.monitor.Monitor` —
  the object replay and the daemon run — with the default decision settings, so the figures are what
  the node would have done: anomalous clips with an ``anomaly_start`` (detected), ``anomaly_start`` on
  normal clips per hour of normal audio (false alarms per hour), and, where the fault onset is known,
  the detection delay from onset to ``anomaly_start`` (alarms before the onset are counted apart).

Fault onset: a JSON sidecar beside the clip, ``<clip>.json`` with ``{"fault_onset_s": 8.0}`` (seconds
from the start of the clip); ``edge-monitor synth --fault-onset S`` writes them.

Labelled field clips: ``<state>/labels/<monitor>/{normal,anomaly}/*.wav`` (``anomaly/`` may also be
called ``abnormal/``), each optionally with its ``.json`` sidecar; ``<state>`` is the node's state
folder (``/var/lib/edge-monitor``). ``evaluate --labels DIR`` takes ``DIR`` = ``<state>/labels`` (the
subfolder named like the bundle, ``fan-id_00``, is used) or one ``<state>/labels/<monitor>`` folder;
without ``--labels``, ``/var/lib/edge-monitor/labels`` is used when it exists. The node's own layout works
too: ``--labels <state>`` (or ``<state>/faults/<monitor>``) takes ``<state>/faults/<monitor>/*.wav`` (clips
``edge-monitor label ID anomaly`` put there) as anomalous and ``<state>/normal/<monitor>/*.wav`` as normal.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import structlog

from edge_monitor.core.errors import AudioError, UserError
from edge_monitor.core.features import log_mel
from edge_monitor.core.loop import Loop, WavSource
from edge_monitor.core.manifest import Threshold
from edge_monitor.core.model import MANIFEST_FILE, Bundle, Manifest, WindowScorer
from edge_monitor.core.monitor import REPLAY_BATCH, REPLAY_BLOCK_SECONDS, Monitor
from edge_monitor.core.report import Trace, render_html, render_png, trace_of
from edge_monitor.core.settings import MonitorSettings
from edge_monitor.core.wav import load_audio

from .data import Clip

log = structlog.get_logger("edge_monitor.evaluate")

MIN_ANOMALIES_TO_APPLY = 10
MAX_REPORTS = 30  # pages drawn for misclassified clips per evaluation (the most wrong first)
ONSET_KEY = "fault_onset_s"
DEFAULT_LABELS = Path(os.environ.get("EDGE_MONITOR_STATE", "/var/lib/edge-monitor")) / "labels"
_LABEL_DIRS = {"normal": 0, "anomaly": 1, "abnormal": 1}


# ------------------------------------------------------------------------------ clip-level figures


def threshold_figures(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    """Precision, recall and F1 of ``score > threshold`` (None where a ratio has no clips to count)."""
    labels = np.asarray(labels).astype(bool)
    flagged = np.asarray(scores) > threshold
    tp = int((flagged & labels).sum())
    fp = int((flagged & ~labels).sum())
    fn = int((~flagged & labels).sum())
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None
    return {"precision": precision, "recall": recall, "f1": f1}


def f1_optimal(labels: np.ndarray, scores: np.ndarray) -> dict | None:
    """The threshold (midpoint between neighbouring distinct scores) with the best F1; None without both labels."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.all() or not labels.any():
        return None
    distinct = np.unique(scores)
    candidates = np.r_[distinct[0] - 1e-9 * max(1.0, abs(distinct[0])), (distinct[1:] + distinct[:-1]) / 2]
    best = None
    for t in candidates:
        fig = threshold_figures(labels, scores, float(t))
        if fig["f1"] is not None and (best is None or fig["f1"] > best["f1"]):
            best = {"threshold": float(t), **fig}
    assert best is not None
    best["anomalous_clips"] = int(labels.sum())
    best["normal_clips"] = int((~labels).sum())
    # the F1 a detector gets by flagging everything: the floor to judge an F1 against on unbalanced sets
    best["f1_if_every_clip_flagged"] = 2 * best["anomalous_clips"] / (2 * best["anomalous_clips"] + best["normal_clips"])
    best["note"] = "fitted on the evaluation clips themselves: optimistic for unseen audio"
    return best


def apply_threshold(bundle: Bundle, optimal: dict, source: str) -> float:
    """Write the F1-optimal clip threshold into the bundle's manifest; returns the previous value.

    Only ``threshold.value`` (the clip threshold) changes; the detector's decision thresholds
    (``decision``) are a separate calibration on held-out audio and stay as they are.
    """
    if optimal["anomalous_clips"] < MIN_ANOMALIES_TO_APPLY:
        log.warning("F1-optimal threshold from few anomalies", machine=bundle.name,
                    anomalous_clips=optimal["anomalous_clips"], recommended_at_least=MIN_ANOMALIES_TO_APPLY)
    path = bundle.path / MANIFEST_FILE
    manifest = Manifest.read(path)  # through the type, written atomically
    previous = {"value": manifest.threshold.value, **{k: v for k, v in manifest.threshold.info.items()
                                                      if k != "previous"}}
    info = {**manifest.threshold.info, "method": "f1_optimal", "f1": optimal["f1"],
            "precision": optimal["precision"], "recall": optimal["recall"],
            "labelled_clips": {"normal": optimal["normal_clips"], "anomaly": optimal["anomalous_clips"],
                               "from": source},
            "previous": previous}
    manifest.replace(threshold=Threshold(float(optimal["threshold"]), info)).write(path)
    Bundle.load(bundle.path)  # still a valid bundle
    return float(previous["value"])


# ------------------------------------------------------------------------------ clips and onsets


def onset_of(path: Path) -> float | None:
    """The fault onset (s from the clip's start) from the clip's sidecar ``<clip>.json``, if it has one."""
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        return None
    try:
        value = json.loads(sidecar.read_text()).get(ONSET_KEY)
    except (OSError, ValueError, AttributeError):
        raise UserError(f"{sidecar}: not a JSON object; expected e.g. {{\"{ONSET_KEY}\": 8.0}} or remove it") from None
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
        raise UserError(f"{sidecar}: {ONSET_KEY} must be a number of seconds ≥ 0, got {value!r}")
    return float(value)


def write_onset(path: Path, onset_s: float) -> None:
    """The sidecar ``onset_of`` reads."""
    path.with_suffix(".json").write_text(json.dumps({ONSET_KEY: onset_s}) + "\n")


def field_clips(labels: Path | None, bundle: Bundle) -> list[Clip]:
    """Labelled field clips for ``bundle`` (see the module docstring for the layout); [] when there are none."""
    if labels is None:
        labels = DEFAULT_LABELS
        if not labels.is_dir():
            return []
    elif not labels.is_dir():
        raise UserError(f"--labels {labels}: no such folder; give <state>/labels or <state>/labels/<monitor>")
    state = _state_folders(labels, bundle)
    if state is not None:
        return [Clip(p, bundle.machine_type, bundle.machine_id, label)
                for label, d in enumerate(state) if d.is_dir()
                for p in sorted(d.iterdir()) if p.is_file() and p.suffix.lower() == ".wav"]
    folder = labels
    if not any((labels / d).is_dir() for d in _LABEL_DIRS):
        folder = labels / bundle.name
    clips = []
    for name, label in _LABEL_DIRS.items():
        d = folder / name
        if d.is_dir():
            clips += [Clip(p, bundle.machine_type, bundle.machine_id, label)
                      for p in sorted(d.iterdir()) if p.is_file() and p.suffix.lower() == ".wav"]
    return clips


def _state_folders(labels: Path, bundle: Bundle) -> tuple[Path, Path] | None:
    """The node's own layout (``edge-monitor label``): ``<state>/normal/<monitor>`` and ``<state>/faults/<monitor>``,
    given ``<state>`` (the monitor named like the bundle) or ``<state>/faults/<monitor>``; None otherwise."""
    if (labels / "faults").is_dir():
        return labels / "normal" / bundle.name, labels / "faults" / bundle.name
    if labels.parent.name == "faults":
        return labels.parent.parent / "normal" / labels.name, labels
    return None


# ------------------------------------------------------------------------------ the detector's verdicts


@dataclass(frozen=True)
class Verdict:
    file: str
    label: int
    duration_s: float
    alerts: tuple[float, ...]   # audio positions of each anomaly_start
    onset_s: float | None
    trace: Trace | None = field(default=None, compare=False, repr=False)  # for the misclassified clips' reports
    path: Path | None = field(default=None, compare=False, repr=False)    # the clip (names repeat across folders)

    @property
    def detected(self) -> bool:
        """An ``anomaly_start`` at or after the known onset, or any when the onset is unknown."""
        return self.delay_s is not None if self.onset_s is not None else bool(self.alerts)

    @property
    def wrong(self) -> bool:
        """The detector got the clip wrong: an alert on a normal clip, no detection on an anomalous one."""
        return not self.detected if self.label else bool(self.alerts)

    @property
    def delay_s(self) -> float | None:
        """Onset → the first ``anomaly_start`` at or after it."""
        if self.onset_s is None:
            return None
        after = [a for a in self.alerts if a >= self.onset_s]
        return after[0] - self.onset_s if after else None

    @property
    def before_onset(self) -> int:
        return 0 if self.onset_s is None else sum(1 for a in self.alerts if a < self.onset_s)


class _Starts:
    """A sink of the one loop that keeps the positions of ``anomaly_start`` events."""

    def __init__(self) -> None:
        self.positions: list[float] = []

    def event(self, event) -> None:  # noqa: ANN001
        if event.type == "anomaly_start":
            self.positions.append(event.audio_position_s)

    def state(self, *args) -> None:  # noqa: ANN002
        pass

    def telemetry(self, *args) -> None:  # noqa: ANN002
        pass


def verdicts(bundle: Bundle, clips: list[Clip], channel: int | str = 0,
             keep_trace: Sequence[bool] | None = None) -> list[Verdict]:
    """Every clip through a fresh ``Monitor`` (default decision settings) in the one loop replay and the
    daemon run (``core.loop``: the file read from disk, resampled as replay does); one shared interpreter.
    A verdict keeps its ``core.report.Trace`` when the detector got the clip wrong or ``keep_trace[i]``
    (evaluate: wrong at the clip threshold), for the misclassified clips' reports."""
    settings = MonitorSettings(name=bundle.name, model=str(bundle.path), channel=channel)
    scorer = WindowScorer(bundle, batch_size=REPLAY_BATCH)
    out = []
    for i, clip in enumerate(clips):
        try:
            source = WavSource(clip.path, channel, REPLAY_BLOCK_SECONDS)
        except AudioError as exc:
            raise UserError(str(exc)) from None
        if source.duration_s < settings.decision.window_seconds:
            source.close()
            log.warning("clip shorter than one decision window: no verdict", file=str(clip.path), monitor=bundle.name)
            continue
        monitor = Monitor(settings, bundle, node="evaluate", source=str(clip.path), live=False, scorer=scorer,
                          keep_errors=True)
        starts = _Starts()
        loop = Loop(monitor, source, [starts])
        loop.keep_events = True
        try:
            loop.run()
        except AudioError as exc:
            raise UserError(str(exc)) from None
        verdict = Verdict(clip.path.name, int(clip.label), source.duration_s, tuple(starts.positions),
                          onset_of(clip.path), path=clip.path)
        if verdict.wrong or (keep_trace is not None and keep_trace[i]):
            verdict = replace(verdict, trace=trace_of(monitor, loop.events, clip.path.name, source.duration_s))
        out.append(verdict)
    return out


def summarise(found: list[Verdict]) -> dict:
    """Detected anomalous clips, false alarms per hour of normal audio, detection delays."""
    normal = [v for v in found if v.label == 0]
    anomalous = [v for v in found if v.label == 1]
    hours = sum(v.duration_s for v in normal) / 3600
    false_alarms = sum(len(v.alerts) for v in normal)
    # detected: an anomaly_start at or after a known onset, or any anomaly_start when the onset is unknown
    detected = [v for v in anomalous if v.detected]
    delays = sorted(v.delay_s for v in anomalous if v.delay_s is not None)
    with_onset = [v for v in anomalous if v.onset_s is not None]
    return {
        "decision_settings": "defaults (edge_monitor.core.settings.DecisionSettings)",
        "normal_clips": len(normal),
        "normal_hours": hours,
        "false_alarms": false_alarms,
        "false_alarms_per_hour": false_alarms / hours if hours else None,
        "normal_clips_with_alarm": sum(1 for v in normal if v.alerts),
        "anomalous_clips": len(anomalous),
        "detected": len(detected),
        "detection_rate": len(detected) / len(anomalous) if anomalous else None,
        "missed": [v.file for v in anomalous if v not in detected],
        "with_known_onset": len(with_onset),
        "alarms_before_onset": sum(v.before_onset for v in with_onset),
        "delay_s": {
            "clips": len(delays),
            "median": float(np.median(delays)) if delays else None,
            "min": delays[0] if delays else None,
            "max": delays[-1] if delays else None,
        },
    }


def plant_figures(bundle: Bundle, clips: list[Clip], labels: np.ndarray, scores: np.ndarray,
                  channel: int | str = 0) -> tuple[dict, list[Verdict]]:
    """The ``plant`` block of ``results.json``: F1-optimal threshold and the detector's verdicts."""
    wrong = (np.asarray(scores) > bundle.threshold) != np.asarray(labels).astype(bool)
    found = verdicts(bundle, clips, channel, keep_trace=wrong.tolist())
    return {
        "at_threshold": threshold_figures(labels, scores, bundle.threshold),
        "f1_optimal": f1_optimal(labels, scores),
        "detector": summarise(found),
    }, found


def _num(value: float | None, fmt: str = ".3f") -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def summary_line(name: str, plant: dict) -> str:
    at, opt, det = plant["at_threshold"], plant["f1_optimal"], plant["detector"]
    delay = det["delay_s"]
    parts = [f"{name}: at threshold precision {_num(at['precision'], '.2f')} recall {_num(at['recall'], '.2f')} "
             f"F1 {_num(at['f1'], '.2f')}"]
    if opt:
        parts.append(f"F1-optimal threshold {opt['threshold']:.4g} (F1 {opt['f1']:.2f})")
    parts.append(f"detector: {det['detected']}/{det['anomalous_clips']} anomalous clips detected, "
                 f"{det['false_alarms']} false alarms in {det['normal_hours'] * 60:.1f} min of normal audio "
                 f"({_num(det['false_alarms_per_hour'], '.1f')}/h)")
    if delay["clips"]:
        parts.append(f"delay median {delay['median']:.2f} s ({delay['min']:.2f}-{delay['max']:.2f} s, "
                     f"{delay['clips']} onsets)")
    return " | ".join(parts)


def report_section(plant: dict) -> str:
    """Markdown appended to the evaluation report."""
    at, opt, det = plant["at_threshold"], plant["f1_optimal"], plant["detector"]
    lines = ["", "## Plant metrics", "",
             "| figure | value |", "|---|---|",
             f"| precision / recall / F1 at the bundle's threshold | {_num(at['precision'])} / {_num(at['recall'])} / "
             f"{_num(at['f1'])} |"]
    if opt:
        lines.append(f"| F1-optimal threshold (fitted on these clips) | {opt['threshold']:.4g}: F1 {opt['f1']:.3f}, "
                     f"precision {_num(opt['precision'])}, recall {_num(opt['recall'])} (flagging every clip: F1 "
                     f"{opt['f1_if_every_clip_flagged']:.3f}) |")
    d = det["delay_s"]
    lines += [
        f"| detector: anomalous clips detected | {det['detected']} of {det['anomalous_clips']} |",
        f"| detector: false alarms on normal audio | {det['false_alarms']} in {det['normal_hours']:.3f} h "
        f"({_num(det['false_alarms_per_hour'], '.1f')} per hour) |",
        "| detection delay (onset → anomaly_start) | "
        + (f"median {d['median']:.2f} s, {d['min']:.2f}–{d['max']:.2f} s over {d['clips']} clips |" if d["clips"]
           else "no clip with a known onset was detected |"),
        f"| alarms before a known onset | {det['alarms_before_onset']} |",
        "",
        "The detector figures come from replaying each clip through the node's own decision layer "
        "(`Monitor`, default decision settings).",
    ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ misclassified clips


def misclassified_reports(out: Path, bundle: Bundle, clips: list[Clip], scores: np.ndarray, found: list[Verdict],
                          channel: int | str = 0) -> str:
    """The replay report (``core.report``: HTML, and a PNG with matplotlib) of the misclassified clips in
    ``out/reports/``, and the Markdown section of ``report.md`` that lists and links them. Misclassified: wrong
    at the bundle's clip threshold (``score > threshold``), or wrong by the detector's verdict (an alert on a
    normal clip, no detection on an anomalous one). Listed most wrong first (clip score furthest from the
    threshold, in ratio); pages for the first ``MAX_REPORTS`` only (an evaluation folder sits in the bundle)."""
    by_path = {v.path: v for v in found}
    wrong = []
    for clip, score in zip(clips, scores):
        verdict = by_path.get(clip.path)  # None: shorter than one decision window, no detector verdict
        clip_wrong = bool(score > bundle.threshold) != bool(clip.label)
        detector_wrong = verdict is not None and verdict.wrong
        if clip_wrong or detector_wrong:
            how_far = abs(math.log(max(float(score), 1e-12) / bundle.threshold)) if clip_wrong else 0.0
            wrong.append((-how_far, len(wrong), clip, float(score), verdict, clip_wrong, detector_wrong))
    lines = ["", "## Misclassified clips", ""]
    if not wrong:
        return "\n".join(lines + ["None: every clip is right at the bundle's threshold and by the detector.", ""])
    rows, names = [], set()
    for rank, (_, _, clip, score, verdict, clip_wrong, detector_wrong) in enumerate(sorted(wrong)):
        label = "anomaly" if clip.label else "normal"
        if verdict is None or verdict.trace is None:
            link = "none (shorter than one decision window)"
        elif rank >= MAX_REPORTS:
            link = f"not drawn (only the {MAX_REPORTS} most wrong are)"
        else:
            stem, n = f"{label}-{clip.path.stem}", 2
            while stem in names:  # normal/00000000.wav and abnormal/00000000.wav, or the same name twice
                stem, n = f"{label}-{clip.path.stem}-{n}", n + 1
            names.add(stem)
            link = _write_clip_report(out / "reports", stem, verdict.trace, clip.path, bundle, channel)
        kind = "false alarm" if not clip.label else "missed"
        at_clip = f"{score:.4f} {'>' if score > bundle.threshold else '≤'} {bundle.threshold:.4f}"
        alerts = ", ".join(f"{a:.1f} s" for a in verdict.alerts) if verdict and verdict.alerts else "none"
        rows.append(f"| {clip.path.parent.name}/{clip.path.name} | {label} | {kind} | "
                    f"{at_clip}{' (wrong)' if clip_wrong else ''} | {alerts}{' (wrong)' if detector_wrong else ''} | "
                    f"{link} |")
    lines += [("Each page shows the clip's log-mel, the detector's decision score against the decision threshold, "
               "anomaly and health spans, where alerts fired and the bands each event named "
               "(`edge-monitor replay FILE --report DIR` draws the same picture)."), "",
              "| clip | label | error | clip score vs threshold | detector alerts | report |", "|---|---|---|---|---|---|",
              *rows]
    return "\n".join(lines) + "\n"


def _write_clip_report(folder: Path, stem: str, trace: Trace, wav: Path, bundle: Bundle, channel: int | str) -> str:
    """One clip's page (and PNG, with matplotlib) in ``folder``; returns the Markdown links."""
    params = bundle.params
    frames = log_mel(load_audio(wav, params.sample_rate, channel), params)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.html").write_text(render_html(trace, frames, params), encoding="utf-8")
    png = render_png(trace, frames, params)
    if png is not None:
        (folder / f"{stem}.png").write_bytes(png)
    return f"[page](reports/{stem}.html)" + (f" · [PNG](reports/{stem}.png)" if png is not None else "")
