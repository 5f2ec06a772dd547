"""A private adb server for the test session: the real adb from the adbutils wheel, on its own port.

adbutils reads ``ANDROID_ADB_SERVER_PORT`` when a client is created (``adbutils.adb`` is created at import
time), and starts a server itself through ``adb start-server`` when none answers. So the session sets the
variable (and ``ADBUTILS_ADB_PATH``, so any server adbutils starts is the wheel's adb), re-points the
module-level ``adbutils.adb`` client at the private port, and starts the server itself with USB, mDNS and
emulator scanning off and ``HOME`` in a temporary folder (its keys never touch ``~/.android``).
``kill()`` stops that server and restores everything.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import adbutils

SERVER_ENV = {"ADB_USB": "0", "ADB_MDNS": "0", "ADB_MDNS_AUTO_CONNECT": "0", "ADB_EMU": "0"}


def wheel_adb() -> str:
    return str(Path(adbutils.__file__).parent / "binaries" / "adb")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class AdbServer:
    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.adb = wheel_adb()
        self.client = adbutils.AdbClient(host="127.0.0.1", port=self.port)
        self._saved_env: dict[str, str | None] = {}
        self._saved_client_port: int | None = None

    def env(self) -> dict[str, str]:
        home = self.workdir / "home"
        home.mkdir(parents=True, exist_ok=True)
        return {**os.environ, **SERVER_ENV, "ANDROID_ADB_SERVER_PORT": str(self.port), "HOME": str(home),
                "TMPDIR": str(self.workdir), "ADBUTILS_ADB_PATH": self.adb}

    def run(self, *args: str, timeout: float = 30.0, check: bool = False) -> subprocess.CompletedProcess[str]:
        """The adb command line against this server (``adb -P PORT ...``)."""
        return subprocess.run([self.adb, "-P", str(self.port), *args], env=self.env(), capture_output=True,
                              text=True, timeout=timeout, check=check, stdin=subprocess.DEVNULL)

    def start(self) -> AdbServer:
        self.run("start-server", check=True)
        deadline = time.monotonic() + 20
        while True:
            try:
                self.client.server_version()
                break
            except (adbutils.AdbError, OSError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        for key, value in (("ANDROID_ADB_SERVER_PORT", str(self.port)), ("ADBUTILS_ADB_PATH", self.adb)):
            self._saved_env[key] = os.environ.get(key)
            os.environ[key] = value
        # adbutils.adb was created at import time with the port of that moment; point it here for the session
        self._saved_client_port = adbutils.adb.port
        adbutils.adb._BaseClient__port = self.port  # type: ignore[attr-defined]
        return self

    def kill(self) -> None:
        try:
            self.run("kill-server", timeout=15)
        except (subprocess.SubprocessError, OSError):
            pass
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if self._saved_client_port is not None:
            adbutils.adb._BaseClient__port = self._saved_client_port  # type: ignore[attr-defined]

    # ---- devices
    def state(self, serial: str) -> str | None:
        return next((info.state for info in self.client.list() if info.serial == serial), None)

    def wait_state(self, serial: str, state: str | None, timeout: float = 10.0) -> None:
        """Poll ``adb devices`` until ``serial`` shows ``state`` (None: until it is gone)."""
        deadline = time.monotonic() + timeout
        while (current := self.state(serial)) != state:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{serial} is {current!r}, not {state!r}, after {timeout} s")
            time.sleep(0.02)

    def connect(self, serial: str, state: str = "device", timeout: float = 10.0) -> str:
        message = self.client.connect(serial, timeout=timeout)
        self.wait_state(serial, state, timeout)
        return message

    def disconnect(self, serial: str) -> None:
        self.client.disconnect(serial)
