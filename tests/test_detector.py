"""The alert state machine, fed window errors directly (its input is just numbers: no model needed)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge_monitor.core.detector import (
    ANOMALY,
    NORMAL,
    SUSPENDED,
    Detector,
    decision_length,
    decision_threshold,
    explain_bands,
    sliding_means,
)
from edge_monitor.core.events import Band, Origin, validate
from edge_monitor.core.features import FeatureParams, mel_band_edges
from edge_monitor.node.settings import DecisionSettings

PARAMS = FeatureParams()
RATE = PARAMS.sample_rate / PARAMS.hop_length  # windows per second (31.25)
ORIGIN = Origin("node", "mon", "fan", "id_00", "fan-id_00", "ab" * 32, "test")
BANDS = (Band(0, 7, 0.0, 210.0, 0.5),)


def detector(**changes) -> Detector:
    return Detector(DecisionSettings(**changes), 1.0, PARAMS, ORIGIN, lambda _after: BANDS)


def errors(*segments: tuple[float, float]) -> np.ndarray:
    """Window errors: (seconds, level) segments."""
    return np.concatenate([np.full(int(round(s * RATE)), level) for s, level in segments])


def feed(det: Detector, errs: np.ndarray, block: int = 7) -> list:
    events = []
    first_end = 0.0
    for start in range(0, len(errs), block):
        events += det.push(errs[start : start + block], first_end + start / RATE)
    return events


def test_sliding_means_and_lengths():
    assert decision_length(1.0, PARAMS) == 31
    assert decision_length(0.25, PARAMS) == 8
    assert decision_length(0.001, PARAMS) == 1
    e = np.arange(10.0)
    np.testing.assert_allclose(sliding_means(e, 3), [1, 2, 3, 4, 5, 6, 7, 8])
    assert sliding_means(e, 11).size == 0


def test_quiet_stream_gives_no_events_and_a_loud_one_a_full_life_cycle():
    det = detector()
    assert feed(det, errors((20, 0.5))) == []
    assert det.state == NORMAL and det.decisions > 0
    det = detector()
    events = feed(det, errors((5, 0.5), (25, 2.0), (10, 0.5)))
    kinds = [e.type for e in events]
    assert kinds == ["anomaly_start", "anomaly_update", "anomaly_update", "anomaly_end"]
    assert len({e.id for e in events}) == 1
    assert [e.event_id for e in events] == [f"{events[0].id}/{i}" for i in range(4)]
    start, end = events[0], events[-1]
    # start: 1-s window fills with the fault after ~0.5 s, 3 of 4 decisions at 0.25 s, then 1 s minimum
    assert 5.0 + 1.0 < start.audio_position_s < 5.0 + 3.0
    # dated from the start of the first above-threshold decision's window: at most 1 s early
    assert 4.0 <= start.anomaly.started_position_s <= 5.0
    assert end.anomaly.reason == "recovered"
    assert 30.0 < end.audio_position_s < 32.0
    assert end.anomaly.peak_score == pytest.approx(2.0)
    assert 1.5 < end.anomaly.mean_score <= 2.0
    assert end.anomaly.duration_s == pytest.approx(end.audio_position_s - end.anomaly.started_position_s)
    assert start.bands == BANDS and end.bands == BANDS
    assert start.ratio == pytest.approx(start.score / 1.0)
    for e in events:
        assert validate(e.to_dict()) == []
    assert det.state == NORMAL  # the 5-s cooldown after the end has passed by the end of the stream


def test_updates_come_every_update_seconds():
    events = feed(detector(update_seconds=2.0), errors((2, 0.5), (12, 3.0)))
    updates = [e.audio_position_s for e in events if e.type == "anomaly_update"]
    assert len(updates) >= 4
    assert np.allclose(np.diff(updates), 2.0, atol=0.26)


def test_short_bursts_below_min_duration_do_not_alert():
    # 0.3 s bursts: 3 of 4 decisions trip, but they do not stay tripped for the 1 s minimum
    burst = errors((4, 0.5), (0.3, 3.0))
    assert feed(detector(), np.concatenate([burst] * 5 + [errors((4, 0.5))])) == []
    # the same bursts with no minimum duration and 1-of-1 do alert
    assert any(e.type == "anomaly_start" for e in
               feed(detector(min_duration_seconds=0.0, k_of_n=(1, 1)), np.concatenate([burst] * 2)))


def test_hysteresis_keeps_an_anomaly_open_between_low_and_threshold():
    # drops to 0.95 × threshold: above hysteresis 0.9 → still an anomaly; with hysteresis 1.0 it ends
    errs = errors((3, 0.5), (5, 2.0), (10, 0.95))
    assert [e.type for e in feed(detector(update_seconds=100), errs)] == ["anomaly_start"]
    assert [e.type for e in feed(detector(update_seconds=100, hysteresis=1.0), errs)] == ["anomaly_start",
                                                                                         "anomaly_end"]


def test_cooldown_delays_the_next_start():
    errs = errors((3, 0.5), (4, 2.0), (2, 0.5), (6, 2.0))
    quick = [e for e in feed(detector(cooldown_seconds=0.0), errs) if e.type == "anomaly_start"]
    slow = [e for e in feed(detector(cooldown_seconds=4.0), errs) if e.type == "anomaly_start"]
    assert len(quick) == len(slow) == 2
    assert slow[1].audio_position_s - quick[1].audio_position_s >= 1.0


def test_k_of_n_tolerates_single_dips():
    # 0.25-s decisions aligned with 8-window stretches; every 4th stretch dips: 3 of 4 still confirms
    step = decision_length(0.25, PARAMS)
    pattern = np.repeat([3.0, 3.0, 3.0, 0.1], step)
    errs = np.concatenate([np.full(12 * step, 0.5)] + [pattern] * 8)
    assert "anomaly_start" in [e.type for e in feed(detector(window_seconds=0.25, k_of_n=(3, 4)), errs)]
    assert "anomaly_start" not in [e.type for e in feed(detector(window_seconds=0.25, k_of_n=(4, 4)), errs)]


def test_block_size_does_not_change_decisions():
    errs = errors((3, 0.5), (6, 2.0), (5, 0.5), (4, 1.5))
    reference = [(e.type, e.audio_position_s, e.score) for e in feed(detector(), errs, block=1)]
    for block in (2, 31, 64, 1000):
        got = [(e.type, e.audio_position_s, e.score) for e in feed(detector(), errs, block=block)]
        assert [g[0] for g in got] == [r[0] for r in reference]
        assert [g[1:] for g in got] == [pytest.approx(r[1:]) for r in reference]


def test_suspend_ends_an_anomaly_and_holds_decisions():
    det = detector()
    events = feed(det, errors((2, 0.5), (5, 2.0)))
    assert det.state == ANOMALY
    ended = det.suspend(7.0)
    assert [e.type for e in ended] == ["anomaly_end"] and ended[0].anomaly.reason == "health"
    assert det.state == SUSPENDED
    assert det.push(errors((5, 3.0)), 7.0) == []
    det.resume()
    assert det.state == NORMAL
    more = det.push(errors((5, 3.0)), 12.0)
    assert [e.type for e in more] == ["anomaly_start"]
    assert more[0].id != events[0].id


def test_finish_closes_an_open_anomaly():
    det = detector()
    feed(det, errors((2, 0.5), (5, 2.0)))
    (end,) = det.finish(7.0, "end_of_stream")
    assert end.type == "anomaly_end" and end.anomaly.reason == "end_of_stream"
    assert detector().finish(1.0, "shutdown") == []


def _manifest(decision: list[tuple[float, float]] | None):
    """The demo bundle's manifest with this clip threshold (0.5) and these decision thresholds."""
    from edge_monitor import DEMO_DIR
    from edge_monitor.core.manifest import (
        Decision,
        DecisionThreshold,
        Manifest,
        Threshold,
    )

    demo = Manifest.read(DEMO_DIR / "fan-id_00" / "model.json")
    table = None if decision is None else Decision(tuple(DecisionThreshold(s, v) for s, v in decision))
    return demo.replace(threshold=Threshold(0.5), decision=table)


