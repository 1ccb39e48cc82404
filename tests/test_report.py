"""``edge-monitor replay FILE --report DIR``: the picture of a replay, read back as a user (and a browser) would.

Real parts: the committed demo bundle and clips, WAVs written here, ``replay`` as a subprocess; Pillow (the
train extra) decodes the embedded spectrogram and the PNG independently of the project's own PNG writer;
the page is parsed back with the standard library's ``html.parser``.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_replay import ANOMALY, BUNDLE, NORMAL, cli, one_error_line

from edge_monitor.core.features import log_mel
from edge_monitor.core.model import Bundle
from edge_monitor.core.picture import log_mel_image
from edge_monitor.core.wav import load_audio, write_wav

DATA_URI = "data:image/png;base64,"


class Page(HTMLParser):
    """Every element's tag, attributes and the text of the page."""

    def __init__(self, text: str):
        super().__init__()
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):  # noqa: ANN001
        self.elements.append((tag, dict(attrs)))

    handle_startendtag = handle_starttag

    def handle_data(self, data):  # noqa: ANN001
        self.text.append(data)

    def having(self, tag: str, cls: str) -> list[dict]:
        return [a for t, a in self.elements if t == tag and cls in (a.get("class") or "").split()]


def replay_report(tmp_path: Path, wav: Path, *extra: str) -> tuple[subprocess.CompletedProcess, Path, list[dict]]:
    out, events = tmp_path / "report", tmp_path / "events.jsonl"
    proc = cli("replay", wav, "--report", out, "--jsonl", events, *extra)
    assert proc.returncode in (0, 1), proc.stderr
    return proc, out, [json.loads(line) for line in events.read_text().splitlines()]


def test_anomaly_report_is_self_contained_and_marks_each_alert(tmp_path):
    proc, out, events = replay_report(tmp_path, ANOMALY)
    assert proc.returncode == 1
    text = (out / "anomaly_id_00_demo.html").read_text()
    assert "http://" not in text and "https://" not in text  # no CDN, no link, no namespace URL
    page = Page(text)
    assert not [t for t, a in page.elements if t in ("script", "link", "iframe", "img")]
    assert not [a for _, a in page.elements for k in ("src", "href") if k in a and not a[k].startswith(DATA_URI)]

    # the spectrogram: a data URI Pillow decodes, one column per log-mel frame, one row per band
    images = page.having("image", "spectrogram")
    assert len(images) == 1
    picture = Image.open(io.BytesIO(base64.b64decode(images[0]["href"][len(DATA_URI):])))
    params = Bundle.load(BUNDLE).params
    frames = log_mel(load_audio(ANOMALY, params.sample_rate), params)
    assert picture.format == "PNG" and picture.size == (len(frames), params.n_mels)
    assert np.array_equal(np.asarray(picture.convert("RGB")), log_mel_image(frames))  # decodes, pixel for pixel

    starts = [e for e in events if e["type"] == "anomaly_start"]
    assert starts
    markers = page.having("g", "alert")
    assert [m["data-event-id"] for m in markers] == [e["id"] for e in starts]
    for m, e in zip(markers, starts):
        assert float(m["data-position-s"]) == pytest.approx(e["audio_position_s"], abs=1e-3)
        assert float(m["data-score"]) == pytest.approx(e["score"], rel=1e-5)
    (line,) = page.having("line", "threshold")
    assert float(line["data-threshold"]) == pytest.approx(starts[0]["threshold"], rel=1e-6)
    spans = page.having("rect", "span")
    assert [(s["data-kind"], float(s["data-start-s"])) for s in spans] == [
        ("anomaly", pytest.approx(e["anomaly"]["started_position_s"], abs=1e-3)) for e in starts]
    ends = {e["id"]: e for e in events if e["type"] == "anomaly_end"}
    assert float(spans[0]["data-end-s"]) == pytest.approx(ends[starts[0]["id"]]["audio_position_s"], abs=1e-3)
    # the events table names the bands of each event
    rows = page.having("tr", "event")
    assert [r["data-type"] for r in rows] == [e["type"] for e in events]
    words = " ".join(page.text)
    for band in starts[0]["explanation"]["bands"]:
        low, high = band["hz"]
        assert f"{low:.0f}-{high:.0f} Hz" in words

    png = Image.open(out / "anomaly_id_00_demo.png")  # matplotlib is in the venv (the train extra)
    png.load()
    assert png.format == "PNG" and png.size[0] >= 800
    assert f"report {out / 'anomaly_id_00_demo.html'}" in proc.stdout


