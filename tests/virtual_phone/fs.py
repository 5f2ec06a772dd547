"""The phone's file system: every device path maps into one host folder, and nothing outside it is reachable.

Device paths are normalised as POSIX paths first (``..`` cannot climb above ``/``), aliases are folded
(``/storage/emulated/0`` and ``/storage/self/primary`` are ``/sdcard``), and the result is joined under the
sandbox root; the real path of the host file must still lie inside the root, so a symlink cannot lead out.
Only ``/sdcard/...`` and ``/data/local/tmp/...`` are writable, as for adb's ``shell`` user; ``/proc/<pid>/...``
and ``/dev/null`` are virtual. Storage is one partition whose free space is the phone's ``free_bytes`` knob.
"""

from __future__ import annotations

import errno
import os
import posixpath
import shutil
from pathlib import Path

ALIASES = {
    "/storage/emulated/0": "/sdcard",
    "/storage/self/primary": "/sdcard",
    "/mnt/sdcard": "/sdcard",
    "/mnt/user/0/primary": "/sdcard",
}
SKELETON = ("/sdcard/Android/data", "/sdcard/Android/media", "/sdcard/Download", "/sdcard/DCIM", "/sdcard/Pictures",
            "/data/local/tmp", "/data/app", "/system/bin", "/vendor/lib64", "/storage/emulated", "/proc", "/dev")
WRITABLE = ("/sdcard", "/data/local/tmp")


def fs_error(code: int, path: str) -> OSError:
    return OSError(code, os.strerror(code), path)


class Sandbox:
    """Maps device paths to host paths under ``root`` and enforces the phone's write rules and quota."""

    def __init__(self, root: Path, free_bytes: int | None = None, total_bytes: int = 256_000_000_000) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root.resolve()
        for folder in SKELETON:
            self.host(folder).mkdir(parents=True, exist_ok=True)
        self.total_bytes = total_bytes
        self._capacity: int | None = None
        self.free_bytes = free_bytes

    # ---- paths
    @staticmethod
    def normalize(path: str, cwd: str = "/") -> str:
        if not path.startswith("/"):
            path = posixpath.join(cwd, path)
        norm = posixpath.normpath(path)
        norm = "/" + norm.lstrip("/")
        for alias, target in ALIASES.items():
            if norm == alias or norm.startswith(alias + "/"):
                return target + norm[len(alias):]
        return norm

    def host(self, path: str, cwd: str = "/") -> Path:
        """The host path of a device path; PermissionError if it would lead outside the sandbox."""
        norm = self.normalize(path, cwd)
        host = self.root.joinpath(*[part for part in norm.split("/") if part])
        if not self.inside(host):
            raise fs_error(errno.EACCES, path)
        return host

    def inside(self, host: Path) -> bool:
        """Does ``host``, with every symlink resolved, lie in the sandbox?"""
        real = os.path.realpath(host)
        return real == str(self.root) or real.startswith(str(self.root) + os.sep)

    def device_path(self, host: Path) -> str:
        rel = Path(os.path.realpath(host)).relative_to(self.root)
        return "/" + rel.as_posix() if rel.parts else "/"

    def check_writable(self, path: str, cwd: str = "/") -> str:
        """The normalised path if the shell user may create, change or remove it; else EACCES or EROFS."""
        norm = self.normalize(path, cwd)
        if any(norm.startswith(root + "/") for root in WRITABLE):
            return norm
        if norm == "/data" or norm.startswith("/data/"):
            raise fs_error(errno.EACCES, path)
        raise fs_error(errno.EROFS, path)

    # ---- storage
    def used_bytes(self) -> int:
        total = 0
        for folder, _dirs, files in os.walk(self.root):
            for name in files:
                try:
                    total += os.lstat(os.path.join(folder, name)).st_size
                except OSError:
                    pass
        return total

    @property
    def free_bytes(self) -> int | None:
        if self._capacity is None:
            return None
        return max(0, self._capacity - self.used_bytes())

    @free_bytes.setter
    def free_bytes(self, value: int | None) -> None:
        self._capacity = None if value is None else self.used_bytes() + int(value)

    def available(self) -> int:
        """Free bytes as ``df`` reports them."""
        free = self.free_bytes
        return self.total_bytes - self.used_bytes() if free is None else free

    # ---- operations used by sync and the shell doubles
    def open_write(self, path: str, cwd: str = "/", append: bool = False) -> QuotaFile:
        norm = self.check_writable(path, cwd)
        host = self.host(norm)
        if host.is_dir():
            raise fs_error(errno.EISDIR, path)
        if not host.parent.is_dir():
            raise fs_error(errno.ENOENT, path)
        return QuotaFile(self, host, append, norm)

    def remove_tree(self, path: str, cwd: str = "/") -> None:
        norm = self.check_writable(path, cwd)
        host = self.host(norm)
        if host.is_dir() and not host.is_symlink():
            shutil.rmtree(host)
        else:
            host.unlink()

    def stat(self, path: str, cwd: str = "/") -> os.stat_result:
        return os.stat(self.host(path, cwd))


class QuotaFile:
    """A host file opened for writing whose writes fail with ENOSPC once the phone's free space is used up."""

    def __init__(self, sandbox: Sandbox, host: Path, append: bool, name: str) -> None:
        self.sandbox = sandbox
        self.host = host
        self.name = name
        self.budget = sandbox.free_bytes
        if self.budget is not None and append is False and host.is_file():
            self.budget += host.stat().st_size  # truncating gives its bytes back
        self.file = open(host, "ab" if append else "wb")  # noqa: SIM115 - closed by close()
        self.written = 0

    def write(self, data: bytes) -> None:
        if self.budget is not None and self.written + len(data) > self.budget:
            fit = max(0, self.budget - self.written)
            self.file.write(data[:fit])
            self.written += fit
            raise fs_error(errno.ENOSPC, self.name)
        self.file.write(data)
        self.written += len(data)

    def close(self) -> None:
        self.file.close()

    def discard(self) -> None:
        self.file.close()
        self.host.unlink(missing_ok=True)

