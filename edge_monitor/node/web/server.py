"""The node's HTTP server: the page, ``/api/*``, Server-Sent Events, ``/metrics``, ``/healthz``, evidence clips.

One thread running an asyncio event loop, standard library only. Not ``http.server``: it spends a thread
per connection, so a hundred idle browsers would be a hundred threads competing with the processing
threads for the GIL; here they are a hundred sockets in one loop, with hard bounds (connections,
streams, head and body size, head timeout, a slow stream's unsent bytes). No web framework is a
dependency of the node for ten routes. The server reads only what ``live.LiveView`` offers.

Security: the routes are a fixed table; static files are read once at start from the package into
memory; an evidence clip is found only by looking up a known anomaly id (16 hex digits) with
``node.labels.find_evidence``; no part of a request path is ever joined to a folder. With a token
(``http.token_file``) every request but ``/healthz`` needs it (``Authorization: Bearer`` or ``?token=``),
and a POST must also come from the page's own origin.
"""

from __future__ import annotations

import asyncio
import hmac
import html
import json
import math
import re
import threading
import time
from email.utils import formatdate
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import structlog

from edge_monitor.core.errors import UserError
from edge_monitor.node.labels import VERDICTS, apply_label, find_evidence
from edge_monitor.node.systemd import name_thread
from edge_monitor.node.web.live import LiveView

log = structlog.get_logger()

MAX_CONNECTIONS = 64
MAX_STREAMS = 16
MAX_HEAD = 16 * 1024
MAX_BODY = 4 * 1024
HEAD_TIMEOUT = 10.0
STREAM_BUFFER = 256 * 1024
KEEPALIVE_SECONDS = 15.0
SPECTRUM_SECONDS = 0.25
STATIC = {  # URL → (file in edge_monitor/node/web/static, content type)
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
    "/static/vendor/uPlot.iife.min.js": ("vendor/uPlot.iife.min.js", "text/javascript; charset=utf-8"),
    "/static/vendor/uPlot.min.css": ("vendor/uPlot.min.css", "text/css; charset=utf-8"),
}
_EVIDENCE = re.compile(r"^/evidence/([0-9a-f]{16})\.(wav|png)$")
_REASONS = {200: "OK", 204: "No Content", 206: "Partial Content", 400: "Bad Request", 401: "Unauthorized",
            403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 411: "Length Required",
            413: "Content Too Large", 416: "Range Not Satisfiable", 431: "Request Header Fields Too Large",
            500: "Internal Server Error", 503: "Service Unavailable"}


def read_token(path: str | Path) -> str:
    """The token in ``path``; UserError if the file is missing, empty, or readable by others."""
    p = Path(path)
    try:
        mode = p.stat().st_mode
        token = p.read_text().strip()
    except OSError as exc:
        raise UserError(f"http.token_file {p}: cannot read it ({exc.strerror}); create it with mode 0600") from None
    if mode & 0o077:
        raise UserError(f"http.token_file {p}: readable by others (mode {mode & 0o777:o}); chmod 600 {p}")
    if len(token) < 16:
        raise UserError(f"http.token_file {p}: the token must be at least 16 characters "
                        "(e.g. head -c 24 /dev/urandom | base64)")
    return token


def _static_files() -> dict[str, tuple[bytes, str]]:
    root = resources.files("edge_monitor.node.web") / "static"
    files = {}
    for url, (name, kind) in STATIC.items():
        node = root
        for part in name.split("/"):
            node = node / part
        try:
            files[url] = (node.read_bytes(), kind)
        except OSError:
            files[url] = (b"edge-monitor: this file is missing from the installation: " + name.encode(), "text/plain")
    return files


class Request:
    def __init__(self, method: str, target: str, headers: dict[str, str], body: bytes):
        self.method = method
        self.target = target
        parts = urlsplit(target)
        self.path = parts.path
        self.query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        self.headers = headers
        self.body = body