def test_scores_on_the_page_are_the_detectors_decisions(tmp_path):
    """The score line is the detector's own decision score at its position: the alert's score lies on it."""
    from edge_monitor.commands.replay import replay_file
    from edge_monitor.core.monitor import REPLAY_BLOCK_SECONDS
    from edge_monitor.node.settings import AudioSettings, MonitorSettings, Settings

    bundle = Bundle.load(BUNDLE)
    settings = Settings(node="test", monitors=(MonitorSettings(name=bundle.name, model=str(BUNDLE)),),
                        audio=AudioSettings())
    (result,) = replay_file(ANOMALY, settings, {bundle.name: bundle}, block_seconds=REPLAY_BLOCK_SECONDS,
                            realtime=False, sinks=[], report=True)
    trace = result.trace
    decisions = [e for e in trace.events if e.type in ("anomaly_start", "anomaly_update")]
    assert decisions
    for e in decisions:
        i = int(np.argmin(np.abs(trace.positions_s - e.audio_position_s)))
        assert trace.positions_s[i] == pytest.approx(e.audio_position_s, abs=1e-9)
        assert trace.scores[i] == pytest.approx(e.score, rel=1e-9)
    assert trace.threshold == decisions[0].threshold


def test_normal_report_has_no_anomaly(tmp_path):
    proc, out, events = replay_report(tmp_path, NORMAL)
    assert proc.returncode == 0 and events == []
    page = Page((out / "normal_id_00_demo.html").read_text())
    assert page.having("rect", "span") == [] and page.having("g", "alert") == []
    assert page.having("polyline", "score") and len(page.having("line", "threshold")) == 1
    assert (out / "normal_id_00_demo.png").is_file()


def test_dead_input_is_a_health_span_and_not_scored(tmp_path):
    normal = load_audio(NORMAL, 16000)
    wav = tmp_path / "dropout.wav"
    write_wav(wav, np.concatenate([normal, np.zeros(4 * 16000, np.float32), normal]), 16000)
    _, out, events = replay_report(tmp_path, wav)
    health = [e for e in events if e["type"] == "health"]
    assert [e["health"]["status"] for e in health] == ["bad", "ok"]
    page = Page((out / "dropout.html").read_text())
    (span,) = page.having("rect", "span")
    assert span["data-kind"] == "health"
    assert float(span["data-start-s"]) == pytest.approx(health[0]["audio_position_s"], abs=1e-3)
    assert float(span["data-end-s"]) == pytest.approx(health[1]["audio_position_s"], abs=1e-3)
    assert len(page.having("polyline", "score")) == 2  # the silence's windows were not judged: a gap in the line


def test_without_matplotlib_the_html_is_written_and_the_png_skipped_with_one_line(tmp_path):
    out = tmp_path / "report"
    code = ("import sys; sys.modules['matplotlib'] = None\nfrom edge_monitor.commands import main\n"
            f"sys.exit(main(['replay', {str(ANOMALY)!r}, {str(NORMAL)!r}, '--report', {str(out)!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 1, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["anomaly_id_00_demo.html", "normal_id_00_demo.html"]
    told = [line for line in (proc.stdout + proc.stderr).splitlines() if "matplotlib is not installed" in line]
    assert len(told) == 1, proc.stderr


@pytest.mark.parametrize("where", ["a file", "below a file"])
def test_bad_report_folder_is_one_line_exit_2(tmp_path, where):
    blocker = tmp_path / "taken"
    blocker.write_text("")
    target = blocker if where == "a file" else blocker / "report"
    line = one_error_line(cli("replay", ANOMALY, "--report", target))
    assert "--report" in line and str(target) in line


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_chromium_renders_the_page(tmp_path):
    _, out, events = replay_report(tmp_path, ANOMALY)
    proc = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                           (out / "anomaly_id_00_demo.html").as_uri()], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    page = Page(proc.stdout)  # the DOM the browser built: the SVG parsed, the alert and the picture in it
    assert len(page.having("g", "alert")) == sum(e["type"] == "anomaly_start" for e in events)
    assert page.having("image", "spectrogram")[0]["href"].startswith(DATA_URI)


