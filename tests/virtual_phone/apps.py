"""Installed packages, the log buffer, and app processes whose code is a Python callable registered by a test.

The hook is ``app(proc: AppProcess, extras: dict[str, str]) -> None``, run in a background thread when
``am start -n <pkg>/<activity>`` reaches an installed package. ``proc`` is the app's process: its ``pid``
(what ``pidof`` prints while it runs), ``host_path()`` to reach device files, ``log()`` to write to logcat,
``should_stop()``/``wait()`` to notice ``am force-stop``, and ``set_memory()`` for ``dumpsys meminfo``.
Returning ends the process normally; an exception is a crash: a FATAL EXCEPTION block in logcat and the
process is gone. After a force-stop, ``log`` and ``host_path`` raise ``AppKilled`` so a killed app cannot
keep writing.
"""

from __future__ import annotations

import hashlib
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .phone import VirtualPhone

SYSTEM_SERVER_PID = 1523
AppFn = Callable[["AppProcess", dict[str, str]], None]


@dataclass
class Package:
    name: str
    version_name: str = "1.0"
    version_code: int = 1
    activities: tuple[str, ...] = (".BenchmarkActivity",)
    system: bool = False
    apk: bytes | None = None
    installed_at: float = field(default_factory=time.time)

    @property
    def code_path(self) -> str:
        tag = hashlib.sha256(self.name.encode()).hexdigest()
        return f"/data/app/~~{tag[:22]}==/{self.name}-{tag[22:44]}=="

    def activity_class(self, activity: str) -> str | None:
        """The activity's full class name if the package declares it."""
        full = self.name + activity if activity.startswith(".") else activity
        declared = {self.name + a if a.startswith(".") else a for a in self.activities}
        return full if full in declared else None


@dataclass
class LogRecord:
    time: float
    pid: int
    tid: int
    level: str
    tag: str
    message: str


class Logcat:
    """The main log buffer; ``logcat`` reads it, apps and the system write to it."""

    def __init__(self) -> None:
        self.records: list[LogRecord] = []
        self.cond = threading.Condition()

    def add(self, pid: int, level: str, tag: str, message: str, tid: int | None = None) -> None:
        with self.cond:
            for line in (message.splitlines() or [""]):
                self.records.append(LogRecord(time.time(), pid, tid or pid, level, tag, line))
            self.cond.notify_all()

    def clear(self) -> None:
        with self.cond:
            self.records.clear()

    def text(self, pid: int | None = None) -> str:
        from .logcat import format_record

        with self.cond:
            return "".join(format_record(r, "threadtime") for r in self.records if pid in (None, r.pid))


class AppKilled(Exception):
    """Raised inside an app whose process was force-stopped."""


