"""File commands (ls, mkdir, rm, mv, cp, touch, sha256sum, chmod, realpath) in Python over the sandbox."""

from __future__ import annotations

import errno
import hashlib
import os
import posixpath
import re
import shutil
import stat
import time
from pathlib import Path

from .coreutils import _err, _flags, _inputs
from .interp import IO, Shell, command

BLOCK = 4096


def _exists(sh: Shell, path: str) -> bool:
    norm = sh.path(path)
    if sh.phone.virtual_file(norm) is not None:
        return True
    try:
        return os.path.lexists(sh.host(norm))
    except OSError:
        return False


def _owner(norm: str) -> tuple[int, str, int, str]:
    if norm.startswith("/sdcard"):
        return 10254, "u0_a254", 1023, "media_rw"
    if norm.startswith("/data/local/tmp"):
        return 2000, "shell", 2000, "shell"
    return 0, "root", 0, "root"


def _long_line(name: str, norm: str, st: os.stat_result, human: bool) -> str:
    _uid, user, _gid, group = _owner(norm)
    size = _human(st.st_size) if human else str(st.st_size)
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(st.st_mtime))
    return f"{stat.filemode(st.st_mode)} {st.st_nlink} {user} {group} {size:>8} {when} {name}\n"


def _human(n: float) -> str:
    for unit in ("", "K", "M", "G", "T"):
        if n < 1024 or unit == "T":
            return f"{n:.0f}{unit}" if unit == "" or n >= 10 else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)


@command("ls")
def _ls(sh: Shell, argv: list[str], io: IO) -> int:
    flags, paths = _flags(argv, "laAd1shRFtrc")
    paths = paths or ["."]
    status = 0
    files, dirs = [], []
    for path in paths:
        norm = sh.path(path)
        try:
            host = sh.host(norm)
            st = os.stat(host)
        except OSError:
            status = _err(io, "ls", path, errno.ENOENT)
            continue
        (dirs if stat.S_ISDIR(st.st_mode) and "d" not in flags else files).append((path, norm, host, st))
    out = []
    for path, norm, _host, st in files:
        out.append(_long_line(path, norm, st, "h" in flags) if "l" in flags else path + "\n")
    for index, (path, norm, host, _st) in enumerate(dirs):
        if len(paths) > 1:
            out.append(("\n" if out or index else "") + f"{path}:\n")
        names = sorted(os.listdir(host))
        if "a" not in flags and "A" not in flags:
            names = [n for n in names if not n.startswith(".")]
        entries = [(n, os.lstat(host / n)) for n in names]
        if "a" in flags:
            entries = [(".", os.stat(host)), ("..", os.stat(host if norm == "/" else host.parent)), *entries]
        if "t" in flags:
            entries.sort(key=lambda e: -e[1].st_mtime)
        if "r" in flags:
            entries.reverse()
        if "l" in flags:
            out.append(f"total {sum(e[1].st_blocks for e in entries) // 2}\n")
            out.extend(_long_line(n, posixpath.join(norm, n), s, "h" in flags) for n, s in entries)
        else:
            out.extend(n + ("/" if "F" in flags and stat.S_ISDIR(s.st_mode) else "") + "\n" for n, s in entries)
    io.out("".join(out))
    return status


@command("mkdir")
def _mkdir(sh: Shell, argv: list[str], io: IO) -> int:
    args = [a for a in argv[1:] if a != "-m"]
    flags, paths = _flags(["mkdir", *args], "pv")
    status = 0
    for path in paths:
        if re.fullmatch(r"[0-7]{3,4}", path) and "-m" in argv and argv[argv.index("-m") + 1] == path:
            continue
        try:
            norm = sh.fs.check_writable(path, sh.cwd)
            host = sh.host(norm)
            if "p" in flags:
                if host.exists() and not host.is_dir():
                    raise OSError(errno.EEXIST, os.strerror(errno.EEXIST))
                host.mkdir(parents=True, exist_ok=True)
            else:
                host.mkdir()
        except OSError as exc:
            io.err(f"mkdir: '{path}': {os.strerror(exc.errno or errno.EIO)}\n")
            status = 1
    return status


@command("rm")
def _rm(sh: Shell, argv: list[str], io: IO) -> int:
    flags, paths = _flags(argv, "rRfdiv")
    status = 0
    for path in paths:
        if not _exists(sh, path):
            if "f" not in flags:
                status = _err(io, "rm", path, errno.ENOENT)
            continue
        try:
            norm = sh.fs.check_writable(path, sh.cwd)
            host = sh.host(norm)
            if host.is_dir() and not host.is_symlink():
                if not flags & {"r", "R"}:
                    if "d" in flags and not any(host.iterdir()):
                        host.rmdir()
                        continue
                    status = _err(io, "rm", path, errno.EISDIR)
                    continue
                shutil.rmtree(host)
            else:
                host.unlink()
        except OSError as exc:
            status = _err(io, "rm", path, exc)
    return status


