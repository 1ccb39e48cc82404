"""Training a fleet: the machine ids of a data set in worker processes or on a Dask cluster.

``edge-monitor train DATA --out MODELS --jobs N`` trains one machine id per task in N worker processes
on this machine (``spawn``, so every worker starts its own TensorFlow); ``--dask ADDRESS`` submits the
same tasks to an existing ``dask.distributed`` scheduler, one task per machine id. Either way a task
runs :func:`training.train.train_and_evaluate` — the very function the sequential path calls — and
bundles are written as always (staging folder beside the target, atomic rename), so a half-finished
fleet leaves every finished bundle usable. A failing id is reported and the others go on. On Dask each
task trains in a fresh Python process started by the worker (see ``train_job_in_child``).

Bundles are byte-identical whichever way they were trained: every model is built from a fresh Keras
session with its seed (``autoencoder.build``), and nothing else in a task depends on the process.

With ``--dask``, ``DATA`` and ``MODELS`` must be paths every worker sees (a shared file system) and the
workers need the train extra installed. A Dask worker with several threads runs one training at a
time (TensorFlow/Keras keep global state per process): give workers one thread, or more workers.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import structlog

from edge_monitor.core.errors import UserError

from .data import Clip

log = structlog.get_logger("edge_monitor.train")

PROGRESS_SECONDS = 30.0  # a progress line at least this often while tasks run
_TRAIN_LOCK = threading.Lock()  # one training at a time per process (Keras' global session)


def default_jobs() -> int:
    """One worker per two cores (TensorFlow uses more than one thread per fit), at least one."""
    return max(1, (os.cpu_count() or 1) // 2)


@dataclass(frozen=True)
class Job:
    """One machine id to train: everything a worker needs, picklable."""

    key: str
    clips: tuple[Clip, ...]
    out: Path
    test_clips: tuple[Clip, ...]
    settings: object  # training.train.TrainSettings (not imported here: this module is imported by train.py)
    cache_dir: Path | None
    log_level: str = "info"
    params: object = None  # edge_monitor.core.features.FeatureParams (None: the defaults)


@dataclass(frozen=True)
class Outcome:
    """What one task gives back: the bundle or why there is none, and where the time went."""

    key: str
    ok: bool
    bundle: str | None = None
    threshold: float | None = None
    error: str | None = None
    bug: bool = False             # the error is an unexpected exception, not a user error
    seconds: float = 0.0          # the whole task, TensorFlow start-up included
    tf_start_s: float = 0.0       # importing TensorFlow in this process (0 when it was already loaded)
    history: dict = field(default_factory=dict)  # losses per epoch (for MLflow)
    worker: str = ""


def train_job(job: Job) -> Outcome:
    """Train one machine id; never raises (a failure is an ``Outcome`` with ``ok=False``)."""
    started = time.monotonic()
    worker = f"{os.uname().nodename}:{os.getpid()}"
    _worker_logging(job.log_level)
    with _TRAIN_LOCK:
        tf_started = time.monotonic()
        tf_loaded = "training.autoencoder" in sys.modules
        try:
            from . import autoencoder  # noqa: F401 - TensorFlow start-up, timed on its own
            from .train import train_and_evaluate

            tf_start_s = 0.0 if tf_loaded else time.monotonic() - tf_started
            history: dict = {}
            bundle = train_and_evaluate(list(job.clips), job.out, list(job.test_clips), job.settings, job.cache_dir,
                                        params=job.params, history_out=history)
        except UserError as exc:
            return Outcome(job.key, False, error=str(exc), seconds=time.monotonic() - started, worker=worker)
        except Exception as exc:  # noqa: BLE001 - a bug in one id must not stop the fleet; reported as a bug
            log.debug("training task failed", machine=job.key, exc_info=True)
            return Outcome(job.key, False, error=f"{type(exc).__name__}: {exc}", bug=True,
                           seconds=time.monotonic() - started, worker=worker)
    return Outcome(job.key, True, bundle=str(bundle.path), threshold=bundle.threshold,
                   seconds=time.monotonic() - started, tf_start_s=tf_start_s, history=history, worker=worker)


def train_job_in_child(job: Job) -> Outcome:
    """``train_job`` in a fresh Python process started by this one (the Dask task).

    Measured: a model trained inside a Dask worker process came out different (other sha256 of
    model.tflite) from the same model trained sequentially or in a ``--jobs`` worker, even with one
    thread per worker and the same environment; a fresh interpreter per task gives the same bytes, and
    frees TensorFlow's memory after every id. The cost is one TensorFlow start-up per task. Dask
    workers are daemon processes (no ``multiprocessing`` children), hence ``subprocess``.
    """
    import pickle
    import subprocess
    import tempfile

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="edge-monitor-task-") as tmp:
        job_file, outcome_file = Path(tmp) / "job.pickle", Path(tmp) / "outcome.pickle"
        job_file.write_bytes(pickle.dumps(job))
        code = ("import pickle, sys; from pathlib import Path; from training.fleet import train_job; "
                "o = train_job(pickle.loads(Path(sys.argv[1]).read_bytes())); "
                "Path(sys.argv[2]).write_bytes(pickle.dumps(o))")
        proc = subprocess.run([sys.executable, "-c", code, str(job_file), str(outcome_file)],
                              stdout=subprocess.DEVNULL, check=False)
        if proc.returncode != 0 or not outcome_file.is_file():
            return Outcome(job.key, False, error=f"training process ended with exit code {proc.returncode}",
                           bug=True, seconds=time.monotonic() - started, worker=f"{os.uname().nodename}")
        return pickle.loads(outcome_file.read_bytes())


_configured_level: str | None = None


def _worker_logging(level: str) -> None:
    """In a worker process (spawned, or a Dask worker) log to stderr at the parent's level."""
    global _configured_level
    if _configured_level is None and structlog.is_configured():
        _configured_level = level  # the main process: the command line configured logging already
    if _configured_level == level:
        return
    import logging

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
                        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))
    _configured_level = level


