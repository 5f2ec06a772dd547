"""How the host reaches the app: one interface, two ways — a phone over adb, or the HTP simulator on the host.

``bench`` speaks only to this interface, so ``--device sim`` runs through the same protocol code as a phone:
the same request files, pushed to a files folder, the same start, the same ``status.json`` polling and the same
pulls. Remote paths are relative to the app's files folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from fraqat_deploy.runs import sha256_file


class DeviceLink(ABC):
    #: "sim" or "adb"
    kind: str
    #: the folder name of this device's results under ``bench/``
    label: str
    #: the compile target whose context binaries this device runs (an alias of ``targets.py``)
    target: str

    @abstractmethod
    def info(self) -> dict[str, Any]:
        """What the result's ``device`` block should say, as far as the host can tell."""

    @abstractmethod
    def sha256(self, remote: str) -> str | None:
        """The file's sha256 on the device, None when it is not there."""

    @abstractmethod
    def push(self, local: Path, remote: str) -> None: ...

    @abstractmethod
    def pull(self, remote: str, local: Path) -> bool:
        """Copy a file back; False when it is not on the device."""

    @abstractmethod
    def read_text(self, remote: str) -> str | None: ...

    @abstractmethod
    def remove(self, remote: str) -> None: ...

    @abstractmethod
    def start(self, request_remote: str) -> None:
        """Start the app's benchmark on ``request_remote`` (a fresh process)."""

    @abstractmethod
    def running(self) -> bool:
        """Is the app's process alive?"""

    @abstractmethod
    def stop(self) -> None: ...

    @abstractmethod
    def logs(self) -> str:
        """The app's log (logcat on a phone)."""

    def crash_count(self) -> int:
        """How many crashes of the app the device has recorded so far (0 where it keeps no such record)."""
        return 0

    def thermal_status(self) -> int | None:
        return None

    def memory(self) -> dict[str, float | None]:
        """Peak memory of the app's process as the host can sample it (MB); empty when it cannot."""
        return {}

    def prepare(self, apk: Path | None) -> None:
        """Make sure the app is there (install ``apk`` when given)."""
        return None

    def same_file(self, local: Path, remote: str, digest: str | None = None) -> bool:
        return self.sha256(remote) == (digest or sha256_file(local))


class SimulatorLink(DeviceLink):
    """The HTP simulator as a device: a files folder on the host and the engine as the app's process."""

    kind = "sim"
    label = "sim"

    def __init__(self, files_dir: Path, target: str = "s25u") -> None:
        self.files_dir = Path(files_dir)
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self.target = target
        self.process: subprocess.Popen | None = None
        self.log_path = self.files_dir / "engine.log"

    def _path(self, remote: str) -> Path:
        path = (self.files_dir / remote).resolve()
        if self.files_dir.resolve() not in path.parents and path != self.files_dir.resolve():
            raise ValueError(f"{remote} is outside the simulated files folder")
        return path

    def info(self) -> dict[str, Any]:
        from fraqat_deploy.device.engine import simulator_device

        return simulator_device()

    def sha256(self, remote: str) -> str | None:
        path = self._path(remote)
        return sha256_file(path) if path.is_file() else None

    def push(self, local: Path, remote: str) -> None:
        path = self._path(remote)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.part")
        shutil.copyfile(local, tmp)
        os.replace(tmp, path)

    def pull(self, remote: str, local: Path) -> bool:
        path = self._path(remote)
        if not path.is_file():
            return False
        local.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, local)
        return True

    def read_text(self, remote: str) -> str | None:
        path = self._path(remote)
        try:
            return path.read_text()
        except (FileNotFoundError, IsADirectoryError):
            return None

    def remove(self, remote: str) -> None:
        path = self._path(remote)
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()

    def start(self, request_remote: str) -> None:
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child process
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fraqat_deploy.device.engine", "--files-dir", str(self.files_dir),
             "--request", request_remote], stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.running():
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
