"""Real parts for the Sparkplug tests: an independent decoder (Eclipse Tahu's JavaScript ``sparkplug-payload``
from npm, run by Node.js) and a host that collects Sparkplug messages from a real broker.

The npm package is installed once into a cache folder (``$EDGE_MONITOR_CACHE``, default
``~/.cache/edge-monitor``) by :func:`codec_dir`: ``npm install --no-audit --no-fund --prefix <cache>/npm-sparkplug
sparkplug-payload@1.0.3``. Tests skip when ``node``/``npm`` are missing or the registry cannot be reached.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SPARKPLUG_PAYLOAD = "sparkplug-payload@1.0.3"


def cache_root() -> Path:
    return Path(os.environ.get("EDGE_MONITOR_CACHE", Path.home() / ".cache" / "edge-monitor"))


def npm_install(folder: Path, spec: str, timeout: float = 900) -> Path | None:
    """``npm install spec`` into ``folder`` once; None if npm or the registry is not there."""
    name = spec.rsplit("@", 1)[0]
    if (folder / "node_modules" / name / "package.json").exists():
        return folder
    if not (shutil.which("node") and shutil.which("npm")):
        return None
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--omit=dev", "--prefix", str(folder), spec],
                          capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        print(f"npm install {spec} failed:\n{proc.stderr[-2000:]}")
        return None
    return folder


class Codec:
    """The Tahu JS codec as a child process (one request per line)."""

    def __init__(self, folder: Path) -> None:
        env = {**os.environ, "NODE_PATH": str(folder / "node_modules")}
        self.proc = subprocess.Popen(["node", str(HERE / "sparkplug_codec.js")], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env, cwd=folder)
        self.lock = threading.Lock()

    def _ask(self, request: dict) -> dict:
        with self.lock:
            assert self.proc.stdin and self.proc.stdout
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            answer = json.loads(self.proc.stdout.readline())
        if "error" in answer:
            raise ValueError(answer["error"])
        return answer

    def decode(self, data: bytes) -> dict[str, Any]:
        return self._ask({"decode": base64.b64encode(data).decode()})["payload"]

    def encode(self, payload: dict) -> bytes:
        return base64.b64decode(self._ask({"encode": payload})["base64"])

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(5)


def metrics(payload: dict) -> dict[str, dict]:
    """A decoded payload's metrics by name."""
    return {m["name"]: m for m in payload.get("metrics", [])}