@dataclass
class Progress:
    """The one view of a fleet run: ids done, running, failed, time left."""

    total: int
    slots: int
    started: float = field(default_factory=time.monotonic)
    done: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    out: Callable[[str], None] = print

    @property
    def finished(self) -> int:
        return len(self.done) + len(self.failed)

    def left_s(self) -> float | None:
        """Remaining time at the throughput so far (tasks finished per second of wall time)."""
        if not self.finished:
            return None
        elapsed = time.monotonic() - self.started
        return elapsed / self.finished * (self.total - self.finished)

    def line(self) -> str:
        running = min(self.slots, self.total - self.finished)
        queued = self.total - self.finished - running
        left = self.left_s()
        eta = "time left unknown" if left is None else f"about {left:.0f} s left"
        return (f"[{len(self.done)}/{self.total} done, {running} running, {queued} queued, {len(self.failed)} failed, "
                f"{time.monotonic() - self.started:.0f} s elapsed, {eta}]")

    def report(self, outcome: Outcome) -> None:
        (self.done if outcome.ok else self.failed).append(outcome.key)
        if outcome.ok:
            what = f"bundle {outcome.bundle} threshold {outcome.threshold:.4g} ({outcome.seconds:.0f} s)"
        else:
            what = f"FAILED: {outcome.error}"
        self.out(f"{self.line()} {outcome.key}: {what}")


def run_fleet(jobs: list[Job], *, workers: int = 1, dask_address: str | None = None,
              on_outcome: Callable[[Outcome], None] | None = None,
              out: Callable[[str], None] = print) -> list[Outcome]:
    """Run ``jobs``: in this process (``workers == 1`` and no Dask), in worker processes, or on Dask.

    ``on_outcome`` is called in this process for every finished task, in the order they finish.
    """
    if workers < 1:
        raise UserError(f"--jobs: expected at least 1, got {workers}")
    outcomes: list[Outcome] = []

    def finished(outcome: Outcome, progress: Progress) -> None:
        outcomes.append(outcome)
        progress.report(outcome)
        if on_outcome is not None:
            on_outcome(outcome)

    if dask_address is None and workers == 1:
        progress = Progress(len(jobs), 1, out=out)
        for job in jobs:
            finished(train_job(job), progress)
        return outcomes
    if dask_address is not None:
        client = _dask_client(dask_address)
        try:
            slots = max(1, len(client.scheduler_info().get("workers", {})))
            executor: cf.Executor = client.get_executor(pure=False)
            _drain(executor, jobs, Progress(len(jobs), slots, out=out), finished, task=train_job_in_child)
        finally:
            client.close()
        return outcomes
    import multiprocessing

    slots = min(workers, len(jobs))
    with cf.ProcessPoolExecutor(max_workers=slots, mp_context=multiprocessing.get_context("spawn")) as executor:
        _drain(executor, jobs, Progress(len(jobs), slots, out=out), finished)
    return outcomes


