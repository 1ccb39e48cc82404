"""Markdown reports and PNG plots for training and evaluation (plots need matplotlib, from the train extra)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_monitor.core.manifest import Manifest, Threshold

from .metrics import roc_curve


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def training_plots(out: Path, history: dict, train_scores, held_out, threshold: Threshold, float_scores,
                   int8_scores) -> dict:
    import scipy.stats  # not at module level: it would slow every edge-monitor start by 0.5 s

    plt = _pyplot()
    if plt is None:
        return {}
    plots = {}
    fig, ax = plt.subplots(figsize=(6, 3.5))
    epochs = np.arange(1, len(history["loss"]) + 1)
    ax.plot(epochs, history["loss"], label="training windows")
    ax.plot(epochs, history["val_loss"], label="held-out clips")
    ax.axvline(history["best_epoch"], color="grey", ls=":", label=f"kept: epoch {history['best_epoch']}")
    ax.set(xlabel="epoch", ylabel="MSE (standardised)", title="Training loss")
    ax.legend()
    plots["loss"] = _save(fig, out / "loss.png")

    fig, ax = plt.subplots(figsize=(6, 3.5))
    low, top = _span(np.r_[train_scores, held_out, threshold.value])
    bins = np.linspace(low, top, 40)
    ax.hist(train_scores, bins=bins, alpha=0.6, density=True, label="training clips")
    ax.hist(held_out, bins=bins, alpha=0.6, density=True, label="held-out clips")
    g = threshold.info["gamma"]
    xs = np.linspace(low, top, 300)
    ax.plot(xs, scipy.stats.gamma.pdf(xs, g["shape"], loc=g["loc"], scale=g["scale"]), "k-", label="gamma fit")
    ax.axvline(threshold.value, color="red", label=f"threshold (q={threshold.info['quantile']})")
    ax.set(xlabel="int8 clip score", ylabel="density", title="Normal clip scores")
    ax.legend()
    plots["scores"] = _save(fig, out / "scores.png")

    fig, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(float_scores, int8_scores, s=8)
    lim = [0, max(np.max(float_scores), np.max(int8_scores)) * 1.05]
    ax.plot(lim, lim, "k:", lw=1)
    ax.set(xlabel="float clip score", ylabel="int8 clip score", title="int8 vs float", xlim=lim, ylim=lim)
    plots["int8_vs_float"] = _save(fig, out / "int8_vs_float.png")
    return plots


def evaluation_plots(out: Path, labels, s_int8, s_float, threshold: float) -> dict:
    plt = _pyplot()
    if plt is None:
        return {}
    plots = {}
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for name, scores, style in (("int8", s_int8, dict(lw=3, alpha=0.6)), ("float", s_float, dict(ls="--", lw=1.5))):
        if scores is not None:  # int8 drawn wide and float dashed on top: both stay visible when they agree
            fpr, tpr, _ = roc_curve(labels, scores)
            ax.plot(fpr, tpr, label=name, **style)
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.axvspan(0, 0.1, color="grey", alpha=0.15, label="pAUC range")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    ax.legend()
    plots["roc"] = _save(fig, out / "roc.png")

    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = np.linspace(*_span(np.r_[s_int8, threshold]), 40)
    ax.hist(s_int8[labels == 0], bins=bins, alpha=0.6, label="normal")
    ax.hist(s_int8[labels == 1], bins=bins, alpha=0.6, label="anomalous")
    ax.axvline(threshold, color="red", label="threshold")
    ax.set(xlabel="int8 clip score", ylabel="clips", title="Score histogram")
    ax.legend()
    plots["histogram"] = _save(fig, out / "histogram.png")
    return plots


def _span(values: np.ndarray) -> tuple[float, float]:
    """Histogram range around the data (scores cluster far from zero)."""
    low, high = float(np.min(values)), float(np.max(values))
    pad = 0.1 * (high - low) or 0.05 * high
    return max(0.0, low - pad), high + pad


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path.name


def _images(plots: dict) -> list[str]:
    if not plots:
        return ["_(plots skipped: matplotlib is not installed; `pip install 'edge-monitor[train]'`)_", ""]
    return [f"![{name}]({file})" for name, file in plots.items()] + [""]


def write_training_report(out: Path, manifest: Manifest, plots: dict) -> None:
    t, th, ev = manifest.training, manifest.threshold, manifest.evaluation
    check = ev["export_check"]
    decision = manifest.decision
    lines = [
        f"# Model {manifest.machine.type}-{manifest.machine.id}",
        "",
        f"- created {manifest.info.get('created_at')} by edge-monitor {manifest.info.get('edge_monitor_version')}, "
        f"TensorFlow {t['tensorflow']}",
        f"- {manifest.model.architecture}; int8 model {manifest.model.info.get('bytes')} bytes, "
        f"sha256 `{manifest.model.sha256[:16]}…`; score target {manifest.score.target}",
        f"- data: {t['clips']} training clips, {t['held_out_clips']} held-out clips, {t['windows']} windows "
        f"(stride {t['window_stride']}), {len(t['clips_skipped'])} skipped; digest `{t['data_digest'][:23]}…`",
        f"- fit: {t['epochs_run']} of at most {t['epochs_max']} epochs, kept epoch {t['best_epoch']} "
        f"(loss {t['final_loss']:.4f}, held-out {t['final_val_loss']:.4f}); {t['duration_s']} s in all "
        f"({t['feature_s']} s features, {t['fit_s']} s fit)",
        f"- threshold {th.value:.4f}: quantile {th.info['quantile']} of a gamma fit (shape "
        f"{th.info['gamma']['shape']:.3g}, scale {th.info['gamma']['scale']:.3g}) to {th.info['held_out_clips']} "
        f"held-out int8 clip scores; expected false-alarm rate {th.info['expected_false_alarm_rate']:.3g} per clip, "
        f"{th.info['held_out_exceed_fraction']:.3g} of held-out clips above",
        "- decision thresholds (the detector's score: mean window error over a sliding window; quantile "
        f"{decision.info.get('quantile') if decision else 'n/a'} of a gamma fit to every decision score of the "
        "held-out clips): "
        + (", ".join(f"{d.window_seconds:g} s {d.value:.4f}" for d in decision.thresholds) if decision else "none"),
        f"- export check ({check['interpreter']}): int8 vs float clip-score correlation "
        f"{check['int8_vs_float_clip_score_correlation']:.4f} over {check['clips']} clips; float TFLite vs Keras "
        f"max relative difference {check['float_tflite_vs_keras_max_relative_difference']:.2e}",
        "",
    ]
    (out / "report.md").write_text("\n".join(lines + _images(plots)))


def write_evaluation_report(out: Path, result: dict, plots: dict) -> None:
    def cell(figs: dict | None, key: str) -> str:
        value = (figs or {}).get(key)
        return "n/a" if value is None else (f"{value:.4f}" if isinstance(value, float) else str(value))

    lines = [
        f"# Evaluation of {result['machine']}",
        "",
        f"{result['clips']['normal']} normal and {result['clips']['anomaly']} anomalous clips; threshold "
        f"{result['threshold']:.4f}; pAUC over FPR ≤ {result['max_fpr']} (McClish-standardised, as DCASE); "
        f"interpreter {result['interpreter']}; model sha256 `{result['model_sha256'][:16]}…`",
        "",
        "| model | AUC | pAUC | flagged | false alarms | detected |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("int8", "float"):
        figs = result[name]
        if figs is not None:
            lines.append(f"| {name} | {cell(figs, 'auc')} | {cell(figs, 'pauc')} | {cell(figs, 'flagged')} | "
                         f"{cell(figs, 'false_alarms')} | {cell(figs, 'detected')} |")
    lines += ["", "Per-file scores: `scores.csv`.", ""]
    (out / "report.md").write_text("\n".join(lines + _images(plots)))
