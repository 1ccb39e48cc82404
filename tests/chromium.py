"""A minimal driver of Debian's headless chromium over the DevTools protocol — stdlib only.

`chromium --headless=new --remote-debugging-pipe` speaks CDP on fds 3 (commands in) and 4 (answers out),
one JSON message per NUL-terminated chunk. We attach to the first page target with flatten=True so every
command carries its sessionId; events are collected while waiting for answers.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Self

BINARY = shutil.which("chromium") or shutil.which("chromium-browser")


class CdpError(RuntimeError):
    pass


class Chromium:
    """One headless browser with one page. Use as a context manager."""

    def __init__(self, width: int = 1000, height: int = 800, timeout: float = 30.0) -> None:
        if BINARY is None:
            raise FileNotFoundError("chromium is not installed")
        self.timeout = timeout
        self._profile = tempfile.mkdtemp(prefix="em-chromium-")
        cmd_r, cmd_w = os.pipe()     # we write commands → chromium reads fd 3
        out_r, out_w = os.pipe()     # chromium writes fd 4 → we read answers
        args = [BINARY, "--headless=new", "--remote-debugging-pipe", f"--user-data-dir={self._profile}",
                f"--window-size={width},{height}", "--no-first-run", "--no-default-browser-check",
                "--disable-gpu", "--mute-audio", "--autoplay-policy=no-user-gesture-required", "about:blank"]
        if os.geteuid() == 0:
            args.insert(1, "--no-sandbox")   # chromium refuses to run as root with its sandbox
        # chromium wants the pipe on fds 3 and 4 exactly: a tiny python trampoline moves them there (dash
        # cannot redirect fds above 9, and preexec_fn is unsafe while the test's threads run)
        hop = ("import os, sys; r, w = int(sys.argv[1]), int(sys.argv[2]); os.dup2(r, 100); os.dup2(w, 101); "
               "os.dup2(100, 3); os.dup2(101, 4); [os.close(f) for f in {r, w, 100, 101} - {3, 4}]; "
               "os.set_inheritable(3, True); os.set_inheritable(4, True); os.execv(sys.argv[3], sys.argv[3:])")
        self._proc = subprocess.Popen(
            [sys.executable, "-c", hop, str(cmd_r), str(out_w), *args],
            pass_fds=(cmd_r, out_w), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(cmd_r)
        os.close(out_w)
        self._w, self._r = cmd_w, out_r
        self._buf = b""
        self._next_id = 0
        self.events: list[dict] = []
        self.session: str | None = None
        targets = self.call("Target.getTargets", session=False)["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self.session = self.call("Target.attachToTarget", {"targetId": page["targetId"], "flatten": True},
                                 session=False)["sessionId"]
        self.call("Page.enable")
        self.call("Runtime.enable")
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            if time.monotonic() > deadline:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._r, 1 << 16)
            if not chunk:
                raise CdpError("chromium closed the pipe")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, params: dict | None = None, session: bool = True) -> dict:
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            answer = self._read_message(deadline)
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise CdpError(f"{method}: {answer['error']}")
                return answer.get("result", {})
            if "method" in answer:
                self.events.append(answer)

    def navigate(self, url: str, wait: float = 15.0) -> None:
        """Go to url and wait for its load event."""
        self.events.clear()
        self.call("Page.navigate", {"url": url})
        self.wait_for("document.readyState === 'complete'", wait)

    def evaluate(self, expression: str, await_promise: bool = False) -> Any:
        """The JSON value of a JS expression in the page (exceptions raise CdpError)."""
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": await_promise})
        if "exceptionDetails" in result:
            raise CdpError(f"JS: {result['exceptionDetails'].get('exception', {}).get('description')}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 15.0, interval: float = 0.1) -> Any:
        """Evaluate expression until it is truthy; its value, or TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"not true within {timeout} s: {expression}")
            time.sleep(interval)

    def console_errors(self) -> list[str]:
        return [json.dumps(e["params"])[:300] for e in self.events
                if e["method"] == "Runtime.exceptionThrown"
                or (e["method"] == "Runtime.consoleAPICalled" and e["params"].get("type") == "error")]

    def screenshot(self, path: str | Path, height: int | None = None, scale: float = 1.0) -> int:
        """A PNG of the viewport (or of the page's top ``height`` px, scaled) written to path; its bytes."""
        params: dict[str, Any] = {"format": "png"}
        if height is not None:
            width = self.evaluate("document.documentElement.clientWidth")
            params.update(captureBeyondViewport=True, clip={"x": 0, "y": 0, "width": width, "height": height,
                                                             "scale": scale})
        data = base64.b64decode(self.call("Page.captureScreenshot", params)["data"])
        Path(path).write_bytes(data)
        return len(data)

    def close(self) -> None:
        try:
            self.call("Browser.close", session=False)
        except (CdpError, TimeoutError, OSError):
            pass
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        for fd in (self._w, self._r):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