def _drain(executor: cf.Executor, jobs: list[Job], progress: Progress,
           finished: Callable[[Outcome, Progress], None], task: Callable[[Job], Outcome] = train_job) -> None:
    """Submit one task per job; report each as it finishes and a progress line while they run."""
    futures = {executor.submit(task, job): job for job in jobs}
    pending = set(futures)
    while pending:
        done, pending = cf.wait(pending, timeout=PROGRESS_SECONDS, return_when=cf.FIRST_COMPLETED)
        if not done:
            progress.out(progress.line())
        for future in done:
            job = futures[future]
            try:
                outcome = future.result()
            except Exception as exc:  # noqa: BLE001 - the worker died (killed, out of memory) or Dask lost it
                outcome = Outcome(job.key, False, error=f"worker lost: {type(exc).__name__}: {exc}", bug=True)
            finished(outcome, progress)


def _dask_client(address: str):
    try:
        from distributed import Client
    except ImportError:
        raise UserError("--dask needs dask.distributed: pip install 'edge-monitor[train]'") from None
    try:
        return Client(address, timeout="10s")
    except (OSError, TimeoutError, ValueError) as exc:
        raise UserError(f"--dask {address}: cannot reach the scheduler ({exc}); start one with "
                        "'dask scheduler' or give its address as tcp://HOST:8786") from None


# --------------------------------------------------------------------------- the train command's hook


def add_fleet_arguments(parser) -> None:
    """``--jobs``, ``--dask`` and ``--mlflow`` of ``edge-monitor train``."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--jobs", type=int, default=None, metavar="N",
                       help=f"train the machine ids in N worker processes (default: one per two cores, "
                            f"here {default_jobs()})")
    where.add_argument("--dask", metavar="ADDRESS",
                       help="train on an existing dask.distributed cluster, one task per machine id, e.g. "
                            "tcp://scheduler:8786 (DATA and --out must be paths the workers see)")
    parser.add_argument("--mlflow", nargs="?", const="", default=None, metavar="URI",
                        help="log every bundle as an MLflow run (no URI: a local store in OUT/mlruns; "
                             "or a tracking server http://HOST:5000, or sqlite:///PATH)")


def run_train(args, groups: dict[str, list[Clip]], settings, cache_dir: Path | None, params=None) -> int:
    """Train every group (machine id) of ``groups``; 0 when all were written, else 2 (or 70 for a bug)."""
    from .train import _test_clips_for

    workers = default_jobs() if args.jobs is None else args.jobs
    if workers < 1:
        raise UserError(f"--jobs: expected at least 1, got {workers}")
    tracker = None
    if args.mlflow is not None:
        from .tracking import Tracker

        tracker = Tracker.open(args.mlflow, args.out)
    level = getattr(args, "log_level", None) or "info"  # make-demo calls run() without the global options
    jobs = [Job(key, tuple(clips), args.out / key, tuple(_test_clips_for(args.data, clips[0])), settings, cache_dir,
                level, params) for key, clips in groups.items()]
    if args.dask is None:
        workers = min(workers, len(jobs))
    on_outcome = None
    if tracker is not None:
        def on_outcome(outcome: Outcome) -> None:
            if outcome.ok:
                run_id = tracker.log_bundle(Path(outcome.bundle), outcome.history, settings, args)
                print(f"{outcome.key}: MLflow run {run_id} in {tracker.uri}")

    outcomes = run_fleet(jobs, workers=workers, dask_address=args.dask, on_outcome=on_outcome)
    failed = [o for o in outcomes if not o.ok]
    if failed:  # one line per failed id; the others' bundles were written
        for o in failed:
            kind = "internal error (a bug in edge-monitor, please report it): " if o.bug else ""
            print(f"edge-monitor: error: {o.key}: {kind}{o.error}", file=sys.stderr)
        if len(failed) < len(outcomes):
            print(f"{len(outcomes) - len(failed)} of {len(outcomes)} bundles written; failed: "
                  f"{', '.join(o.key for o in failed)}", file=sys.stderr)
        return 70 if any(o.bug for o in failed) else 2
    return 0
