"""VirtualPhone: a Galaxy S25 Ultra double that the real adb server reaches with ``adb connect 127.0.0.1:PORT``."""

from __future__ import annotations

import itertools
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from . import android, coreutils  # noqa: F401 - importing registers the shell doubles
from .apps import SYSTEM_SERVER_PID, AppFn, AppProcess, Logcat, Package
from .fs import Sandbox
from .services import open_service
from .transport import Connection

if TYPE_CHECKING:
    from .adb_server import AdbServer

DEFAULT_FEATURES = ("shell_v2", "cmd", "stat_v2", "ls_v2", "fixed_push_mkdir", "fixed_push_symlink_timestamp", "apex")
PROPS = {
    "ro.product.manufacturer": "samsung",
    "ro.product.brand": "samsung",
    "ro.product.model": "SM-S938B",
    "ro.product.name": "pa3qxxx",
    "ro.product.device": "pa3q",
    "ro.product.board": "sun",
    "ro.product.cpu.abi": "arm64-v8a",
    "ro.product.cpu.abilist": "arm64-v8a",
    "ro.soc.manufacturer": "QTI",
    "ro.soc.model": "SM8750",
    "ro.board.platform": "sun",
    "ro.hardware": "qcom",
    "ro.build.version.sdk": "35",
    "ro.build.version.release": "15",
    "ro.build.version.security_patch": "2025-01-01",
    "ro.build.id": "AP3A.240905.015.A2",
    "ro.build.display.id": "AP3A.240905.015.A2.S938BXXU1AYA1",
    "ro.build.type": "user",
    "ro.build.tags": "release-keys",
    "ro.build.fingerprint": "samsung/pa3qxxx/pa3q:15/AP3A.240905.015.A2/S938BXXU1AYA1:user/release-keys",
    "ro.build.characteristics": "phone",
    "ro.debuggable": "0",
    "ro.secure": "1",
    "ro.product.first_api_level": "35",
    "persist.sys.timezone": "Europe/Berlin",
    "sys.boot_completed": "1",
    "init.svc.adbd": "running",
}
SYSTEM_PACKAGES = {"android": "15", "com.android.shell": "15", "com.android.settings": "15",
                   "com.samsung.android.app.launcher": "16.0.05.43", "com.google.android.gms": "24.49.33",
                   "com.sec.android.app.camera": "15.0.01.11", "com.android.vending": "44.3.22-31"}


