"""Open a page in headless Chromium through the DevTools protocol and say what went wrong in it: console errors,
uncaught exceptions, failed loads and images that did not decode; plus a screenshot.

The protocol runs over ``--remote-debugging-pipe`` (file descriptors 3 and 4, NUL-terminated JSON messages), so no
port, no websocket package and no race with other browsers on the machine.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

#: images that failed to load or decode (a broken data URI loads "complete" with zero natural size)
BROKEN_IMAGES_JS = """JSON.stringify(Array.from(document.images)
  .filter(i => !i.complete || i.naturalWidth === 0)
  .map(i => i.getAttribute('alt') || (i.getAttribute('src') || '').slice(0, 60)))"""


class BrowserError(RuntimeError):
    pass


@dataclass
class PageCheck:
    """What the browser saw. ``ok`` when nothing went wrong."""

    console_errors: list[str] = field(default_factory=list)
    broken_images: list[str] = field(default_factory=list)
    images: int = 0
    screenshot: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.console_errors and not self.broken_images


def find_browser() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


class _Pipe:
    """DevTools protocol over the two pipes of a browser started with --remote-debugging-pipe."""

    def __init__(self, write_fd: int, read_fd: int) -> None:
        self.write_fd, self.read_fd = write_fd, read_fd
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout_s: float = 30.0) -> dict[str, Any]:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.write_fd, json.dumps(message).encode() + b"\0")
        wanted = self.next_id
        deadline = time.monotonic() + timeout_s
        while True:
            for reply in self._read(deadline):
                if reply.get("id") == wanted:
                    if "error" in reply:
                        raise BrowserError(f"{method}: {reply['error'].get('message')}")
                    return reply.get("result", {})
                if "method" in reply:
                    self.events.append(reply)

    def wait_for(self, method: str, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not any(e["method"] == method for e in self.events):
            try:
                self.events.extend(r for r in self._read(deadline) if "method" in r)
            except TimeoutError:
                return False
        return True

    def drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        try:
            while True:
                self.events.extend(r for r in self._read(deadline) if "method" in r)
        except TimeoutError:
            pass

    def _read(self, deadline: float) -> list[dict[str, Any]]:
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            ready, _, _ = select.select([self.read_fd], [], [], left)
            if not ready:
                raise TimeoutError
            chunk = os.read(self.read_fd, 1 << 20)
            if not chunk:
                raise BrowserError("the browser closed the DevTools pipe")
            self.buffer += chunk
        *messages, self.buffer = self.buffer.split(b"\0")
        return [json.loads(m) for m in messages if m]


def _console_text(event: dict[str, Any]) -> str | None:
    method, params = event["method"], event.get("params", {})
    if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert", "warning"):
        args = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
        return f"console.{params['type']}: {args}"
    if method == "Runtime.exceptionThrown":
        details = params.get("exceptionDetails", {})
        return f"exception: {details.get('exception', {}).get('description') or details.get('text')}"
    if method == "Log.entryAdded" and params.get("entry", {}).get("level") in ("error", "warning"):
        entry = params["entry"]
        return f"{entry.get('source')}: {entry.get('text')} {entry.get('url') or ''}".strip()
    return None


def check_page(page: Path, screenshot: Path | None = None, *, browser: str | None = None, width: int = 1280,
               settle_s: float = 0.5, timeout_s: float = 60.0) -> PageCheck:
    """Load ``page`` (a local HTML file) in headless Chromium; console errors and warnings, exceptions, failed
    loads, and images that did not decode are reported in the returned ``PageCheck``."""
    binary = browser or find_browser()
    if binary is None:
        raise BrowserError("no Chromium found (apt-get install chromium)")
    to_browser_r, to_browser_w = os.pipe()
    from_browser_r, from_browser_w = os.pipe()

    def wire_fds() -> None:  # the child's fd 3 reads our commands, its fd 4 writes the replies
        read_end, write_end = os.dup(to_browser_r), os.dup(from_browser_w)  # safe even if they are 3 or 4
        os.dup2(read_end, 3)
        os.dup2(write_end, 4)

    with tempfile.TemporaryDirectory(prefix="fraqat-chromium-") as profile:
        args = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--mute-audio",
                "--remote-debugging-pipe", f"--user-data-dir={profile}", "about:blank"]
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                preexec_fn=wire_fds, pass_fds=(3, 4))
        os.close(to_browser_r)
        os.close(from_browser_w)
        pipe = _Pipe(to_browser_w, from_browser_r)
        try:
            return _inspect(pipe, Path(page), screenshot, width, settle_s, timeout_s)
        finally:
            try:
                pipe.send("Browser.close", timeout_s=5)
            except (BrowserError, TimeoutError, OSError):
                pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            os.close(to_browser_w)
            os.close(from_browser_r)


def _inspect(pipe: _Pipe, page: Path, screenshot: Path | None, width: int, settle_s: float,
             timeout_s: float) -> PageCheck:
    target = pipe.send("Target.createTarget", {"url": "about:blank"}, timeout_s=timeout_s)["targetId"]
    session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    for domain in ("Runtime", "Log", "Page"):
        pipe.send(f"{domain}.enable", session=session)
    pipe.send("Emulation.setDeviceMetricsOverride",
              {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False}, session=session)
    pipe.send("Page.navigate", {"url": page.resolve().as_uri()}, session=session)
    if not pipe.wait_for("Page.loadEventFired", timeout_s):
        raise BrowserError(f"{page} did not finish loading in {timeout_s:.0f} s")
    pipe.drain(settle_s)
    check = PageCheck()
    broken = pipe.send("Runtime.evaluate", {"expression": BROKEN_IMAGES_JS, "returnByValue": True}, session=session)
    check.broken_images = json.loads(broken["result"]["value"])
    count = pipe.send("Runtime.evaluate", {"expression": "document.images.length", "returnByValue": True},
                      session=session)
    check.images = int(count["result"]["value"])
    if screenshot is not None:
        shot = pipe.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True},
                         session=session, timeout_s=timeout_s)
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        check.screenshot = screenshot
    pipe.drain(0.1)
    check.console_errors = [text for e in pipe.events if (text := _console_text(e))]
    return check
