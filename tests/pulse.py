"""A private PulseAudio server for the microphone tests: a null sink to play into, its monitor to record.

Not a conftest: ``tests/test_mic.py`` (and later end-to-end tests of the daemon) import it::

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from pulse import PulseServer, pulse_server  # noqa: E402   (pulse_server is a pytest fixture)

What it sets up, all under one temporary directory (nothing in ``$HOME``, no D-Bus, no autospawn):

- ``pulseaudio -n -F <root>/default.pa --daemonize=no --exit-idle-time=-1 --use-pid-file=false
  --system=false --realtime=false --high-priority=false --disable-shm=true`` with ``HOME``,
  ``XDG_RUNTIME_DIR``, ``PULSE_RUNTIME_PATH``, ``PULSE_STATE_PATH`` and ``PULSE_COOKIE`` in ``<root>``.
  As root it prints "This program is not intended to be run as root" and some cookie/D-Bus warnings
  and runs anyway (``--system`` is NOT wanted: a system instance refuses module loading by clients).
- The script loads ``module-native-protocol-unix socket=<root>/run/native auth-anonymous=1`` (no
  cookie needed by clients) and ``module-null-sink sink_name=edge_test`` (48 kHz stereo), and makes
  ``edge_test`` / ``edge_test.monitor`` the default sink / source.
- ``env`` (pass it to a subprocess, or :meth:`PulseServer.apply` it to ``os.environ``):
  ``PULSE_SERVER=unix:<socket>``, ``PULSE_SOURCE=edge_test.monitor``, ``PULSE_SINK=edge_test``,
  ``PULSE_CLIENTCONFIG`` (a client.conf with ``autospawn = no``: a client that loses the server must
  not start a default one), plus the runtime paths above.

How the microphone is reached: PortAudio's ALSA host API lists the ALSA PCM ``pulse`` (and ``default``,
which the ``pulse`` hook points at the server when one answers). Both come from the system's ALSA
configuration of libasound2-plugins (``/etc/alsa/conf.d/50-pulseaudio.conf`` and ``99-pulse.conf``);
no ALSA config of our own is needed. The ALSA pulse plugin connects (a new libpulse context, reading
``PULSE_SERVER``/``PULSE_SOURCE`` from the environment) every time a stream is opened, and records from
``PULSE_SOURCE`` = the null sink's monitor. PortAudio enumerates devices only at ``Pa_Initialize``:
a process that imported sounddevice before the environment was set must re-initialise PortAudio
(``edge_monitor.node.mic.rescan_devices()``) to see the ``pulse`` device.

Losing the microphone (what makes PortAudio's stream stop): both :meth:`kill` (SIGKILL the server)
and :meth:`unload_source` (unload the null-sink module) make the ALSA plugin's poll fail; PortAudio's
callback thread then ends (``Pa_IsStreamActive`` → 0, the finished callback runs). ``pactl
suspend-source edge_test.monitor`` does NOT work (a monitor source cannot be suspended on its own:
"Invalid argument"). :meth:`start` after :meth:`kill` (same socket and script) and :meth:`reload_source`
after :meth:`unload_source` bring it back.

The null sink renders in chunks of its latency (up to 2 s while nothing plays), so the FIRST callback
of a freshly opened capture stream may come up to ~2 s late; afterwards blocks arrive on time.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

SINK = "edge_test"
SOURCE = f"{SINK}.monitor"


def have_pulseaudio() -> bool:
    return all(shutil.which(tool) for tool in ("pulseaudio", "pactl", "paplay"))


class PulseServer:
    """One private ``pulseaudio`` under ``root``; :meth:`stop` / :meth:`kill` and :meth:`start` keep the socket."""

    def __init__(self, root: Path, *, rate: int = 48000, channels: int = 2) -> None:
        self.root = Path(root)
        self.rate = rate
        self.channels = channels
        self.run_dir = self.root / "run"
        self.socket = self.run_dir / "native"
        self.script = self.root / "default.pa"
        self.logfile = self.root / "pulseaudio.log"
        self.proc: subprocess.Popen | None = None
        self._sink_module: str | None = None
        client_conf = self.root / "client.conf"
        self.env = dict(os.environ)
        self.env.update({
            "PULSE_SERVER": f"unix:{self.socket}",
            "PULSE_SOURCE": SOURCE,
            "PULSE_SINK": SINK,
            "PULSE_CLIENTCONFIG": str(client_conf),
            "PULSE_RUNTIME_PATH": str(self.run_dir),
            "PULSE_STATE_PATH": str(self.root / "state"),
            "PULSE_COOKIE": str(self.root / "cookie"),
            "XDG_RUNTIME_DIR": str(self.run_dir),
        })
        self.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        (self.root / "state").mkdir(exist_ok=True)
        client_conf.write_text("autospawn = no\n")
        self.script.write_text(
            f"load-module module-native-protocol-unix socket={self.socket} auth-anonymous=1\n"
            f"{self._sink_line()}\n"
            f"set-default-sink {SINK}\n"
            f"set-default-source {SOURCE}\n")

    def _sink_line(self) -> str:
        return (f"load-module module-null-sink sink_name={SINK} rate={self.rate} channels={self.channels} "
                f"sink_properties=device.description=edge_test")

    # -- life cycle -------------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> PulseServer:
        """Start the server and wait until ``pactl info`` answers on its socket."""
        if self.running:
            return self
        env = dict(self.env, HOME=str(self.root))  # the server's own files stay in root
        with open(self.logfile, "ab") as log:
            self.proc = subprocess.Popen(
                ["pulseaudio", "-n", "-F", str(self.script), "--daemonize=no", "--exit-idle-time=-1",
                 "--use-pid-file=false", "--system=false", "--realtime=false", "--high-priority=false",
                 "--disable-shm=true", "--log-target=stderr"],
                env=env, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pulseaudio exited ({self.proc.returncode}): {self.log()}")
            if self.pactl("info", check=False).returncode == 0:
                self._sink_module = None
                return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"pulseaudio did not answer on {self.socket}: {self.log()}")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM and wait (clients see the connection close)."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: the audio server vanishes at once, as when it crashes."""
        self._end(signal.SIGKILL)

    def _end(self, sig: int) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log(self) -> str:
        return self.logfile.read_text(errors="replace")[-4000:] if self.logfile.exists() else ""

    # -- control ----------------------------------------------------------------------------------

    def pactl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(["pactl", *args], env=self.env, capture_output=True, text=True, timeout=10,
                                check=False)
        if check and result.returncode != 0:
            raise RuntimeError(f"pactl {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def sink_module(self) -> str | None:
        """Index of the loaded null-sink module, or None."""
        for line in self.pactl("list", "short", "modules").stdout.splitlines():
            fields = line.split("\t")
            if len(fields) >= 3 and fields[1] == "module-null-sink" and f"sink_name={SINK}" in fields[2]:
                return fields[0]
        return None

    def unload_source(self) -> None:
        """Unload the null sink (and with it ``edge_test.monitor``): open capture streams fail."""
        module = self.sink_module()
        if module is None:
            raise RuntimeError("the edge_test null sink is not loaded")
        self.pactl("unload-module", module)

    def reload_source(self) -> None:
        """Load the null sink again (same name) and make it the default sink and source."""
        self.pactl("load-module", "module-null-sink", f"sink_name={SINK}", f"rate={self.rate}",
                   f"channels={self.channels}", "sink_properties=device.description=edge_test")
        self.pactl("set-default-sink", SINK)
        self.pactl("set-default-source", SOURCE)

    def play(self, wav_path: Path | str, wait: bool = True) -> subprocess.Popen:
        """``paplay --device=edge_test <wav>``; with ``wait`` returns after playback ended (raises on failure)."""
        proc = subprocess.Popen(["paplay", f"--device={SINK}", str(wav_path)], env=self.env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if wait:
            _, err = proc.communicate(timeout=60)
            if proc.returncode != 0:
                raise RuntimeError(f"paplay {wav_path} failed ({proc.returncode}): {err.decode(errors='replace')}")
        return proc

    # -- this process -----------------------------------------------------------------------------

    def apply(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Put the client variables into ``os.environ`` (undone at teardown by ``monkeypatch``).

        PortAudio in this process still needs a re-initialisation to list ``pulse``
        (``edge_monitor.node.mic.rescan_devices()``).
        """
        for key in ("PULSE_SERVER", "PULSE_SOURCE", "PULSE_SINK", "PULSE_CLIENTCONFIG", "PULSE_RUNTIME_PATH",
                    "PULSE_STATE_PATH", "PULSE_COOKIE", "XDG_RUNTIME_DIR"):
            monkeypatch.setenv(key, self.env[key])


@pytest.fixture
def pulse_server(tmp_path, monkeypatch):
    """A running private server whose client variables are in ``os.environ`` for this test; killed after."""
    if not have_pulseaudio():
        pytest.skip("pulseaudio is not installed (apt-get install pulseaudio pulseaudio-utils libasound2-plugins)")
    server = PulseServer(tmp_path / "pulse").start()
    server.apply(monkeypatch)
    yield server
    server.kill()