def test_threshold_selection_from_manifest():
    manifest = _manifest([(0.5, 0.8), (1.0, 0.7), (2.0, 0.6)])
    assert decision_threshold(manifest, 1.0).value == 0.7
    assert decision_threshold(manifest, 1.0, 0.9).value == 0.9
    assert decision_threshold(manifest, 1.0, 0.9).origin == "config override"
    assert decision_threshold(manifest, 0.2).value == 0.8
    assert decision_threshold(manifest, 9.0).value == 0.6
    mid = decision_threshold(manifest, math.sqrt(2.0))  # halfway in log time
    assert mid.value == pytest.approx(0.65)
    old = decision_threshold(_manifest(None), 1.0)
    assert old.value == 0.5 and "retrain" in old.origin


def test_explain_bands_names_where_the_error_is():
    edges = mel_band_edges(PARAMS)
    band_errors = np.full((31, 128), 0.001)
    band_errors[:, 40:48] = 0.1   # one strong range
    band_errors[:, 100:104] = 0.05
    bands = explain_bands(band_errors, edges)
    assert bands[0].first == 40 and bands[0].last == 47
    assert bands[0].low_hz == pytest.approx(edges[40]) and bands[0].high_hz == pytest.approx(edges[49])
    assert bands[1].first == 100
    assert sum(b.share for b in bands) <= 1.0 + 1e-9
    assert bands[0].share > bands[1].share > bands[2].share


def test_storage_turns_ok_only_when_every_failing_part_is_back():
    """The MQTT outbox and the evidence writer report to the one ``storage`` condition: evidence recovering
    must not clear a still-failing outbox (the ok event comes when the last part is back)."""
    from edge_monitor.core.health import Health
    from edge_monitor.core.settings import HealthSettings

    health = Health(HealthSettings(), PARAMS, -20.0, ORIGIN)
    [bad] = health.storage(True, 1.0, "outbox: disk full", "outbox")
    assert bad.health.status == "bad" and health.bad_conditions == ["storage"]
    assert health.storage(True, 2.0, "evidence: disk full", "evidence") == []
    assert health.storage(False, 3.0, "evidence clips are written again", "evidence") == []
    assert health.bad_conditions == ["storage"]
    [ok] = health.storage(False, 4.0, "the outbox stores messages again", "outbox")
    assert ok.health.status == "ok" and ok.id == bad.id and health.bad_conditions == []
    assert not health.bad  # storage never suspends decisions
