"""``edge-monitor check [CONFIG]``: validate a node config and every bundle it names; print what would run.

Exit 0 when the daemon could start with this config, 2 (one error line) when it could not.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from edge_monitor.core.detector import decision_threshold
from edge_monitor.core.errors import UserError
from edge_monitor.core.machine import limits
from edge_monitor.node.bundles import open_bundles, replay_scorer, scoring_line
from edge_monitor.node.calibration import node_calibration
from edge_monitor.node.config import load
from edge_monitor.node.sinks import NodeSink

DEFAULT_CONFIGS = (Path("/etc/edge-monitor/config.yaml"), Path("config.yaml"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", type=Path,
                        help="config file (default: /etc/edge-monitor/config.yaml, else ./config.yaml)")


def default_config() -> Path:
    for path in DEFAULT_CONFIGS:
        if path.is_file():
            return path
    raise UserError("no config given and neither /etc/edge-monitor/config.yaml nor ./config.yaml exists; "
                    "pass the config file")


def run(args: argparse.Namespace) -> int:
    path = args.config or default_config()
    settings = load(path)
    bundles = open_bundles(settings)
    print(f"config {path}: ok")
    print(f"node {settings.node}: {len(settings.monitors)} monitor(s)")
    audio = settings.audio
    print(f"audio: device {audio.device if audio.device is not None else 'default'}, rate "
          f"{audio.sample_rate or 'model rate'}, blocks {audio.block_seconds * 1000:.0f} ms, ring {audio.ring_seconds:g} s")
    for m in settings.monitors:
        b = bundles[m.name]
        d = m.decision
        calibration = node_calibration(settings.state_dir, m, b.sha256)
        threshold = decision_threshold(b.manifest, d.window_seconds, m.threshold, calibration.threshold)
        device = m.device if m.device is not None else (audio.device if audio.device is not None else "default")
        print(f"monitor {m.name}: device {device} channel {m.channel} → {b.name} "
              f"({b.machine_type} {b.machine_id}, {b.params.sample_rate} Hz, sha256 {b.sha256[:12]}…) at {b.path}")
        print(f"  decisions: {d.window_seconds:g}-s mean every {d.step_seconds:g} s, threshold {threshold.value:.4f} "
              f"({threshold.origin}), {d.k_of_n[0]} of {d.k_of_n[1]} above to start, end below "
              f"{d.hysteresis:g}x, min {d.min_duration_seconds:g} s, cooldown {d.cooldown_seconds:g} s")
        level = b.manifest.level
        if not m.machine.enabled:
            print("  machine state: off (machine.enabled: false); a level drop is the health fault 'silence'")
        elif level is None:
            print("  machine state: off, the bundle records no level distribution (made before it; retrain to "
                  "have it); a level drop is the health fault 'silence'")
        else:
            stop, resume = limits(level, m.machine, float(np.mean(b.mean)), m.health.low_db)
            print(f"  machine state: stopped below {stop:.1f} dB for {m.machine.hold_seconds:g} s, running above "
                  f"{resume:.1f} dB (training level p1 {level.p1:.1f}, p50 {level.p50:.1f} dB)")
        source = ("config" if m.threshold is not None else
                  "node calibration" if calibration.threshold is not None else "bundle")
        print(f"  threshold from: {source}" + (f" (a node calibration exists: {calibration.path})"
                                               if source == "config" and calibration.threshold is not None else ""))
        if calibration.refused:
            print(f"  warning: {calibration.refused}")
        print(f"  {scoring_line(replay_scorer(b, m.name))} in replay and calibrate --from; live: each window "
              "as it completes")
    mq = settings.mqtt
    if mq.enabled:
        from edge_monitor.node.mqtt.connection import read_password, ssl_context

        read_password(mq)  # what run reads at start: a missing, huge or unreadable password file fails here
        if mq.tls is not None:
            ssl_context(mq.tls)
        tls = "TLS" if mq.tls is not None else "no TLS"
        print(f"mqtt: {mq.host}:{mq.port} MQTT {mq.protocol}, {tls}, topics {mq.prefix}/{settings.node}/…, "
              f"outbox {mq.outbox.path} (max {mq.outbox.max_messages} messages)")
        parent = Path(mq.outbox.path).parent
        if not parent.is_dir():
            print(f"  note: {parent} does not exist yet (systemd's StateDirectory creates it for the service)")
        elif not os.access(parent, os.W_OK):
            print(f"  note: {parent} is not writable by this user (the service's user needs to write it)")
    else:
        print("mqtt: disabled (events go to the log and events_jsonl only)")
    http = settings.http
    if http.enabled:
        from edge_monitor.node.web.server import read_token

        if http.token_file:
            read_token(http.token_file)  # missing, empty, short or readable by others: exit 2 here, not at run
        print(f"http: the node's page on http://{http.bind}:{http.port}/ "
              + ("(token from " + http.token_file + ")" if http.token_file else "(loopback only, no token)"))
    else:
        print("http: off (http.enabled: false)")
    if settings.events_jsonl:
        NodeSink(jsonl=settings.events_jsonl).close()  # what run opens: a folder or an unwritable path fails here
        print(f"events also appended to {settings.events_jsonl}")
    return 0