class WebServer:
    """``start()`` binds and serves on a thread of its own; ``stop()`` closes everything."""

    def __init__(self, live: LiveView, *, bind: str, port: int, token: str | None, healthy, state_dir):
        self.live = live
        self.bind = bind
        self.port = port
        self.token = token
        self.healthy = healthy            # () -> bool: would the watchdog ping now
        self.state_dir = Path(state_dir)
        self.files = _static_files()
        # the page's own <script src>/<link href> cannot know the token: it is written into them here
        self._page = _with_token(self.files["/"][0], token) if token is not None else b""
        self.connections = 0
        self.refused = 0                  # connections closed at once (too many)
        self.streams: set[asyncio.Queue] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._spectrum_sent: dict[str, int] = {}

    # --- life cycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="web", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise UserError(f"http: cannot listen on {self.bind}:{self.port}: {self._error}")
        self.live.feed.on_row = self._row_from_thread
        log.info("web page serving", url=f"http://{self.bind}:{self.port}/", token=self.token is not None)

    def stop(self) -> None:
        self.live.feed.on_row = None
        loop = self._loop
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(3)

    def _run(self) -> None:
        name_thread("em-web")  # top -H, bench/daemon.py: the server's CPU apart from the processing threads
        loop = self._loop = asyncio.new_event_loop()
        try:
            self._server = loop.run_until_complete(
                asyncio.start_server(self._connection, self.bind, self.port, limit=MAX_HEAD, backlog=128))
            self.port = self._server.sockets[0].getsockname()[1]
        except OSError as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        loop.create_task(self._ticks())
        try:
            loop.run_forever()
        finally:
            self._server.close()
            for task in asyncio.all_tasks(loop):
                task.cancel()
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()

    async def _ticks(self) -> None:
        """Once a second a history point and an SSE ``state``; four times a second the new spectrum rows."""
        next_state = 0.0
        while True:
            now = time.monotonic()
            if now >= next_state:
                next_state = now + 1.0
                self.live.sample()
                if self.streams:
                    self._broadcast("state", self.live.state(history=False))
            if self.streams:
                for view in self.live.current():
                    message = self._spectrum(view, self._spectrum_sent.get(view.name, -1))
                    if message is not None:
                        self._spectrum_sent[view.name] = message["frame"]
                        self._broadcast("spectrum", message)
            await asyncio.sleep(SPECTRUM_SECONDS)

    def _row_from_thread(self, row: dict) -> None:
        loop = self._loop
        if loop is not None and self.streams:
            try:
                loop.call_soon_threadsafe(self._broadcast, "event", row)
            except RuntimeError:  # the loop closed meanwhile
                pass

    def _broadcast(self, kind: str, data: dict) -> None:
        chunk = f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
        for queue in list(self.streams):
            queue.put_nowait(chunk)

    @staticmethod
    def _spectrum(view, since: int) -> dict | None:
        if view.spectrum is None:
            return None
        frame, rows = view.spectrum.since(max(since, 0), limit=64 if since >= 0 else 256)
        if not len(rows) and since >= 0:
            return None
        level = view.monitor.health.level_dbfs
        return {"monitor": view.name, "frame": frame, "rows": [[round(float(v), 1) for v in r] for r in rows],
                "level_dbfs": round(level, 1) if math.isfinite(level) else None}

    # --- one connection -----------------------------------------------------------------------
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.connections >= MAX_CONNECTIONS:
            self.refused += 1
            writer.close()
            return
        self.connections += 1
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError, OSError):
            pass
        except Exception:
            log.exception("web request failed")
            try:
                self._send(writer, 500, b"internal error\n", "text/plain")
            except OSError:
                pass
        finally:
            self.connections -= 1
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
        except (asyncio.LimitOverrunError, ValueError):
            self._send(writer, 431, b"request head too large\n", "text/plain")
            return
        lines = head.decode("latin-1").split("\r\n")
        try:
            method, target, _version = lines[0].split(" ")
        except ValueError:
            self._send(writer, 400, b"bad request line\n", "text/plain")
            return
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                key, value = line.split(":", 1)
                headers[key.strip().lower()] = value.strip()
        body = b""
        if "transfer-encoding" in headers:
            self._send(writer, 411, b"send a Content-Length\n", "text/plain")
            return
        length = headers.get("content-length", "0")
        if not length.isdigit():
            self._send(writer, 400, b"bad Content-Length\n", "text/plain")
            return
        if int(length) > MAX_BODY:
            self._send(writer, 413, b"request body too large\n", "text/plain")
            return
        if int(length):
            body = await asyncio.wait_for(reader.readexactly(int(length)), HEAD_TIMEOUT)
        request = Request(method, target, headers, body)
        if request.path == "/api/stream" and method == "GET" and self._authorised(request):
            await self._stream(writer)
            return
        status, payload, kind, extra = self._route(request)
        self._send(writer, status, payload, kind, extra, head_only=method == "HEAD")
        await writer.drain()

    def _send(self, writer: asyncio.StreamWriter, status: int, payload: bytes, kind: str,
              extra: dict | None = None, head_only: bool = False) -> None:
        headers = {"Content-Type": kind, "Content-Length": str(len(payload)), "Connection": "close",
                   "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
                   "Date": formatdate(usegmt=True), "Referrer-Policy": "no-referrer",
                   "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; media-src 'self'; "
                                              "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'"}
        headers.update(extra or {})
        text = f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(text.encode("latin-1") + b"\r\n" + (b"" if head_only else payload))

    # --- routes -------------------------------------------------------------------------------
    def _authorised(self, request: Request) -> bool:
        if self.token is None:
            return True
        given = request.query.get("token")
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def _route(self, request: Request) -> tuple[int, bytes, str, dict | None]:
        path, method = request.path, request.method
        if path == "/healthz" and method in ("GET", "HEAD"):
            ok = self.healthy()
            return (200, b"ok\n", "text/plain", None) if ok else (503, b"not healthy: a monitor is stalled\n",
                                                                  "text/plain", None)
        if not self._authorised(request):
            return _json(401, {"error": "a token is needed: add ?token=... or an Authorization: Bearer header"})
        if method == "POST":
            if path != "/api/label":
                return _json(405, {"error": "only /api/label takes a POST"})
            return self._label(request)
        if method not in ("GET", "HEAD"):
            return _json(405, {"error": f"{method} is not served"})
        if path in self.files:
            data, kind = self.files[path]
            if path == "/" and self.token is not None:
                data = self._page
            return 200, data, kind, None
        if path == "/metrics":
            from edge_monitor.node.web.metrics import exposition

            data, kind = exposition(self.live)
            return 200, data, kind, None
        if path == "/api/state":
            return _json(200, self.live.state(history=True))
        if path == "/api/events":
            since = request.query.get("since")
            if since is not None and not since.isdigit():
                return _json(400, {"error": "since must be an event seq (a whole number)"})
            rows, last = self.live.feed.since(int(since) if since is not None else None)
            return _json(200, {"events": [self._with_label(r) for r in rows], "next": last})
        if path == "/api/spectrum":
            view = self.live.views.get(request.query.get("monitor", ""))
            since = request.query.get("since", "0")
            if view is None or view.monitor is None or not since.lstrip("-").isdigit():
                return _json(404, {"error": "no such monitor"})
            return _json(200, self._spectrum(view, int(since)) or {"monitor": view.name, "frame": int(since),
                                                                   "rows": [], "level_dbfs": None})
        match = _EVIDENCE.match(path)
        if match:
            return self._evidence(match[1], match[2], request)
        return _json(404, {"error": "not found"})

    def _with_label(self, row: dict) -> dict:
        if "evidence" not in row:
            return row
        side = find_evidence(self.state_dir, row["id"])
        label = None
        if side is not None:
            try:
                label = json.loads(side.read_text()).get("label")
            except (OSError, ValueError):
                pass
        return dict(row, evidence=dict(row["evidence"], label=label))

    def _evidence(self, anomaly_id: str, ext: str, request: Request) -> tuple[int, bytes, str, dict | None]:
        side = find_evidence(self.state_dir, anomaly_id)
        if side is None:
            return _json(404, {"error": "no evidence for that id"})
        try:
            data = side.with_suffix("." + ext).read_bytes()
        except OSError:
            return _json(404, {"error": "that evidence file is gone (retention)"})
        kind = "audio/wav" if ext == "wav" else "image/png"
        extra = {"Accept-Ranges": "bytes"}
        wanted = re.fullmatch(r"bytes=(\d*)-(\d*)", request.headers.get("range", ""))
        if wanted and (wanted[1] or wanted[2]):
            size = len(data)
            first = int(wanted[1]) if wanted[1] else max(0, size - int(wanted[2]))
            last = min(int(wanted[2]), size - 1) if wanted[1] and wanted[2] else size - 1
            if first >= size or first > last:
                return 416, b"", kind, {"Content-Range": f"bytes */{size}"}
            extra["Content-Range"] = f"bytes {first}-{last}/{size}"
            return 206, data[first : last + 1], kind, extra
        return 200, data, kind, extra

    def _label(self, request: Request) -> tuple[int, bytes, str, dict | None]:
        origin = request.headers.get("origin")
        host = request.headers.get("host", "")
        if origin is not None and origin != f"http://{host}":
            return _json(403, {"error": "a label must come from this node's own page"})
        if "application/json" not in request.headers.get("content-type", ""):
            return _json(400, {"error": "send JSON (Content-Type: application/json)"})
        try:
            data = json.loads(request.body)
            anomaly_id, verdict = str(data["id"]), str(data["verdict"])
        except (ValueError, KeyError, TypeError):
            return _json(400, {"error": 'send {"id": "<anomaly id>", "verdict": "normal" | "anomaly"}'})
        if not re.fullmatch(r"[0-9a-f]{16}", anomaly_id) or verdict not in VERDICTS:
            return _json(400, {"error": "id: 16 hex digits; verdict: normal or anomaly"})
        if find_evidence(self.state_dir, anomaly_id) is None:
            return _json(404, {"error": "no evidence for that id"})
        try:
            monitor, target = apply_label(self.state_dir, anomaly_id, verdict, data.get("note"))
        except UserError as exc:
            return _json(400, {"error": str(exc)})
        log.info("labelled from the page", monitor=monitor, id=anomaly_id, label=verdict)
        return _json(200, {"id": anomaly_id, "verdict": verdict, "label_file": str(target)})

    async def _stream(self, writer: asyncio.StreamWriter) -> None:
        if len(self.streams) >= MAX_STREAMS:
            self._send(writer, 503, b"too many live streams; the page polls instead\n", "text/plain")
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n"
                     b"Connection: close\r\nX-Accel-Buffering: no\r\n\r\nretry: 3000\n\n")
        queue: asyncio.Queue = asyncio.Queue()
        self.streams.add(queue)
        try:
            queue.put_nowait(f"event: state\ndata: {json.dumps(self.live.state(history=False))}\n\n".encode())
            while True:
                try:
                    chunk = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
                except asyncio.TimeoutError:
                    chunk = b": keepalive\n\n"
                writer.write(chunk)  # never waits for the client: what it does not take piles up, to a bound
                if writer.transport.is_closing():
                    return
                if writer.transport.get_write_buffer_size() > STREAM_BUFFER:
                    log.info("web stream closed: the client does not keep up")
                    return
        finally:
            self.streams.discard(queue)


def _with_token(page: bytes, token: str) -> bytes:
    """``page`` with ``?token=`` added to each ``src="/static/…"`` / ``href="/static/…"`` (URL- and HTML-escaped)."""
    query = html.escape("?token=" + quote(token, safe=""), quote=True)
    return re.sub(rb'((?:src|href)="/static/[^"?#]+)"', lambda m: m[1] + query.encode() + b'"', page)


def _json(status: int, data: dict) -> tuple[int, bytes, str, dict | None]:
    return status, json.dumps(data, separators=(",", ":")).encode(), "application/json", None
