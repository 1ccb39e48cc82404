"""One monitor, real parts: the bundled demo model (trained by the project) and real WAV clips."""

from __future__ import annotations

import numpy as np
import pytest

from edge_monitor import DEMO_DIR
from edge_monitor.core.events import validate
from edge_monitor.core.features import log_mel, windows
from edge_monitor.core.model import SCORING_SINGLE, Bundle, WindowScorer
from edge_monitor.core.monitor import Monitor
from edge_monitor.core.wav import load_audio
from edge_monitor.node.settings import HealthSettings, MachineSettings, MonitorSettings
from training.synth import synth_clip

BUNDLE_DIR = DEMO_DIR / "fan-id_00"
SR = 16000


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    return Bundle.load(BUNDLE_DIR)


def clip(name: str) -> np.ndarray:
    return load_audio(DEMO_DIR / "clips" / f"{name}_id_00_demo.wav", SR)


def monitor(bundle: Bundle, *, live: bool, **settings) -> Monitor:
    return Monitor(MonitorSettings(name="fan-1", model=str(BUNDLE_DIR), **settings), bundle, node="n1",
                   source="test", live=live, keep_errors=True)


def run(m: Monitor, samples: np.ndarray, blocks) -> list:
    events, start = [], 0
    for size in blocks:
        if start >= len(samples):
            break
        events += m.process(samples[start : start + size])
        start += size
    return events + m.finish()


def random_blocks(rng: np.random.Generator, low: int = 1, high: int = 5000):
    while True:
        yield int(rng.integers(low, high))


def summary(events):
    return [(e.type, e.audio_position_s, e.score) for e in events]


def test_live_and_replay_give_identical_errors_and_events(bundle):
    samples = np.concatenate([clip("normal"), clip("anomaly"), clip("normal")])
    replay = monitor(bundle, live=False)
    live = monitor(bundle, live=True)
    # replay scores in batches, unless this interpreter's batches differ from one window at a time (its
    # self-test; tflite-runtime 2.14 on aarch64): then it scores one per call, and must still equal live
    assert (replay.scorer.batch_size > 1 or replay.scorer.mode == SCORING_SINGLE) and live.scorer.batch_size == 1
    replay_events = run(replay, samples, iter(lambda: SR, None))
    live_events = run(live, samples, random_blocks(np.random.default_rng(1)))
    np.testing.assert_array_equal(np.concatenate(replay._errors), np.concatenate(live._errors))
    assert summary(replay_events) == summary(live_events)
    kinds = [e.type for e in replay_events]
    assert kinds[0] == "anomaly_start" and kinds[-1] == "anomaly_end"
    start = replay_events[0]
    assert 6.0 < start.audio_position_s < 12.0  # inside the anomalous clip
    assert [b.to_dict() for b in start.bands] == [b.to_dict() for b in live_events[0].bands]


@pytest.fixture(params=["ae", "idnn"])
def any_bundle(request, bundle) -> Bundle:
    """The demo autoencoder, and a tiny interpolation network trained in the session (needs TensorFlow)."""
    return bundle if request.param == "ae" else Bundle.load(request.getfixturevalue("trained_idnn"))


