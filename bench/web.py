"""The node's page server (``node/web/``) under load, with real parts: ``edge-monitor run`` with
``http.enabled`` on a private PulseAudio null sink and mosquitto (``bench/daemon.py``'s harness), normal
machine sound playing, clients over real loopback sockets.

    python bench/web.py [--requests 200] [--seconds 15] [--streams 0,1,4,16]

1. Request latency: ``--requests`` sequential GETs of each route (new connection each, as the server
   closes after one answer): median, 95th percentile and max, in ms, measured at the client.
2. SSE fan-out: with 0, 1, 4, 16 ``/api/stream`` clients reading, the CPU (% of one core) of the page
   server's thread (``em-web``) and of the processing thread (``em:fan-0``) over ``--seconds``, and the
   bytes each client received per second. One more stream than the bound (16) is refused with 503.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import argparse
import http.client
import socket
import statistics
import tempfile
import threading
import time

import daemon as harness
import numpy as np
from mqtt_helpers import Broker, free_port
from pulse import PulseServer

from edge_monitor.core.wav import write_wav
from training.synth import synth_clip

ROUTES = ("/healthz", "/api/state", "/api/events", "/api/spectrum?monitor=fan-0&since=0", "/metrics", "/")


def request_ms(port: int, path: str) -> float:
    began = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", path)
    r = conn.getresponse()
    r.read()
    conn.close()
    assert r.status == 200, (path, r.status)
    return (time.perf_counter() - began) * 1000


class Reader:
    """One SSE client reading everything the server sends."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=1)
        self.sock.sendall(b"GET /api/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        self.bytes = 0
        self.head = b""
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while not self.stop.is_set():
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not chunk:
                return
            if not self.head:
                self.head = chunk[:12]
            self.bytes += len(chunk)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        self.sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--streams", default="0,1,4,16")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        broker = Broker(root / "broker").start()
        pulse = PulseServer(root / "pulse", rate=harness.SR, channels=1).start()
        port = free_port()
        harness.OPTIONS.update(http="on", http_port=port)
        wav = root / "normal.wav"
        write_wav(wav, synth_clip("fan", 0, 30 + 4 * (args.seconds + 3) + 6 * args.requests * 0.02, harness.SR,
                                  rng=np.random.default_rng(5)), harness.SR)
        log = root / "daemon.log"
        proc = harness.start_daemon(harness.write_config(root, 1, broker.port), pulse, log)
        player = None
        try:
            harness.wait_running(proc, log)
            player = pulse.play(wav, wait=False)
            time.sleep(6)
            print(f"request latency over {args.requests} requests each (new connection each), ms:")
            for path in ROUTES:
                times = sorted(request_ms(port, path) for _ in range(args.requests))
                print(f"  {path:<38} median {statistics.median(times):6.2f}  p95 {times[int(0.95 * len(times))]:6.2f}"
                      f"  max {times[-1]:6.2f}")
            print(f"SSE fan-out, over {args.seconds:.0f} s each:")
            for n in (int(s) for s in args.streams.split(",")):
                readers = [Reader(port) for _ in range(n)]
                time.sleep(2)
                th0, t0 = harness.thread_cpu(proc.pid), time.monotonic()
                b0 = [r.bytes for r in readers]
                time.sleep(args.seconds)
                th1, t1 = harness.thread_cpu(proc.pid), time.monotonic()
                span = t1 - t0
                web = (th1.get("em-web", 0.0) - th0.get("em-web", 0.0)) / span
                processing = sum(th1[k] - th0.get(k, 0.0) for k in th1 if k.startswith("em:")) / span
                rate = [(r.bytes - b) / span / 1024 for r, b in zip(readers, b0, strict=True)]
                extra = ""
                if n >= 16:
                    over = Reader(port)
                    time.sleep(1)
                    extra = f"; a 17th stream: {over.head.decode(errors='replace').strip()!r}"
                    over.close()
                print(f"  {n:2d} stream(s): page server {100 * web:.2f} % of a core, processing thread "
                      f"{100 * processing:.2f} %; each client {statistics.mean(rate) if rate else 0:.1f} KB/s"
                      + extra)
                for r in readers:
                    r.close()
        finally:
            if player is not None:
                player.terminate()
                player.wait()
            proc.terminate()
            proc.wait(10)
            pulse.kill()
            broker.stop()


if __name__ == "__main__":
    main()
