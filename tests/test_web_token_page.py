"""With a token, the node's page loads its own assets: ``GET /?token=T`` writes the token into every
``/static/`` URL of index.html (a static HTML file cannot know it, and the server's CSP forbids the inline
script that could add it), so the browser's plain requests for app.js, style.css and uPlot carry it.
The real daemon (``test_daemon.py``'s harness: PulseAudio null sink, mosquitto) serves the packaged page.
"""

from __future__ import annotations

import html
import http.client
import re
import time

from mqtt_helpers import free_port
from test_daemon import node_factory  # noqa: F401 (fixture)

TOKEN = "a+b/c=d-token-for-the-page-test"  # '+', '/', '=': base64's characters must survive the URL


def _get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", path)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, data


def test_a_tokened_page_gets_its_assets(node_factory, tmp_path):  # noqa: F811
    token_file = tmp_path / "http.token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    port = free_port()
    node = node_factory(extra=f"http:\n  enabled: true\n  port: {port}\n  token_file: {token_file}\n")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if _get(port, "/healthz")[0] == 200:
                break
        except OSError:
            time.sleep(0.2)
    else:
        raise AssertionError(node.output())
    assert _get(port, "/")[0] == 401  # the page itself needs the token
    status, page = _get(port, "/?token=" + "a%2Bb%2Fc%3Dd-token-for-the-page-test")
    assert status == 200, page
    urls = [html.unescape(u) for u in re.findall(r'(?:src|href)="(/static/[^"]+)"', page.decode())]
    assert len(urls) >= 4, page  # app.js, style.css, uPlot's script and css
    for url in urls:
        assert url.endswith("?token=a%2Bb%2Fc%3Dd-token-for-the-page-test"), url
        assert _get(port, url)[0] == 200, url  # exactly what the browser asks for: no header
        assert _get(port, url.split("?")[0])[0] == 401, url  # the assets still need the token
