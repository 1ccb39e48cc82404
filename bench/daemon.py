"""The live daemon's cost and latency, with real parts: a private PulseAudio null sink (16 kHz), a
private mosquitto, ``edge-monitor run`` as a subprocess reading the sink's monitor through ALSA's
``pulse`` device.

    python bench/daemon.py [--seconds 30] [--latency-runs 5] [--monitors 1,4] [--no-mqtt]
                           [--python-cmd CMD] [--bundle DIR] [--start-timeout S]
                           [--pythonpath TREE --module edge_monitor.cli]   # another tree, for before/after
                           [--evidence on|off|both]   # evidence recording (node/evidence.py) on, off, or each

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
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import argparse  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from memory_floor import qemu_split  # noqa: E402
from mqtt_helpers import Broker, Subscriber  # noqa: E402
from pulse import PulseServer  # noqa: E402

from edge_monitor import DEMO_DIR  # noqa: E402
from edge_monitor.core.wav import write_wav  # noqa: E402
from training.synth import synth_clip  # noqa: E402

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
        key = name if name.startswith("em:") else "other"
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


OPTIONS = {"module": "edge_monitor", "pythonpath": None, "mqtt": True, "evidence": "on"}


def write_config(root: Path, monitors: int, port: int) -> Path:
    entries = "".join(f"  - name: fan-{i}\n    model: {BUNDLE}\n    channel: {i}\n" for i in range(monitors))
    config = root / f"config{monitors}.yaml"
    enabled = "true" if OPTIONS["mqtt"] else "false"
    config.write_text(f"node: bench\naudio:\n  device: pulse\nmonitors:\n{entries}mqtt:\n  enabled: {enabled}\n"
                      f"  host: 127.0.0.1\n  port: {port}\n  telemetry_seconds: 10\n  outbox:\n"
                      f"    path: {root / f'outbox{monitors}.sqlite'}\nlogging:\n  format: json\n"
                      + (f"state_dir: {root / 'state'}\nevidence:\n  enabled: {str(OPTIONS['evidence'] == 'on').lower()}\n"
                         if OPTIONS["evidence"] != "absent" else ""))
    return config


def start_daemon(config: Path, pulse: PulseServer, log: Path) -> subprocess.Popen:
    env = {**os.environ, **pulse.env, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    if OPTIONS["pythonpath"]:
        env["PYTHONPATH"] = OPTIONS["pythonpath"]
    return subprocess.Popen([*PYTHON_CMD, "-m", OPTIONS["module"], "run", "--config", str(config)], env=env,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT,  # noqa: SIM115
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
              f"(peak {mem['VmHWM']:.1f} MB), of it private {mem['USS']:.1f} MB")
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
    delays = []
    try:
        wait_running(proc, log)
        sub = Subscriber(broker.port, "edge-monitor/bench/#")
        c0, t0, th0 = cpu_seconds(proc.pid), time.monotonic(), thread_cpu(proc.pid)
        rng = np.random.default_rng(77)
        for run in range(runs):
            wav = root / f"onset{run}.wav"
            write_wav(wav, synth_clip("fan", 0, onset + 8.0, SR, rng=rng, fault="bearing", severity=0.5,
                                      fault_onset=onset), SR)
            seen = len(sub.events())
            started = time.monotonic()
            player = pulse.play(wav, wait=False)
            got = sub.wait_for(lambda ms, seen=seen: any(e["type"] == "anomaly_start" for e in sub.events()[seen:]),
                               onset + 12)
            received = time.monotonic()
            player.wait()
            if got:
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
    parser.add_argument("--emulated", action="store_true", help="the daemon runs under qemu-user: split its RSS")
    args = parser.parse_args()
    OPTIONS.update(module=args.module, pythonpath=args.pythonpath, mqtt=not args.no_mqtt)
    BUNDLE, START_TIMEOUT, EMULATED = args.bundle, args.start_timeout, args.emulated
    PYTHON_CMD = shlex.split(args.python_cmd) if args.python_cmd else [sys.executable]
    for evidence in ("on", "off") if args.evidence == "both" else (args.evidence,):
        OPTIONS["evidence"] = evidence
        print(f"--- evidence {evidence}")
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            broker = Broker(root / "broker").start()
            try:
                for monitors in (int(m) for m in args.monitors.split(",")):
                    cost(root, broker, monitors, args.seconds)
                if args.latency_runs > 0 and not args.no_mqtt:
                    latency(root, broker, args.latency_runs)
            finally:
                broker.stop()


if __name__ == "__main__":
    main()
