"""``edge-monitor run`` end to end with real parts: a private PulseAudio server (null sink; the daemon
records its monitor through sounddevice and ALSA's ``pulse`` device), a private mosquitto, the systemd
notify socket, the bundled demo model, WAVs played with ``paplay``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from mqtt_helpers import Broker, Subscriber
from pulse import PulseServer, have_pulseaudio

from edge_monitor import DEMO_DIR
from edge_monitor.core.events import validate
from edge_monitor.core.wav import write_wav
from training.synth import synth_clip

pytestmark = pytest.mark.skipif(not have_pulseaudio(), reason="pulseaudio is not installed "
                                "(apt-get install pulseaudio pulseaudio-utils libasound2-plugins libportaudio2)")

BUNDLE = DEMO_DIR / "fan-id_00"
NODE = "e2e"


@pytest.fixture()
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(42)
    normal = folder / "normal.wav"
    anomaly = folder / "anomaly.wav"
    write_wav(normal, synth_clip("fan", 0, 14.0, 16000, rng=rng), 16000)
    write_wav(anomaly, synth_clip("fan", 0, 10.0, 16000, rng=rng, fault="bearing", severity=0.5), 16000)
    return normal, anomaly


class Node:
    """The daemon as a subprocess with its config, notify socket, broker and subscriber."""

    def __init__(self, root: Path, pulse: PulseServer, broker: Broker, **overrides):
        self.root = root
        self.pulse = pulse
        self.broker = broker
        self.config = root / "config.yaml"
        self.events = root / "events.jsonl"
        self.state_dir = root / "state"  # the node's state folder: evidence/ (alert clips), normal/
        self.write_config(**overrides)
        self.notify_path = str(root / "notify.sock")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.notify_path)
        self.notify.settimeout(0.2)
        self.messages: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read_notify, daemon=True)  # systemd always reads
        self._reader.start()
        self.sub = Subscriber(broker.port, f"edge-monitor/{NODE}/#")
        self.log = open(root / "daemon.log", "w+")  # noqa: SIM115
        env = {**os.environ, **pulse.env, "NOTIFY_SOCKET": self.notify_path, "WATCHDOG_USEC": "10000000"}
        self.proc = subprocess.Popen([sys.executable, "-m", "edge_monitor", "--log-format", "json", "run",
                                      "--config", str(self.config)], env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT)

    def write_config(self, threshold: str = "null", extra: str = "", monitors: str | None = None,
                     audio: str = "") -> None:
        monitors = monitors or f"  - name: fan-1\n    model: {BUNDLE}\n    threshold: {threshold}\n"
        self.config.write_text(f"""
node: {NODE}
audio:
  device: pulse
{audio}monitors:
{monitors}
mqtt:
  enabled: true
  host: 127.0.0.1
  port: {self.broker.port}
  telemetry_seconds: 1.0
  reconnect_min_seconds: 0.2
  reconnect_max_seconds: 1.0
  outbox:
    path: {self.root / 'outbox.sqlite'}
events_jsonl: {self.events}
state_dir: {self.state_dir}
{extra}""")

    def _read_notify(self) -> None:
        while True:
            try:
                message = self.notify.recv(4096).decode()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                self.messages.append(message)

    def read_notify(self, until: str, timeout: float, after: int = 0) -> bool:
        """Wait for a notify message containing ``until`` (among messages number ``after`` onwards)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if any(until in m for m in self.messages[after:]):
                    return True
            if self.proc.poll() is not None:
                return False
            time.sleep(0.05)
        return False

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()

    def events_of(self, kind: str) -> list[dict]:
        return [e for e in self.sub.events() if e["type"] == kind]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.sub.close()
        self.notify.close()
        self.log.close()


@pytest.fixture()
def node_factory(tmp_path, request):
    channels = getattr(request, "param", 1)
    # 16 kHz like the model: the sound reaches the daemon without a resampler in between (a
    # 16→48→16 kHz round trip removes the top of the band, which the model rightly finds unusual)
    pulse = PulseServer(tmp_path / "pulse", rate=16000, channels=channels).start()
    broker = Broker(tmp_path / "broker").start()
    nodes = []

    def make(**overrides) -> Node:
        node = Node(tmp_path, pulse, broker, **overrides)
        nodes.append(node)
        assert node.read_notify("READY=1", 30), node.output()
        return node

    yield make
    for node in nodes:
        node.stop()
    broker.stop()
    pulse.kill()


