"""The live daemon's cost and latency, with real parts: a private PulseAudio null sink (16 kHz), a
private mosquitto, ``edge-monitor run`` as a subprocess reading the sink's monitor through ALSA's
``pulse`` device.

    python bench/daemon.py [--seconds 30] [--latency-runs 5] [--monitors 1,4] [--no-mqtt]
                           [--python-cmd CMD] [--bundle DIR] [--start-timeout S]
                           [--pythonpath TREE --module edge_monitor.cli]   # another tree, for before/after
                           [--evidence on|off|both]   # evidence recording (node/evidence.py) on, off, or each
                           [--http off,on,poll,stream,idle200]   # the node's page server (node/web/), each in turn

``--python-cmd`` runs the daemon with another interpreter, e.g. the arm64 stage's wrapper into its
emulated root file system (``tests/arm64.sh``); the process must keep the PID of the command (exec).
Under qemu user-mode emulation the process's RSS holds qemu too (its code, heap and the translated
code cache): those mappings are told apart by address and name (see :func:`qemu_split`).

1. CPU and memory: the daemon with 1 and with 4 monitors (4-channel sink, one monitor per channel)
   while normal machine sound plays: CPU seconds per second of the whole process (from
   /proc/<pid>/stat, after a warm-up), per monitor, and resident memory (VmRSS, VmHWM).
2. Latency: a clip whose bearing fault starts at 8 s is played into the sink; from the fault's onset
   (playback start + 8 s) to the MQTT ``anomaly_start`` at a subscriber; also the CPU of the processing
   thread and of the whole daemon over these runs (each anomaly writes an evidence clip when evidence is on).
   With the page server on, also from the onset to the anomaly_start row on ``/api/events`` (polled every 50 ms).

``--http``: ``off`` no server; ``on`` the server with the page closed; ``poll`` one client polling like
the page's fallback (``/api/state`` each second, ``/api/spectrum`` four times a second); ``stream`` one SSE
client on ``/api/stream``; ``idle200`` 200 connections held open and reopened as the server closes them
(64 at most are accepted; a head must come within 10 s). The server's own thread is ``em-web``.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import argparse
import json
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request
from typing import Self

import numpy as np
from memory_floor import qemu_split
from mqtt_helpers import Broker, Subscriber, free_port
from pulse import PulseServer

from edge_monitor import DEMO_DIR
from edge_monitor.core.wav import write_wav
from training.synth import synth_clip

BUNDLE = DEMO_DIR / "fan-id_00"
SR = 16000
PYTHON_CMD = [sys.executable]
START_TIMEOUT = 30.0
EMULATED = False
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread name; the daemon names each processing thread ``em:<monitor>``."""
    result: dict[str, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except FileNotFoundError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        key = name if name.startswith("em:") else "em-web" if name == "em-web" else "other"
        result[key] = result.get(key, 0.0) + (int(fields[11]) + int(fields[12])) / TICK
    return result


def memory_mb(pid: int) -> dict[str, float]:
    """RSS and its peak (status), and the private part (USS: memory no other process shares)."""
    values: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            values[line.split(":")[0]] = int(line.split()[1]) / 1024
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            values["USS"] = values.get("USS", 0.0) + int(line.split()[1]) / 1024
    return values


OPTIONS = {"module": "edge_monitor", "pythonpath": None, "mqtt": True, "evidence": "on", "http": "off",
           "http_port": 0}


def write_config(root: Path, monitors: int, port: int) -> Path:
    entries = "".join(f"  - name: fan-{i}\n    model: {BUNDLE}\n    channel: {i}\n" for i in range(monitors))
    config = root / f"config{monitors}.yaml"
    enabled = "true" if OPTIONS["mqtt"] else "false"
    config.write_text(f"node: bench\naudio:\n  device: pulse\nmonitors:\n{entries}mqtt:\n  enabled: {enabled}\n"
                      f"  host: 127.0.0.1\n  port: {port}\n  telemetry_seconds: 10\n  outbox:\n"
                      f"    path: {root / f'outbox{monitors}.sqlite'}\nlogging:\n  format: json\n"
                      + (f"state_dir: {root / 'state'}\nevidence:\n  enabled: {str(OPTIONS['evidence'] == 'on').lower()}\n"
                         if OPTIONS["evidence"] != "absent" else "")
                      + (f"http:\n  enabled: true\n  port: {OPTIONS['http_port']}\n" if OPTIONS["http"] != "off" else ""))
    return config


class Load:
    """What ``--http`` puts on the page server while the CPU is measured (a thread of this process)."""

    def __init__(self, mode: str, port: int, monitor: str = "fan-0"):
        self.mode, self.port, self.monitor = mode, port, monitor
        self.stop = threading.Event()
        self.requests = 0
        self.received = 0  # bytes (stream)
        self.reopened = 0  # connections (idle200)
        self.thread = threading.Thread(target=getattr(self, f"_{mode}", self._nothing), daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)

    def _get(self, path: str) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
            self.requests += 1
            return r.read()

    def _nothing(self) -> None:
        pass

    def _poll(self) -> None:
        frame, tick = 0, 0
        while not self.stop.wait(0.25):
            if tick % 4 == 0:
                self._get("/api/state")
            frame = json.loads(self._get(f"/api/spectrum?monitor={self.monitor}&since={frame}"))["frame"]
            tick += 1

    def _stream(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
            s.sendall(b"GET /api/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            while not self.stop.is_set():
                try:
                    chunk = s.recv(65536)
                except TimeoutError:
                    continue
                if not chunk:
                    return
                self.received += len(chunk)

    def _idle200(self) -> None:
        idle: list[socket.socket] = []
        while not self.stop.is_set():
            alive = []
            for s in idle:
                try:
                    gone = s.recv(1) == b""
                except BlockingIOError:
                    gone = False
                except OSError:
                    gone = True
                if gone:
                    s.close()
                else:
                    alive.append(s)
            while len(alive) < 200:
                try:
                    s = socket.create_connection(("127.0.0.1", self.port), timeout=1)
                except OSError:
                    break
                s.setblocking(False)
                alive.append(s)
                self.reopened += 1
            idle = alive
            self.stop.wait(1.0)
        for s in idle:
            s.close()

    def summary(self) -> str:
        return {"poll": f"{self.requests} requests", "stream": f"{self.received / 1024:.0f} KB of SSE received",
                "idle200": f"{self.reopened} connections opened"}.get(self.mode, "")


def start_daemon(config: Path, pulse: PulseServer, log: Path) -> subprocess.Popen:
    env = {**os.environ, **pulse.env, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    if OPTIONS["pythonpath"]:
        env["PYTHONPATH"] = OPTIONS["pythonpath"]
    return subprocess.Popen([*PYTHON_CMD, "-m", OPTIONS["module"], "run", "--config", str(config)], env=env,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            cwd=config.parent)  # not the repository: `-m` would import the tree in the working folder


def wait_running(proc: subprocess.Popen, log: Path, timeout: float | None = None) -> None:
    timeout = timeout or START_TIMEOUT
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if '"event": "running"' in log.read_text():
            return
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"the daemon did not start:\n{log.read_text()[-2000:]}")


def cost(root: Path, broker: Broker, monitors: int, seconds: float) -> None:
    pulse = PulseServer(root / f"pulse{monitors}", rate=SR, channels=monitors).start()
    rng = np.random.default_rng(monitors)
    sound = np.stack([synth_clip("fan", 0, seconds + 15, SR, rng=rng) for _ in range(monitors)], axis=1)
    wav = root / f"normal{monitors}.wav"
    write_wav(wav, sound, SR)
    log = root / f"daemon{monitors}.log"
    proc = start_daemon(write_config(root, monitors, broker.port), pulse, log)
    try:
        wait_running(proc, log)
        player = pulse.play(wav, wait=False)
        time.sleep(8)  # warm-up: health settles, first decisions, caches
        with Load(OPTIONS["http"], OPTIONS["http_port"]) as load:
            time.sleep(2)  # the load's connections are up
            c0, t0, th0 = cpu_seconds(proc.pid), time.monotonic(), thread_cpu(proc.pid)
            time.sleep(seconds)
            c1, t1, th1 = cpu_seconds(proc.pid), time.monotonic(), thread_cpu(proc.pid)
            mem = memory_mb(proc.pid)
        share = (c1 - c0) / (t1 - t0)
        per = {k: (th1[k] - th0.get(k, 0.0)) / (t1 - t0) for k in th1}
        processing = [v for k, v in per.items() if k.startswith("em:")]
        print(f"{monitors} monitor(s): daemon CPU {100 * share:.2f} % of one core in all = "
              f"{100 * share / monitors:.2f} % per monitor; processing threads "
              f"{', '.join(f'{100 * v:.2f} %' for v in processing)}; the rest (PortAudio and libpulse "
              f"threads, main loop, MQTT) {100 * per.get('other', 0.0):.2f} %; RSS {mem['VmRSS']:.1f} MB "
              f"(peak {mem['VmHWM']:.1f} MB), of it private {mem['USS']:.1f} MB"
              + (f"; page server (em-web) {100 * per.get('em-web', 0.0):.2f} % under {OPTIONS['http']} "
                 f"({load.summary() or 'no client'})" if OPTIONS["http"] != "off" else ""))
        if EMULATED:
            guest, own = qemu_split(proc.pid)
            print(f"  under qemu: the guest's RSS {guest:.1f} MB, qemu's own {own:.1f} MB (translation cache, "
                  "its heap and binary)")
        player.terminate()
        player.wait()
    finally:
        proc.terminate()
        proc.wait(10)
        pulse.kill()


def latency(root: Path, broker: Broker, runs: int) -> None:
    pulse = PulseServer(root / "pulse-latency", rate=SR, channels=1).start()
    onset = 8.0
    log = root / "daemon-latency.log"
    proc = start_daemon(write_config(root, 1, broker.port), pulse, log)
    delays, page_delays = [], []
    try:
        wait_running(proc, log)
        sub = Subscriber(broker.port, "edge-monitor/bench/#")
        c0, t0, th0 = cpu_seconds(proc.pid), time.monotonic(), thread_cpu(proc.pid)
        rng = np.random.default_rng(77)
        for run in range(runs):
            wav = root / f"onset{run}.wav"
            write_wav(wav, synth_clip("fan", 0, onset + 8.0, SR, rng=rng, fault="bearing", severity=0.5,
                                      fault_onset=onset), SR)
            seen = len(sub.on("/event"))
            started = time.perf_counter()  # the subscriber stamps each message with perf_counter
            player = pulse.play(wav, wait=False)
            if OPTIONS["http"] != "off":  # the page's view: the row on /api/events (polled every 50 ms)
                page = _events_row(OPTIONS["http_port"], started + onset + 12)
                if page is not None:
                    page_delays.append(page - started - onset)
                print(f"  run {run + 1}: " + (f"anomaly_start on /api/events {page - started - onset:.2f} s after "
                                              "the onset" if page is not None else "no anomaly_start on /api/events"))
            got = sub.wait_for(lambda ms, seen=seen: any(e["type"] == "anomaly_start" for e in sub.events()[seen:]),
                               onset + 12)
            player.wait()
            if got:
                received = next(m.at for m in sub.on("/event")[seen:] if m.json()["type"] == "anomaly_start")
                delays.append(received - started - onset)
            print(f"  run {run + 1}: " + (f"anomaly_start {received - started - onset:.2f} s after the onset"
                                          if got else "no anomaly_start"))
            time.sleep(6)  # let the anomaly end and the cooldown pass
        c1, t1, th1 = cpu_seconds(proc.pid), time.monotonic(), thread_cpu(proc.pid)
        processing = sum(th1[k] - th0.get(k, 0.0) for k in th1 if k.startswith("em:")) / (t1 - t0)
        clips = len(list((root / "state" / "evidence").glob("*/*.wav")))
        print(f"  over the latency runs: daemon CPU {100 * (c1 - c0) / (t1 - t0):.2f} % of one core, processing "
              f"thread {100 * processing:.2f} %; evidence clips on disk: {clips}")
        sub.close()
    finally:
        proc.terminate()
        proc.wait(10)
        pulse.kill()
    if delays:
        print(f"latency, fault onset in the sound played → MQTT anomaly_start at the subscriber: median "
              f"{statistics.median(delays):.2f} s, min {min(delays):.2f} s, max {max(delays):.2f} s ({len(delays)}/{runs})")
    if page_delays:
        print(f"latency, fault onset → its row on /api/events: median {statistics.median(page_delays):.2f} s, "
              f"min {min(page_delays):.2f} s, max {max(page_delays):.2f} s ({len(page_delays)}/{runs})")


def _events_row(port: int, until: float) -> float | None:
    """When (perf_counter) an anomaly_start row newer than the ones there now appeared on /api/events."""
    def rows(since: int) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/events?since={since}", timeout=5) as r:
            return json.loads(r.read())

    since = rows(0)["next"]
    while time.perf_counter() < until:
        answer = rows(since)
        if any(r["type"] == "anomaly_start" for r in answer["events"]):
            return time.perf_counter()
        since = answer["next"]
        time.sleep(0.05)
    return None


def main() -> None:
    global BUNDLE, PYTHON_CMD, START_TIMEOUT, EMULATED
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="CPU measurement window")
    parser.add_argument("--latency-runs", type=int, default=5, help="0: no latency runs")
    parser.add_argument("--monitors", default="1,4", help="monitor counts for the cost runs, comma-separated")
    parser.add_argument("--no-mqtt", action="store_true", help="the daemon without MQTT (latency needs MQTT)")
    parser.add_argument("--pythonpath", help="run the daemon of this tree (e.g. a worktree of an older commit)")
    parser.add_argument("--module", default="edge_monitor", help="its command module (older trees: edge_monitor.cli)")
    parser.add_argument("--python-cmd", help="command (shell words) that runs the daemon's Python")
    parser.add_argument("--bundle", type=Path, default=BUNDLE, help="the model bundle, as the daemon sees it")
    parser.add_argument("--start-timeout", type=float, default=30.0, help="seconds for the daemon to start")
    parser.add_argument("--evidence", choices=("on", "off", "both", "absent"), default="on",
                        help="evidence recording on or off (both: each in turn; absent: no state_dir/evidence keys, "
                             "for trees older than evidence)")
    parser.add_argument("--http", default="off",
                        help="page server modes for the cost runs, comma-separated: off, on, poll, stream, idle200 "
                             "(the latency runs use the first that is not off, if any)")
    parser.add_argument("--emulated", action="store_true", help="the daemon runs under qemu-user: split its RSS")
    args = parser.parse_args()
    OPTIONS.update(module=args.module, pythonpath=args.pythonpath, mqtt=not args.no_mqtt)
    BUNDLE, START_TIMEOUT, EMULATED = args.bundle, args.start_timeout, args.emulated
    PYTHON_CMD = shlex.split(args.python_cmd) if args.python_cmd else [sys.executable]
    modes = args.http.split(",")
    if not set(modes) <= {"off", "on", "poll", "stream", "idle200"}:
        parser.error(f"--http: {args.http}: off, on, poll, stream or idle200, comma-separated")
    for evidence in ("on", "off") if args.evidence == "both" else (args.evidence,):
        OPTIONS["evidence"] = evidence
        print(f"--- evidence {evidence}")
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            broker = Broker(root / "broker").start()
            try:
                for monitors in (int(m) for m in args.monitors.split(",")):
                    for mode in modes:
                        OPTIONS.update(http=mode, http_port=free_port())
                        if len(modes) > 1:
                            print(f"  http {mode}:")
                        cost(root, broker, monitors, args.seconds)
                if args.latency_runs > 0 and not args.no_mqtt:
                    OPTIONS.update(http=next((m for m in modes if m != "off"), "off"), http_port=free_port())
                    latency(root, broker, args.latency_runs)
            finally:
                broker.stop()


if __name__ == "__main__":
    main()