class VirtualPhone:
    """One phone: a TCP listener speaking adb's device protocol, a sandboxed file system and app doubles.

    Knobs: ``authorized`` (False: answers AUTH forever, adb lists it as ``unauthorized``), ``free_bytes``
    (storage left; None: plenty), ``apps`` (package -> versionName, installed at boot), ``props`` (getprop
    overrides), ``thermal_status`` (0..6), ``drop_after_push_bytes`` (one-shot: cut the connection once a push
    has sent that many bytes), ``features`` (the banner's feature list).
    """

    def __init__(self, root: Path, *, authorized: bool = True, free_bytes: int | None = None,
                 total_bytes: int = 256_000_000_000, apps: dict[str, str] | None = None,
                 props: dict[str, str] | None = None, thermal_status: int = 0,
                 drop_after_push_bytes: int | None = None, features: tuple[str, ...] = DEFAULT_FEATURES) -> None:
        self.fs = Sandbox(Path(root), free_bytes=free_bytes, total_bytes=total_bytes)
        self.authorized = authorized
        self.props = {**PROPS, **(props or {})}
        self.thermal_status = thermal_status
        self.drop_after_push_bytes = drop_after_push_bytes
        self.features = tuple(features)
        self.logcat = Logcat()
        self.packages: dict[str, Package] = {name: Package(name, version, 35, (), True)
                                             for name, version in SYSTEM_PACKAGES.items()}
        self.hooks: dict[str, AppFn] = {}
        self.processes: dict[int, AppProcess] = {}
        self.runs: list[AppProcess] = []
        self.history: list[tuple[str, str]] = []
        self.installed_apks: list[tuple[str, str]] = []  # (package, sha256) of every APK installed through pm
        #: (package, versionName, versionCode) of an APK whose manifest is not plain text; None refuses it
        self.apk_identity: Callable[[bytes], tuple[str, str, int] | None] | None = None
        self.online = True
        self.adb: AdbServer | None = None
        self.connections: list[Connection] = []
        self._pids = itertools.count(12_000 + 97)
        self._lock = threading.RLock()
        self._listener: socket.socket | None = None
        self._closing = False
        self.port = 0
        for name, version in (apps or {}).items():
            self.install_app(name, version)
        self.logcat.add(SYSTEM_SERVER_PID, "I", "SystemServer", "Entered the Android system server!")

    # ---- lifecycle
    def start(self) -> VirtualPhone:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        self._listener = listener
        self.port = listener.getsockname()[1]
        threading.Thread(target=self._accept, name=f"vphone-{self.port}-accept", daemon=True).start()
        return self

    @property
    def serial(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._closing = True
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
        self.disconnect()
        for proc in list(self.processes.values()):
            proc.kill("phone switched off")
        for proc in self.runs:
            proc.finished.wait(2)

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._closing:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            if not self.online or self._closing:
                sock.close()
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Connection(self, sock, open_service)
            with self._lock:
                self.connections = [c for c in self.connections if not c.dead.is_set()] + [conn]
            conn.start()

    def banner(self) -> str:
        p = self.props
        return (f"device::ro.product.name={p['ro.product.name']};ro.product.model={p['ro.product.model']};"
                f"ro.product.device={p['ro.product.device']};features={','.join(self.features)}")

    # ---- faults
    def disconnect(self, stay_offline: bool = False) -> None:
        """Cut every connection now (a pulled cable). The adb server may reconnect unless ``stay_offline``."""
        if stay_offline:
            self.online = False
        with self._lock:
            connections, self.connections = self.connections, []
        for conn in connections:
            conn.drop()

    def go_online(self) -> None:
        self.online = True

    def reconnect(self, state: str = "device", timeout: float = 10.0) -> None:
        """Come back online and ``adb connect`` again through the fixture's adb server."""
        self.go_online()
        if self.adb is None:
            raise RuntimeError("this phone was not started by the virtual_phone fixture")
        self.adb.connect(self.serial, state=state, timeout=timeout)

    # ---- files
    def host_path(self, device_path: str) -> Path:
        """The host file behind a device path (``/sdcard/...``, ``/storage/emulated/0/...``, ``/data/local/tmp``)."""
        return self.fs.host(device_path)

    @property
    def free_bytes(self) -> int | None:
        return self.fs.free_bytes

    @free_bytes.setter
    def free_bytes(self, value: int | None) -> None:
        self.fs.free_bytes = value

    def virtual_file(self, norm: str) -> bytes | None:
        if norm in ("/dev/null", "/dev/zero"):
            return b""
        if norm.startswith("/proc/"):
            return android.proc_file(self, norm)
        return None

    # ---- packages and processes
    def install_app(self, package: str, version_name: str = "1.0", version_code: int = 1, app: AppFn | None = None,
                    activities: tuple[str, ...] = (".BenchmarkActivity",), apk: bytes | None = None) -> Package:
        with self._lock:
            self.packages[package] = Package(package, version_name, version_code, activities, False, apk)
            if app is not None:
                self.hooks[package] = app
            return self.packages[package]

    def register_app(self, package: str, app: AppFn) -> None:
        """The code to run when ``package`` is started (it may be installed later, e.g. by ``adb install``)."""
        self.hooks[package] = app

    def uninstall(self, package: str) -> bool:
        self.force_stop(package)
        with self._lock:
            pkg = self.packages.get(package)
            if pkg is None or pkg.system:
                return False
            del self.packages[package]
        data = self.fs.host(f"/sdcard/Android/data/{package}")
        if data.exists():
            self.fs.remove_tree(f"/sdcard/Android/data/{package}")
        return True

    def new_pid(self) -> int:
        with self._lock:
            return next(self._pids)

    def pidof(self, package: str) -> int | None:
        with self._lock:
            return next((p.pid for p in self.processes.values() if p.package == package and p.alive), None)

    def process(self, pid: int) -> AppProcess | None:
        return self.processes.get(pid)

    def start_app(self, package: str, activity: str, extras: dict[str, str]) -> AppProcess:
        pkg = self.packages[package]
        proc = AppProcess(self, pkg, activity, extras, self.hooks.get(package))
        with self._lock:
            self.processes[proc.pid] = proc
            self.runs.append(proc)
        self.fs.host(proc.files_dir).mkdir(parents=True, exist_ok=True)
        self.logcat.add(SYSTEM_SERVER_PID, "I", "ActivityManager",
                        f"Start proc {proc.pid}:{package}/u0a{proc.pid % 1000} for next-top-activity "
                        f"{{{package}/{pkg.activity_class(activity)}}}")
        proc.start()
        return proc

    def force_stop(self, package: str) -> None:
        for proc in list(self.processes.values()):
            if proc.package == package:
                proc.kill("stop " + package + " due to from pid 0")

    def _process_gone(self, proc: AppProcess) -> None:
        with self._lock:
            self.processes.pop(proc.pid, None)

    def wait_for_app(self, package: str, timeout: float = 10.0) -> AppProcess:
        """The latest run of ``package`` once it has finished (returned, crashed or was stopped)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            runs = [p for p in self.runs if p.package == package]
            if runs and runs[-1].finished.wait(0.05):
                return runs[-1]
            if not runs:
                time.sleep(0.02)
        raise TimeoutError(f"{package} did not finish within {timeout} s")

    def record(self, kind: str, text: str) -> None:
        """What reached the phone, for assertions: ("open", service), ("shell", line), ("exec", argv), ("sync", op)."""
        self.history.append((kind, text))