def test_live_and_replay_parity_for_every_architecture(any_bundle):
    """Block sizes and batch sizes change nothing: window errors, band errors and events are identical."""
    samples = np.concatenate([clip("normal"), clip("anomaly")])
    replay = Monitor(MonitorSettings(name="m", model=str(any_bundle.path)), any_bundle, node="n1", source="test",
                     live=False, keep_errors=True)
    live = Monitor(MonitorSettings(name="m", model=str(any_bundle.path)), any_bundle, node="n1", source="test",
                   live=True, keep_errors=True)
    # replay scores in batches, unless this interpreter's batches differ from one window at a time (its
    # self-test; tflite-runtime 2.14 on aarch64): then it scores one per call, and must still equal live
    assert (replay.scorer.batch_size > 1 or replay.scorer.mode == SCORING_SINGLE) and live.scorer.batch_size == 1
    replay_events = run(replay, samples, iter(lambda: SR, None))
    live_events = run(live, samples, random_blocks(np.random.default_rng(2)))
    replay_errors = np.concatenate(replay._errors)
    np.testing.assert_array_equal(replay_errors, np.concatenate(live._errors))
    # positions to the microsecond: Monitor's audio_position_s differs in the last bit between block
    # patterns (3.7119999999999997 vs 3.712 s seen on an idnn bundle); scores must be identical
    rounded = lambda events: [(t, round(p, 6), s) for t, p, s in summary(events)]  # noqa: E731
    assert rounded(replay_events) == rounded(live_events)
    assert [[b.to_dict() for b in e.bands] for e in replay_events] == [[b.to_dict() for b in e.bands] for e in live_events]
    w = windows(log_mel(samples, any_bundle.params), any_bundle.params)
    bands_64, bands_1 = (np.empty((len(w), any_bundle.params.n_mels), np.float32) for _ in range(2))
    errors_64 = WindowScorer(any_bundle, batch_size=64).errors(w, band_errors=bands_64)
    errors_1 = WindowScorer(any_bundle, batch_size=1).errors(w, band_errors=bands_1)
    np.testing.assert_array_equal(errors_64, errors_1)
    np.testing.assert_array_equal(bands_64, bands_1)
    np.testing.assert_allclose(bands_64.sum(axis=1), errors_64, rtol=1e-4)
    np.testing.assert_array_equal(errors_64, replay_errors[: len(errors_64)])


def test_clip_score_equals_the_evaluation_path(bundle):
    for name in ("normal", "anomaly"):
        samples = clip(name)
        m = monitor(bundle, live=False)
        run(m, samples, random_blocks(np.random.default_rng(2), 100, 20000))
        assert m.clip_score() == WindowScorer(bundle).clip_score(samples)  # exactly, not approximately


def test_demo_clips_normal_is_quiet_anomaly_alerts_with_explanation(bundle):
    quiet = run(monitor(bundle, live=False), clip("normal"), iter(lambda: SR, None))
    assert quiet == []
    events = run(monitor(bundle, live=False), clip("anomaly"), iter(lambda: SR, None))
    assert [e.type for e in events] == ["anomaly_start", "anomaly_end"]
    for e in events:
        assert validate(e.to_dict()) == [], e.to_dict()
        assert e.monitor == "fan-1" and e.node == "n1" and e.origin.model_sha256 == bundle.sha256
    start, end = events
    assert start.score > start.threshold
    assert end.anomaly.reason == "end_of_stream"
    assert 0 < len(start.bands) <= 3
    assert all(0 <= b.low_hz < b.high_hz <= 8000 for b in start.bands)
    assert sum(b.share for b in start.bands) <= 1.0


def test_fault_starting_mid_clip_alerts_after_onset_only(bundle):
    rng = np.random.default_rng(11)
    onset = 8.0
    samples = synth_clip("fan", 0, 16.0, SR, rng=rng, fault="bearing", severity=0.5, fault_onset=onset)
    events = run(monitor(bundle, live=True), samples, iter(lambda: 1024, None))
    starts = [e for e in events if e.type == "anomaly_start"]
    assert starts, "the fault was not detected"
    delay = starts[0].audio_position_s - onset
    assert 0 < delay < 4.0, delay


def test_dead_input_is_a_health_event_and_suspends_decisions(bundle):
    m = monitor(bundle, live=False)
    normal = clip("normal")
    events = run_blocks(m, [normal[:SR * 3], np.zeros(SR * 4, np.float32), normal])
    health = [e for e in events if e.type == "health"]
    assert [(e.health.condition, e.health.status) for e in health] == [("dead_input", "bad"), ("dead_input", "ok")]
    bad, ok = health
    assert bad.id == ok.id and bad.decisions_suspended and not ok.decisions_suspended
    assert 4.0 <= bad.audio_position_s <= 6.0  # zeros from 3 s, held 2 s
    assert all(validate(e.to_dict()) == [] for e in health)
    assert not [e for e in events if e.type.startswith("anomaly")]


