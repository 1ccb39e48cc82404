"""The node's page in a real browser: ``edge-monitor run`` with ``http.enabled`` (PulseAudio null sink and
mosquitto from ``test_daemon.py``'s harness), loaded by Debian's headless chromium over the DevTools pipe
(``tests/chromium.py``). The page draws its chart and spectrogram, an anomaly played into the sink appears
as a row with its clip, the <audio> element loads the WAV, and the "anomaly" button writes the label into
the evidence sidecar exactly as ``edge-monitor label`` does."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from chromium import BINARY, Chromium
from mqtt_helpers import free_port
from test_daemon import clips, node_factory  # noqa: F401 (fixtures)

pytestmark = pytest.mark.skipif(BINARY is None, reason="chromium is not installed (tests/setup.sh installs it)")

TOKEN: str | None = "page-test-token-0123456789abcdef"  # the page carries it on every URL it builds

# pixel variance of a canvas: 0 for a blank (or single-colour) one
VARIANCE = """(() => { const c = document.querySelector(%r); if (!c) return -1;
  let d; try { const g = document.createElement('canvas'); g.width = c.width; g.height = c.height;
    const x = g.getContext('2d'); x.drawImage(c, 0, 0); d = x.getImageData(0, 0, c.width, c.height).data; }
  catch (e) { return -2; }
  let s = 0, s2 = 0, n = 0;
  for (let i = 0; i < d.length; i += 4) { const v = d[i] + d[i + 1] + d[i + 2]; s += v; s2 += v * v; n++; }
  return s2 / n - (s / n) ** 2; })()"""


def test_page_shows_live_monitor_and_an_anomaly_with_its_clip_and_label(node_factory, clips, tmp_path):  # noqa: F811
    started = time.monotonic()
    normal, anomaly = clips
    port = free_port()
    extra = f"http:\n  enabled: true\n  port: {port}\n"
    if TOKEN:
        token_file = tmp_path / "token"
        token_file.write_text(TOKEN + "\n")
        os.chmod(token_file, 0o600)
        extra += f"  token_file: {token_file}\n"
    node = node_factory(extra=extra)
    base = f"http://127.0.0.1:{port}"
    with Chromium(width=1000, height=800) as browser:
        browser.navigate(f"{base}/?token={TOKEN}" if TOKEN else f"{base}/")
        try:
            browser.wait_for("document.querySelector('.card canvas.spec') !== null", 15)
        except TimeoutError:
            raise AssertionError(f"no monitor card: {browser.console_errors()} "
                                 f"{browser.evaluate('document.body.innerText')!r}\n{node.output()[-3000:]}") from None
        node.pulse.play(normal, wait=False)
        # the score chart (uPlot draws on its own canvas) and the spectrogram are drawn, not blank
        browser.wait_for(f"{VARIANCE % '.card .chart canvas'} > 1", 20)
        browser.wait_for(f"{VARIANCE % '.card canvas.spec'} > 1", 20)
        assert browser.evaluate("document.getElementById('link').textContent") == "live"   # SSE, not polling
        assert "STATE" not in browser.evaluate("document.body.innerText")
        screenshot = tmp_path / "page.png"
        assert browser.screenshot(screenshot) > 10_000
        time.sleep(6)
        node.pulse.play(anomaly)
        node.pulse.play(normal, wait=False)        # the machine recovers: the anomaly ends, its clip is written
        assert node.sub.wait_for(lambda ms: any(m.topic.endswith("/event") and m.json()["type"] == "anomaly_end"
                                                for m in ms), 40), node.output()
        start = node.events_of("anomaly_start")[0]
        row = f"#events li[data-type=anomaly_end][data-id={json.dumps(start['id'])}]"
        browser.wait_for(f"document.querySelector('{row} audio') !== null", 10)
        shown_ms = int(browser.evaluate(
            f"document.querySelector('#events li[data-type=anomaly_start][data-id={json.dumps(start['id'])}]')"
            ".dataset.shownMs"))
        print(f"\nanomaly_start time_ms → row on the page: {shown_ms - start['time_ms']} ms")
        # the <audio> element loads the WAV through the evidence route, token in its URL
        assert not TOKEN or TOKEN in browser.evaluate(f"document.querySelector('{row} audio').src")
        browser.wait_for(f"(a => a.readyState >= 1 && a.duration > 0)(document.querySelector('{row} audio'))", 15)
        duration = browser.evaluate(f"document.querySelector('{row} audio').duration")
        end = next(e for e in node.events_of("anomaly_end") if e["id"] == start["id"])
        assert abs(duration - end["evidence"]["duration_s"]) < 0.1
        browser.wait_for(f"(i => i.complete && i.naturalWidth > 0)(document.querySelector('{row} img'))", 15)
        # label it: the button POSTs /api/label, the page shows the answer, the sidecar says so
        browser.evaluate(f"document.querySelector('{row} button[data-verdict=anomaly]').click()")
        browser.wait_for(f"document.querySelector('{row} .label').dataset.label === 'anomaly'", 10)
        sidecar = Path(end["evidence"]["file"]).with_suffix(".json")
        assert json.loads(sidecar.read_text())["label"] == "anomaly"
        # docs/page.png: the card and the labelled anomaly, the page's top 1300 px at 0.75
        browser.screenshot(os.environ.get("EM_PAGE_SCREENSHOT") or tmp_path / "page-anomaly.png", 1300, 0.75)
        assert browser.console_errors() == [], browser.console_errors()
        # the polling fallback: a browser without EventSource polls /api/state, /api/events, /api/spectrum
        browser.call("Page.addScriptToEvaluateOnNewDocument", {"source": "delete window.EventSource;"})
        browser.navigate(f"{base}/?token={TOKEN}" if TOKEN else f"{base}/")
        browser.wait_for("document.getElementById('link').textContent === 'live (polling)'", 10)
        browser.wait_for(f"document.querySelector('{row} .label').dataset.label === 'anomaly'", 10)
        browser.wait_for(f"{VARIANCE % '.card canvas.spec'} > 1", 15)
        browser.wait_for(f"{VARIANCE % '.card .chart canvas'} > 1", 5)
    assert "processing thread died" not in node.output()
    print(f"test cost: {time.monotonic() - started:.1f} s")
