"""The model bundles a node config names, loaded and checked against that config."""

from __future__ import annotations

import structlog

from edge_monitor.core.detector import decision_length
from edge_monitor.core.errors import BundleError
from edge_monitor.core.model import SCORING_SINGLE, Bundle, WindowScorer
from edge_monitor.core.monitor import REPLAY_BATCH
from edge_monitor.node.settings import Settings

log = structlog.get_logger()
_told: set[tuple[str, str]] = set()  # (backend, model sha256) whose batch fallback was logged in this process


def open_bundles(settings: Settings) -> dict[str, Bundle]:
    """Load and check the bundle of every monitor against the node's settings; errors name the monitor."""
    bundles: dict[str, Bundle] = {}
    for i, m in enumerate(settings.monitors):
        where = f"monitors[{i}] ({m.name})"
        try:
            bundle = Bundle.load(m.model)
        except BundleError as exc:
            raise BundleError(f"{where}: {exc}") from None
        rate = settings.audio.sample_rate
        if rate is not None and rate < bundle.params.sample_rate:
            raise BundleError(f"{where}: the model {bundle.name} needs {bundle.params.sample_rate} Hz audio but "
                              f"audio.sample_rate is {rate}; capture at {bundle.params.sample_rate} Hz or more")
        decision = m.decision
        if decision_length(decision.window_seconds, bundle.params) < decision_length(decision.step_seconds,
                                                                                      bundle.params):
            raise BundleError(f"{where}: decision.step_seconds is longer than decision.window_seconds")
        bundles[m.name] = bundle
    return bundles


def replay_scorer(bundle: Bundle, monitor: str) -> WindowScorer:
    """The scorer of a file replay (``replay``, ``calibrate --from``): ``REPLAY_BATCH`` windows per interpreter
    call, or one per call where this interpreter's batched results differ (the scorer's self-test); that
    fallback is logged once per process for each interpreter and model."""
    scorer = WindowScorer(bundle, batch_size=REPLAY_BATCH)
    if scorer.mode == SCORING_SINGLE and (scorer.backend, bundle.sha256) not in _told:
        _told.add((scorer.backend, bundle.sha256))
        log.warning("batched scoring differs from one window at a time on this interpreter: scoring one window "
                    "per call (exact, slower)", monitor=monitor, backend=scorer.backend,
                    batch_size=scorer.requested_batch_size, model_sha256=bundle.sha256[:12])
    return scorer


def scoring_line(scorer: WindowScorer) -> str:
    """One line for ``check`` and ``replay``: the interpreter and whether replay scores in batches."""
    per_call = (f"{scorer.batch_size} windows per call" if scorer.batch_size > 1 else
                f"1 window per call instead of {scorer.requested_batch_size}")
    return f"scoring: {scorer.backend}, {scorer.mode} ({per_call})"