class AppProcess:
    """A running app: the first argument of the hook."""

    def __init__(self, phone: VirtualPhone, package: Package, activity: str, extras: dict[str, str],
                 fn: AppFn | None) -> None:
        self.phone = phone
        self.package = package.name
        self.activity = activity
        self.extras = dict(extras)
        self.pid = phone.new_pid()
        self.fn = fn
        self.alive = True
        self.crash: BaseException | None = None
        self.stop_requested = threading.Event()
        self.finished = threading.Event()
        self.started_at = time.time()
        self.memory = {"java_heap": 9_812, "native_heap": 48_240, "code": 21_304, "stack": 1_128,
                       "graphics": 6_224, "private_other": 3_560, "system": 14_120, "rss_extra": 68_000}
        self.peak_rss_kb = 0
        self.thread = threading.Thread(target=self._run, name=f"app-{self.package}-{self.pid}", daemon=True)

    # ---- for the app's code
    @property
    def files_dir(self) -> str:
        """``getExternalFilesDir(null)`` as a device path."""
        return f"/sdcard/Android/data/{self.package}/files"

    def host_path(self, device_path: str) -> Path:
        self._check()
        return self.phone.host_path(device_path)

    def log(self, message: str, level: str = "I", tag: str = "BenchmarkActivity") -> None:
        self._check()
        self.phone.logcat.add(self.pid, level, tag, message, tid=self.pid + 17)

    def should_stop(self) -> bool:
        return self.stop_requested.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep; returns True at once when the app is being stopped."""
        return self.stop_requested.wait(seconds)

    def set_memory(self, *, pss_kb: int | None = None, native_heap_kb: int | None = None,
                   java_heap_kb: int | None = None, graphics_kb: int | None = None) -> None:
        """Memory ``dumpsys meminfo`` reports; ``pss_kb`` scales the other rows so the TOTAL PSS matches."""
        if native_heap_kb is not None:
            self.memory["native_heap"] = native_heap_kb
        if java_heap_kb is not None:
            self.memory["java_heap"] = java_heap_kb
        if graphics_kb is not None:
            self.memory["graphics"] = graphics_kb
        if pss_kb is not None:
            others = sum(v for k, v in self.memory.items() if k not in ("native_heap", "rss_extra"))
            self.memory["native_heap"] = max(0, pss_kb - others)
        self.peak_rss_kb = max(self.peak_rss_kb, self.rss_kb)

    @property
    def pss_kb(self) -> int:
        return sum(v for k, v in self.memory.items() if k != "rss_extra")

    @property
    def rss_kb(self) -> int:
        return self.pss_kb + self.memory["rss_extra"]

    # ---- for the phone
    def start(self) -> None:
        self.peak_rss_kb = self.rss_kb
        self.thread.start()

    def kill(self, reason: str) -> None:
        if not self.alive:
            return
        self.alive = False
        self.stop_requested.set()
        self.phone.logcat.add(SYSTEM_SERVER_PID, "I", "ActivityManager",
                              f"Killing {self.pid}:{self.package}/u0a{self.pid % 1000} (adj 0): {reason}")
        self.phone._process_gone(self)

    def _check(self) -> None:
        if not self.alive:
            raise AppKilled(f"{self.package} (pid {self.pid}) was stopped")

    def _run(self) -> None:
        try:
            if self.fn is None:
                self.stop_requested.wait()  # an activity with no test code just sits on screen
            else:
                self.fn(self, dict(self.extras))
        except AppKilled:
            pass
        except BaseException as exc:  # noqa: BLE001 - any exception in the app is a crash
            if self.alive:
                self.crash = exc
                self._log_crash(exc)
        finally:
            if self.alive:
                self.alive = False
                self.phone.logcat.add(SYSTEM_SERVER_PID, "I", "ActivityManager",
                                      f"Process {self.package} (pid {self.pid}) has died: "
                                      f"{'fg  TOP' if self.crash else 'cch CAC'} ")
                self.phone._process_gone(self)
            self.finished.set()

    def _log_crash(self, exc: BaseException) -> None:
        lines = ["FATAL EXCEPTION: main", f"Process: {self.package}, PID: {self.pid}",
                 f"java.lang.RuntimeException: Unable to start activity ComponentInfo{{{self.package}/"
                 f"{self.package + self.activity if self.activity.startswith('.') else self.activity}}}: "
                 f"{type(exc).__name__}: {exc}"]
        for frame in traceback.extract_tb(exc.__traceback__):
            lines.append(f"\tat {Path(frame.filename).stem}.{frame.name}({Path(frame.filename).name}:{frame.lineno})")
        lines.append(f"Caused by: {type(exc).__module__}.{type(exc).__name__}: {exc}")
        for line in lines:
            self.phone.logcat.add(self.pid, "E", "AndroidRuntime", line)
        self.phone.logcat.add(self.pid, "I", "Process", f"Sending signal. PID: {self.pid} SIG: 9")
        self.phone.logcat.add(SYSTEM_SERVER_PID, "W", "ActivityManager",
                              f"  Force finishing activity {self.package}/{self.activity}")