def run_blocks(m: Monitor, parts) -> list:
    events = []
    for part in parts:
        for start in range(0, len(part), SR // 2):
            events += m.process(part[start : start + SR // 2])
    return events


def test_clipping_silence_and_loudness(bundle):
    normal = clip("normal")
    cases = {
        "clipping": np.clip(normal * 8, -1, 1),
        "silence": normal * 1e-3,          # 60 dB down: a machine switched off
        "level_high": normal * 4.5,        # +13 dB, no clipping: above a 10-dB limit
    }
    for condition, loud in cases.items():
        # machine state off: the level drop is then the old silence fault (tests/test_machine.py: stopped)
        m = monitor(bundle, live=False, health=HealthSettings(high_db=10.0), machine=MachineSettings(enabled=False))
        events = run_blocks(m, [normal, loud])
        bad = [e.health.condition for e in events if e.type == "health" and e.health.status == "bad"]
        assert condition in bad, (condition, bad)
        assert m.state == "sensor_fault"
        assert m.telemetry()["health"] == bad


def test_drops_are_counted_and_the_stream_resynchronises(bundle):
    m = monitor(bundle, live=True)
    normal = clip("normal")
    events = m.process(normal[:SR])
    events += m.process(normal[SR : 2 * SR], dropped=4000)
    assert [(e.health.condition, e.health.status) for e in events] == [("drops", "bad")]
    assert m.position == 2 * SR + 4000
    assert m.health.drops_total == 4000
    events = run_blocks(m, [normal[2 * SR :], normal])
    assert ("drops", "ok") in [(e.health.condition, e.health.status) for e in events if e.health]


def test_threshold_override_and_state(bundle):
    m = monitor(bundle, live=False, threshold=0.5)
    assert m.threshold.value == 0.5 and m.threshold.origin == "config override"
    assert m.state == "unknown"
    events = run_blocks(m, [clip("normal")])
    assert m.state == "anomaly" and events[0].type == "anomaly_start"  # 0.5 is below normal scores
    t = m.telemetry()
    assert t["state"] == "anomaly" and t["decisions"] > 0 and t["score_max"] >= t["score_mean"] > 0.5
    assert t["level_dbfs"] == pytest.approx(-27.9, abs=1.0)
    assert m.telemetry()["decisions"] == 0  # reset by the read


def test_dropouts_and_a_machine_switched_off_are_not_anomalies(bundle):
    normal = clip("normal")
    gap = np.zeros(1600, np.float32)  # 0.1 s of digital zeros, as from a dropout
    dropouts = np.concatenate([normal[:SR * 2], gap, normal[SR * 2 : SR * 4], gap, normal[SR * 4 :]])
    m = monitor(bundle, live=True)
    events = run(m, dropouts, iter(lambda: 1024, None))
    assert [e for e in events if e.type.startswith("anomaly")] == []
    off = np.concatenate([normal, np.zeros(SR * 8, np.float32)])  # the machine (and its sound) stops
    m = monitor(bundle, live=True)
    events = run(m, off, iter(lambda: 1024, None))
    assert [e.type for e in events] == ["health"]
    assert events[0].health.condition == "dead_input" and m.state == "sensor_fault"


def test_sensor_fault_from_the_audio_layer_turns_bad_and_ok_at_once(bundle):
    m = monitor(bundle, live=True)
    run_blocks(m, [clip("normal")[: SR * 3]])
    (bad,) = m.sensor_fault(True, "device 'usb' stopped delivering audio")
    assert (bad.health.condition, bad.health.status, bad.decisions_suspended) == ("sensor_fault", "bad", True)
    assert m.state == "sensor_fault"
    (ok,) = m.sensor_fault(False, "device 'usb' is back")
    assert (ok.health.status, ok.id, ok.decisions_suspended) == ("ok", bad.id, False)
    assert m.state != "sensor_fault"


def test_driver_overflow_is_a_drops_event_and_a_gap(bundle):
    m = monitor(bundle, live=True)
    normal = clip("normal")
    run_blocks(m, [normal[: SR * 2]])
    (event,) = m.input_overflow(3)
    assert (event.health.condition, event.health.status) == ("drops", "bad")
    assert "3 input overflow" in event.health.message
    assert m.features.frames_emitted > 0 and m._hist_n == 0  # the frame history restarts after the gap
    events = run_blocks(m, [normal[SR * 2 :], normal])
    assert ("drops", "ok") in [(e.health.condition, e.health.status) for e in events if e.health]