def test_evaluate_writes_and_links_the_report_of_each_misclassified_clip(tmp_path):
    """Real clips with swapped labels: the anomalous demo clip called normal is a false alarm, the normal one
    called anomalous is missed; evaluate's report.md links a page for each, and only for those."""
    test_dir = tmp_path / "test"
    test_dir.mkdir()
    shutil.copy(ANOMALY, test_dir / "normal_id_00_swapped.wav")
    shutil.copy(NORMAL, test_dir / "anomaly_id_00_swapped.wav")
    shutil.copy(NORMAL, test_dir / "normal_id_00_right.wav")
    out = tmp_path / "out"
    proc = cli("evaluate", BUNDLE, test_dir, "--out", out)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    report = (out / "report.md").read_text()
    section = report[report.index("## Misclassified clips"):]
    links = sorted(p.name for p in (out / "reports").iterdir())
    assert links == ["anomaly-anomaly_id_00_swapped.html", "anomaly-anomaly_id_00_swapped.png",
                     "normal-normal_id_00_swapped.html", "normal-normal_id_00_swapped.png"]
    for name in links:
        assert f"(reports/{name})" in section
    assert "normal_id_00_right" not in section
    alerts = {f["file"]: f["alerts_s"] for f in results["files"]}
    false_alarm = Page((out / "reports" / "normal-normal_id_00_swapped.html").read_text())
    assert [float(m["data-position-s"]) for m in false_alarm.having("g", "alert")] == pytest.approx(
        alerts["normal_id_00_swapped.wav"], abs=1e-9)
    assert alerts["normal_id_00_swapped.wav"]
    missed = Page((out / "reports" / "anomaly-anomaly_id_00_swapped.html").read_text())
    assert missed.having("g", "alert") == [] and missed.having("polyline", "score")


def test_config_with_two_monitors_gives_one_report_each_with_its_threshold(tmp_path):
    config = tmp_path / "node.yaml"
    config.write_text(f"node: test-node\nmonitors:\n  - name: fan-a\n    model: {BUNDLE}\n"
                      f"  - name: fan-b\n    model: {BUNDLE}\n    threshold: 5.0\n")
    proc, out, events = replay_report(tmp_path, ANOMALY, "--config", config)
    assert proc.returncode == 1
    assert sorted(p.name for p in out.glob("*.html")) == ["anomaly_id_00_demo.fan-a.html",
                                                          "anomaly_id_00_demo.fan-b.html"]
    a, b = (Page((out / f"anomaly_id_00_demo.{m}.html").read_text()) for m in ("fan-a", "fan-b"))
    assert len(a.having("g", "alert")) == sum(e["type"] == "anomaly_start" for e in events) > 0
    assert b.having("g", "alert") == [] and float(b.having("line", "threshold")[0]["data-threshold"]) == 5.0


def test_evaluate_tells_clips_of_the_same_name_apart(tmp_path):
    """MIMII's layout: normal/00000000.wav and abnormal/00000000.wav. Only the missed anomalous one is listed."""
    for folder in ("normal", "abnormal"):
        (tmp_path / "test" / folder).mkdir(parents=True)
        shutil.copy(NORMAL, tmp_path / "test" / folder / "00000000.wav")
    out = tmp_path / "out"
    proc = cli("evaluate", BUNDLE, tmp_path / "test", "--out", out)
    assert proc.returncode == 0, proc.stderr
    section = (out / "report.md").read_text().split("## Misclassified clips")[1]
    assert "| abnormal/00000000.wav | anomaly | missed |" in section
    assert "normal/00000000.wav | normal" not in section
    assert sorted(p.name for p in (out / "reports").glob("*.html")) == ["anomaly-00000000.html"]


def test_evaluate_draws_only_the_most_wrong_clips(tmp_path, monkeypatch):
    from training import plant
    from training.data import find_test_clips
    from training.evaluate import evaluate_bundle

    test_dir = tmp_path / "test"
    test_dir.mkdir()
    shutil.copy(ANOMALY, test_dir / "normal_id_00_swapped.wav")   # clip score 0.83 over a 0.70 threshold
    shutil.copy(NORMAL, test_dir / "anomaly_id_00_swapped.wav")   # 0.68 under it: less wrong
    monkeypatch.setattr(plant, "MAX_REPORTS", 1)
    evaluate_bundle(Bundle.load(BUNDLE), find_test_clips(test_dir, "fan"), tmp_path / "out")
    section = (tmp_path / "out" / "report.md").read_text().split("## Misclassified clips")[1]
    rows = [line for line in section.splitlines() if line.startswith("| test/")]
    assert rows[0].startswith("| test/normal_id_00_swapped.wav") and "[page](reports/" in rows[0]
    assert rows[1].startswith("| test/anomaly_id_00_swapped.wav") and "not drawn (only the 1 most wrong" in rows[1]
    assert [p.name for p in (tmp_path / "out" / "reports").glob("*.html")] == ["normal-normal_id_00_swapped.html"]