@command("rmdir")
def _rmdir(sh: Shell, argv: list[str], io: IO) -> int:
    _, paths = _flags(argv, "p")
    status = 0
    for path in paths:
        try:
            sh.host(sh.fs.check_writable(path, sh.cwd)).rmdir()
        except OSError as exc:
            status = _err(io, "rmdir", path, exc)
    return status


def _target(sh: Shell, source: str, dest: str) -> str:
    if sh.host(dest).is_dir():
        return posixpath.join(sh.path(dest), posixpath.basename(sh.path(source)))
    return sh.path(dest)


@command("mv")
def _mv(sh: Shell, argv: list[str], io: IO) -> int:
    _, paths = _flags(argv, "fnvi")
    if len(paths) < 2:
        io.err("mv: Need 2 arguments\n")
        return 1
    status = 0
    for source in paths[:-1]:
        try:
            if not _exists(sh, source):
                raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
            src = sh.fs.check_writable(source, sh.cwd)
            dst = sh.fs.check_writable(_target(sh, source, paths[-1]))
            os.replace(sh.host(src), sh.host(dst))
        except OSError as exc:
            status = _err(io, "mv", source, exc)
    return status


def _copy_file(sh: Shell, src: Path, dst: str) -> None:
    if not sh.fs.inside(src):  # a symlink planted on the host must not let the phone read outside
        raise OSError(errno.EACCES, os.strerror(errno.EACCES), str(src.name))
    out = sh.fs.open_write(dst)
    try:
        with open(src, "rb") as handle:
            while chunk := handle.read(1 << 20):
                out.write(chunk)
    except OSError:
        out.discard()
        raise
    out.close()


@command("cp")
def _cp(sh: Shell, argv: list[str], io: IO) -> int:
    flags, paths = _flags(argv, "rRfpaPLdnv")
    if len(paths) < 2:
        io.err("cp: Need 2 arguments\n")
        return 1
    status = 0
    for source in paths[:-1]:
        try:
            src = sh.host(source)
            if not src.exists():
                raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
            dst = _target(sh, source, paths[-1])
            if src.is_dir():
                if not flags & {"r", "R", "a"}:
                    io.err(f"cp: Skipped dir '{source}'\n")
                    status = 1
                    continue
                for folder, _dirs, names in os.walk(src):
                    rel = Path(folder).relative_to(src).as_posix()
                    dev_folder = posixpath.normpath(posixpath.join(dst, rel))
                    sh.host(sh.fs.check_writable(dev_folder)).mkdir(parents=True, exist_ok=True)
                    for name in names:
                        _copy_file(sh, Path(folder) / name, posixpath.join(dev_folder, name))
            else:
                _copy_file(sh, src, dst)
        except OSError as exc:
            status = _err(io, "cp", source, exc)
    return status


@command("touch")
def _touch(sh: Shell, argv: list[str], io: IO) -> int:
    _, paths = _flags(argv, "acm")
    status = 0
    for path in paths:
        try:
            if not _exists(sh, path):
                sh.fs.open_write(path, sh.cwd, append=True).close()
            else:
                sh.fs.check_writable(path, sh.cwd)
            os.utime(sh.host(path))
        except OSError as exc:
            status = _err(io, "touch", path, exc)
    return status


@command("sha256sum", "sha1sum", "md5sum", "sha512sum")
def _hashsum(sh: Shell, argv: list[str], io: IO) -> int:
    _, paths = _flags(argv, "bt")
    algorithm = argv[0].removesuffix("sum")
    status = 0
    for label, data in _inputs(sh, io, argv[0], paths):
        if data is None:
            status = 1
        else:
            io.out(f"{hashlib.new(algorithm, data).hexdigest()}  {label}\n")
    return status


@command("chmod")
def _chmod(sh: Shell, argv: list[str], io: IO) -> int:
    _, args = _flags(argv, "Rfv")
    if len(args) < 2:
        return 1
    mode, status = args[0], 0
    for path in args[1:]:
        try:
            host = sh.host(sh.fs.check_writable(path, sh.cwd))
            current = os.stat(host).st_mode & 0o7777
            if re.fullmatch(r"[0-7]{1,4}", mode):
                new = int(mode, 8)
            else:
                bits = 0o111 if "x" in mode else 0o444 if "r" in mode else 0o222 if "w" in mode else 0
                new = current & ~bits if "-" in mode else current | bits
            os.chmod(host, new | 0o600)
        except OSError as exc:
            status = _err(io, "chmod", path, exc)
    return status


@command("realpath", "readlink")
def _realpath(sh: Shell, argv: list[str], io: IO) -> int:
    _, paths = _flags(argv, "fenqm")
    if argv[0] == "readlink" and "-f" not in argv and "-e" not in argv:
        return 1
    for path in paths:
        norm = sh.path(path)
        io.out(("/storage/emulated/0" + norm[len("/sdcard"):] if norm.startswith("/sdcard") else norm) + "\n")
    return 0


from . import coreutils_info  # noqa: E402,F401 - test, stat, df, du and find register themselves