@pytest.fixture()
def pulse_server(tmp_path):
    server = PulseServer(tmp_path / "pulse", rate=16000, channels=1).start()
    yield server
    server.kill()


def test_normal_then_anomalous_sound_reaches_scada_and_sigterm_goes_offline(node_factory, clips):
    normal, anomaly = clips
    node = node_factory()
    assert node.sub.wait_for(lambda ms: any(m.topic.endswith("/status") and m.json()["state"] == "online"
                                            for m in ms), 10)
    node.pulse.play(normal)
    played_anomaly = time.perf_counter()  # the subscriber stamps messages with perf_counter
    node.pulse.play(anomaly, wait=False)
    assert node.sub.wait_for(lambda ms: any(m.topic.endswith("/event") and m.json()["type"] == "anomaly_start"
                                            for m in ms), 15), node.output()
    latency = time.perf_counter() - played_anomaly
    # detection takes > 2 s: an anomaly_start received before 1 s into the faulty sound came from the normal part
    early = [m for m in node.sub.messages if m.topic.endswith("/event") and m.json()["type"] == "anomaly_start"
             and m.at < played_anomaly + 1.0]
    assert early == [], "an anomaly during the normal sound"
    start = node.events_of("anomaly_start")[0]
    assert validate(start) == [] and start["monitor"] == "fan-1" and start["node"] == NODE
    assert start["source"].startswith("mic:") and start["explanation"]["bands"]
    assert latency < 8.0, latency
    # retained state says anomaly; telemetry flows
    assert node.sub.wait_for(lambda ms: any(m.topic.endswith("fan-1/state") and m.json()["state"] == "anomaly"
                                            for m in ms), 5)
    assert node.sub.wait_for(lambda ms: any(m.topic.endswith("fan-1/telemetry") for m in ms), 5)
    # systemd saw readiness, watchdog pings and status lines
    node.read_notify("WATCHDOG=1", 5)
    assert any("WATCHDOG=1" in m for m in node.messages)
    assert any("STATUS=fan-1" in m for m in node.messages)
    stopped = time.monotonic()
    node.proc.send_signal(signal.SIGTERM)
    assert node.proc.wait(5) == 0, node.output()
    assert time.monotonic() - stopped < 2.5
    assert node.sub.wait_for(lambda ms: any(m.topic.endswith("/status") and m.json()["state"] == "offline"
                                            and m.json().get("reason") == "shutdown" for m in ms), 5)
    assert any("STOPPING=1" in m for m in node.messages) or node.read_notify("STOPPING=1", 1)
    # the JSON-lines file holds the same events, each valid
    lines = [json.loads(line) for line in node.events.read_text().splitlines()]
    assert any(e["type"] == "anomaly_start" for e in lines) and all(validate(e) == [] for e in lines)
    assert '"monitor": "fan-1"' in node.output()  # JSON log lines carry monitor=


def test_microphone_lost_and_back_is_a_sensor_fault_not_a_crash(node_factory, clips):
    node = node_factory()
    node.pulse.unload_source()
    assert node.sub.wait_for(lambda ms: any(m.topic.endswith("/event") and m.json()["type"] == "health"
                                            and m.json()["health"]["condition"] == "sensor_fault"
                                            and m.json()["health"]["status"] == "bad" for m in ms), 15), node.output()
    assert node.proc.poll() is None
    assert node.sub.wait_for(lambda ms: any(m.topic.endswith("fan-1/state") and m.json()["state"] == "sensor_fault"
                                            for m in ms), 5)
    node.pulse.reload_source()
    assert node.sub.wait_for(lambda ms: any(m.topic.endswith("/event") and m.json()["type"] == "health"
                                            and m.json()["health"]["condition"] == "sensor_fault"
                                            and m.json()["health"]["status"] == "ok" for m in ms), 40), node.output()
    faults = [e for e in node.events_of("health") if e["health"]["condition"] == "sensor_fault"]
    assert faults[0]["id"] == faults[-1]["id"]
    node.pulse.play(clips[1])  # audio flows again after recovery: the fault is detected
    assert node.sub.wait_for(lambda ms: any(m.topic.endswith("/event") and m.json()["type"] == "anomaly_start"
                                            for m in ms), 15), node.output()


def test_sighup_applies_a_new_threshold_and_rejects_a_broken_config(node_factory, clips):
    normal, _ = clips
    node = node_factory()
    node.write_config(threshold="0.05")  # far below any normal score: everything becomes an anomaly
    seen = len(node.messages)
    node.proc.send_signal(signal.SIGHUP)
    assert node.read_notify("RELOADING=1", 5, after=seen)
    assert node.read_notify("READY=1", 10, after=seen)
    assert "reload accepted" in node.output()
    node.pulse.play(normal)
    assert node.sub.wait_for(lambda ms: any(m.topic.endswith("/event") and m.json()["type"] == "anomaly_start"
                                            and m.json()["threshold"] == 0.05 for m in ms), 15), node.output()
    pid = node.proc.pid
    node.config.write_text(node.config.read_text().replace("threshold: 0.05", "threshold: -1"))
    node.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "reload rejected" not in node.output() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "reload rejected" in node.output() and "monitors[0].threshold" in node.output()
    assert node.proc.poll() is None and node.proc.pid == pid
    rejected_at = time.perf_counter()
    # the old settings keep running: telemetry after the rejection still reports the 0.05 threshold,
    # and the monitor was not restarted
    assert node.sub.wait_for(lambda ms: any(m.topic.endswith("fan-1/telemetry") and m.at > rejected_at
                                            and m.json()["threshold"] == 0.05 for m in ms), 5), node.output()
    assert node.output().count('"monitor started"') == 2  # the start, and the accepted reload
    assert node.proc.poll() is None


def test_bad_config_fails_fast_with_one_line(tmp_path, pulse_server):
    config = tmp_path / "bad.yaml"
    config.write_text(f"node: n\naudio:\n  device: no-such-microphone\nmonitors:\n  - name: a\n    model: {BUNDLE}\n")
    env = {**os.environ, **pulse_server.env}
    proc = subprocess.run([sys.executable, "-m", "edge_monitor", "run", "--config", str(config)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "edge-monitor: error: no input device matches 'no-such-microphone'" in proc.stderr


@pytest.mark.parametrize("node_factory", [2], indirect=True)
def test_one_stream_feeds_two_monitors_and_reload_restarts_only_the_changed_one(node_factory, tmp_path):
    monitors = (f"  - name: fan-a\n    model: {BUNDLE}\n    channel: 0\n"
                f"  - name: fan-b\n    model: {BUNDLE}\n    channel: 1\n")
    node = node_factory(monitors=monitors)
    rng = np.random.default_rng(5)
    stereo = np.stack([synth_clip("fan", 0, 12.0, 16000, rng=rng),
                       synth_clip("fan", 0, 12.0, 16000, rng=rng, fault="bearing", severity=0.5)], axis=1)
    wav = tmp_path / "stereo.wav"
    write_wav(wav, stereo, 16000)
    node.pulse.play(wav)
    assert node.sub.wait_for(lambda ms: any(m.topic.endswith("fan-b/event") and m.json()["type"] == "anomaly_start"
                                            for m in ms), 10), node.output()
    assert [e["monitor"] for e in node.events_of("anomaly_start")] == ["fan-b"]  # channel 0 is the normal machine
    node.write_config(monitors=monitors.replace("channel: 0\n", "channel: 0\n    threshold: 0.9\n"))
    node.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "reload accepted" not in node.output() and time.monotonic() < deadline:
        time.sleep(0.2)
    accepted = [json.loads(line) for line in node.output().splitlines()
                if line.startswith("{") and "reload accepted" in line]
    assert accepted and accepted[0]["kept"] == ["fan-b"] and accepted[0]["restarted"] == ["fan-a"], node.output()


def daemon_in_process(tmp_path, monkeypatch, pulse_server):
    """A Daemon in this process with one monitor ``a`` on the PulseAudio device, started as ``run`` starts it
    (without the main loop, so a test can drive supervision, the watchdog decision and reloads itself)."""
    from edge_monitor.node import mic
    from edge_monitor.node.bundles import open_bundles
    from edge_monitor.node.config import load
    from edge_monitor.node.daemon import Daemon, plan

    pulse_server.apply(monkeypatch)
    assert mic.rescan_devices()
    config = tmp_path / "c.yaml"
    config.write_text(f"node: n\naudio:\n  device: pulse\nmonitors:\n  - name: a\n    model: {BUNDLE}\n")
    daemon = Daemon(config, load(config))
    daemon.bundles = open_bundles(daemon.settings)
    daemon.groups = plan(daemon.settings, daemon.bundles)
    monitors = daemon._build_monitors(daemon.settings, daemon.bundles, daemon.groups, {"a"})
    daemon._start_publisher()
    try:
        for key, group in daemon.groups.items():
            daemon._start_group(key, group, monitors)
    except BaseException:
        daemon._shutdown("test")
        raise
    return daemon, config


def test_watchdog_pings_only_while_every_monitor_processes(tmp_path, monkeypatch, pulse_server):
    """In-process, real parts: a Daemon's monitor on the PulseAudio device, and its watchdog decision
    while audio flows, while it has stalled (the audio server frozen with SIGSTOP), while the device
    is known lost, and after the processing thread died."""
    from edge_monitor.node.daemon import STALL_SECONDS

    daemon, _config = daemon_in_process(tmp_path, monkeypatch, pulse_server)
    try:
        daemon._wait_for_audio()
        time.sleep(1.0)
        assert daemon.healthy()  # audio flows and is processed
        runner = daemon.runners["a"]
        pulse_server.proc.send_signal(signal.SIGSTOP)  # the stream stalls; nobody has declared it lost
        try:
            time.sleep(STALL_SECONDS + 1.5)
            assert not daemon.healthy()
            runner.device(False, "device 'pulse' stopped delivering audio")  # what the supervisor would say
            assert daemon.healthy()  # a known lost device is being retried: keep running
        finally:
            pulse_server.proc.send_signal(signal.SIGCONT)
        runner.device(True, "back")
        deadline = time.monotonic() + 20
        while not daemon.healthy() and time.monotonic() < deadline:
            daemon._supervise()  # as the main loop does: reopens the stream if it broke meanwhile
            time.sleep(0.5)
        assert daemon.healthy()  # audio is processed again
        runner.stop("shutdown")  # a dead processing thread
        assert not daemon.healthy()
    finally:
        daemon._shutdown("test")



def started_lines(node: Node) -> list[dict]:
    return [json.loads(line) for line in node.output().splitlines()
            if line.startswith("{") and '"monitor started"' in line]


def test_the_daemons_resampling_branch_a_48khz_device_and_a_16khz_model(tmp_path, clips):
    """The audio server at its default rate (48 kHz), the daemon told to capture at 48 kHz: the one
    streaming resampler of the loop brings the audio to the model's 16 kHz, and a fault is detected.
    (Normal sound may alarm on this chain: the round trip cuts the top of the band — the capture-chain
    finding — so the assertions are on the chain and on the fault, not on quiet during normal sound.)"""
    pulse = PulseServer(tmp_path / "pulse", rate=48000, channels=1).start()
    broker = Broker(tmp_path / "broker").start()
    node = Node(tmp_path, pulse, broker, audio="  sample_rate: 48000\n")
    try:
        assert node.read_notify("READY=1", 30), node.output()
        started = started_lines(node)
        assert started and started[0]["capture_rate"] == 48000 and started[0]["model_rate"] == 16000, node.output()
        node.pulse.play(clips[1])
        assert node.sub.wait_for(lambda ms: any(m.topic.endswith("/event") and m.json()["type"] == "anomaly_start"
                                                for m in ms), 20), node.output()
        tele = [m.json() for m in node.sub.messages if m.topic.endswith("fan-1/telemetry")]
        assert tele and max(t["decisions"] for t in tele) > 0
    finally:
        node.stop()
        broker.stop()
        pulse.kill()


def test_a_reload_with_a_broken_bundle_is_rejected_and_the_old_set_keeps_running(node_factory, tmp_path):
    """Defect 2 of the one-loop issue: a bundle whose decision threshold lost its value killed the daemon on
    SIGHUP (the new Monitor was built after the old runners had stopped). Now everything new is built
    first; the failure is one ``reload rejected`` line and the old monitor never stopped."""
    import shutil

    broken = tmp_path / "broken-bundle"
    shutil.copytree(BUNDLE, broken)
    manifest = json.loads((broken / "model.json").read_text())
    del manifest["decision"]["thresholds"][0]["value"]
    (broken / "model.json").write_text(json.dumps(manifest))
    node = node_factory()
    node.write_config(monitors=f"  - name: fan-1\n    model: {broken}\n")
    node.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "reload rejected" not in node.output() and time.monotonic() < deadline:
        time.sleep(0.2)
    rejected = [json.loads(line) for line in node.output().splitlines()
                if line.startswith("{") and "reload rejected" in line]
    assert rejected and "decision.thresholds[0].value" in rejected[0]["error"], node.output()
    assert "\n" not in rejected[0]["error"] and "Traceback" not in node.output()
    assert node.proc.poll() is None
    assert len(started_lines(node)) == 1  # the old monitor was never stopped or restarted
    after = time.perf_counter()
    assert node.sub.wait_for(lambda ms: any(m.topic.endswith("fan-1/telemetry") and m.at > after for m in ms), 5)
    assert node.read_notify("WATCHDOG=1", 5, after=len(node.messages))


def test_a_reload_while_the_microphone_is_lost_keeps_the_sensor_fault(node_factory):
    """Issue 15, item 5: a reload while the device is lost restarted the changed monitor without telling it;
    its state went ``unknown`` and, 5 s later, the watchdog pings stopped (a restart loop under systemd).
    The restarted monitor starts in the known state: sensor fault, and the pings go on."""
    node = node_factory()
    node.pulse.unload_source()
    assert node.sub.wait_for(lambda ms: any(m.topic.endswith("fan-1/state") and m.json()["state"] == "sensor_fault"
                                            for m in ms), 15), node.output()
    node.write_config(threshold="0.9")
    mark = len(node.sub.messages)
    node.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "reload accepted" not in node.output() and time.monotonic() < deadline:
        time.sleep(0.2)
    restarted = started_lines(node)
    assert len(restarted) == 2 and restarted[1]["device_lost"] is True, node.output()
    time.sleep(6.5)  # longer than the watchdog's stall limit (5 s)
    states = [m.json()["state"] for m in node.sub.messages[mark:] if m.topic.endswith("fan-1/state")]
    assert states and states[-1] == "sensor_fault", states
    notes = len(node.messages)
    assert node.read_notify("WATCHDOG=1", 3, after=notes), "the watchdog pings stopped while the device is lost"
    assert "monitors stalled" not in node.output()
    node.pulse.reload_source()
    assert node.sub.wait_for(lambda ms: any(m.topic.endswith("/event") and m.json()["type"] == "health"
                                            and m.json()["health"]["condition"] == "sensor_fault"
                                            and m.json()["health"]["status"] == "ok" for m in ms[mark:]), 40), \
        node.output()


def test_a_restarted_monitor_gets_a_ring_of_its_own(tmp_path, monkeypatch, pulse_server):
    """Defect 2 (second half): a new runner was given the ring of an old thread that might not have ended
    within its join timeout: two readers on a single-consumer ring. Now the capture feeds a new ring."""
    daemon, config = daemon_in_process(tmp_path, monkeypatch, pulse_server)
    try:
        old_runner = daemon.runners["a"]
        old_ring = old_runner.ring
        capture = next(iter(daemon.captures.values()))
        config.write_text(config.read_text() + "    threshold: 0.9\n")
        daemon._do_reload()
        new_runner = daemon.runners["a"]
        assert new_runner is not old_runner and not old_runner.alive
        assert new_runner.ring is not old_ring
        assert [ring for _ch, ring in capture._taps] == [new_runner.ring]
        assert new_runner.monitor.threshold.value == 0.9
    finally:
        daemon._shutdown("test")


def test_a_machine_switched_off_is_state_stopped_not_an_anomaly(node_factory, tmp_path):
    from test_machine import (  # running 12 s, the fan switched off 15 s, running 12 s
        RUN1,
        STOP,
        on_off_on,
    )

    wav = tmp_path / "on_off_on.wav"
    write_wav(wav, on_off_on(), 16000)
    node = node_factory()
    node.pulse.play(wav, wait=False)
    assert node.sub.wait_for(lambda ms: any(m.topic.endswith("fan-1/state") and m.json()["state"] == "stopped"
                                            for m in ms), RUN1 + STOP + 15), node.output()
    assert node.sub.wait_for(lambda ms: any(m.topic.endswith("/event") and m.json()["type"] == "machine_running"
                                            for m in ms), STOP + 25), node.output()
    stop, run = node.events_of("machine_stopped"), node.events_of("machine_running")
    assert len(stop) == len(run) == 1 and stop[0]["id"] == run[0]["id"]
    assert all(validate(e) == [] for e in stop + run)
    assert node.events_of("anomaly_start") == []
    # the null sink's digital zeros before and after the file are a dead input; the quiet fan is no fault
    assert {e["health"]["condition"] for e in node.events_of("health")} <= {"dead_input"}
    def states(ms) -> list[str]:
        return [m.json()["state"] for m in ms if m.topic.endswith("fan-1/state")]

    # running again: the state leaves "stopped" (normal; sensor_fault once the null sink's zeros last)
    assert node.sub.wait_for(lambda ms: states(ms)[states(ms).index("stopped") + 1:][:1] in (["normal"],
                                                                                             ["sensor_fault"]), 10), \
        states(node.sub.messages)
