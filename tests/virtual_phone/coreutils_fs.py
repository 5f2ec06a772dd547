"""File commands (ls, mkdir, rm, mv, cp, touch, sha256sum, test, stat, df, du, find, chmod, realpath) in Python."""

from __future__ import annotations

import errno
import fnmatch
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
            entries = [(".", os.stat(host)), ("..", os.stat(host.parent)), *entries]
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


# ---- test / [
def _test(sh: Shell, args: list[str]) -> bool:
    pos = 0

    def peek(offset: int = 0) -> str | None:
        return args[pos + offset] if pos + offset < len(args) else None

    def take() -> str:
        nonlocal pos
        pos += 1
        return args[pos - 1]

    def disjunction() -> bool:
        value = conjunction()
        while peek() == "-o":
            take()
            value = conjunction() or value
        return value

    def conjunction() -> bool:
        value = negation()
        while peek() == "-a":
            take()
            value = negation() and value
        return value

    def negation() -> bool:
        if peek() == "!" and peek(1) is not None:
            take()
            return not negation()
        return primary()

    def primary() -> bool:
        if peek() == "(":
            take()
            value = disjunction()
            if take() != ")":
                raise ValueError("missing )")
            return value
        first = take()
        op = peek()
        if op in ("=", "==", "!=", "-eq", "-ne", "-lt", "-le", "-gt", "-ge") and peek(1) is not None:
            take()
            second = take()
            if op in ("=", "==", "!="):
                return (first == second) == (op != "!=")
            a, b = int(first), int(second)
            return {"-eq": a == b, "-ne": a != b, "-lt": a < b, "-le": a <= b, "-gt": a > b, "-ge": a >= b}[op]
        if re.fullmatch(r"-[a-zA-Z]", first) and op is not None:
            return _unary(sh, first, take())
        return first != ""

    result = disjunction()
    if pos != len(args):
        raise ValueError("too many arguments")
    return result


def _unary(sh: Shell, op: str, operand: str) -> bool:
    if op == "-n":
        return operand != ""
    if op == "-z":
        return operand == ""
    norm = sh.path(operand)
    if sh.phone.virtual_file(norm) is not None:
        return op in ("-e", "-r", "-c") or (op == "-d" and norm.count("/") == 2)
    try:
        host = sh.host(norm)
        st = os.lstat(host) if op in ("-L", "-h") else os.stat(host)
    except OSError:
        return False
    checks = {"-e": True, "-f": stat.S_ISREG(st.st_mode), "-d": stat.S_ISDIR(st.st_mode), "-s": st.st_size > 0,
              "-r": True, "-x": bool(st.st_mode & 0o111), "-L": stat.S_ISLNK(st.st_mode),
              "-h": stat.S_ISLNK(st.st_mode), "-c": False, "-b": False, "-p": False, "-S": False}
    if op == "-w":
        try:
            sh.fs.check_writable(norm)
            return True
        except OSError:
            return False
    if op not in checks:
        raise ValueError(f"unknown operator {op}")
    return checks[op]


@command("test", "[")
def _test_cmd(sh: Shell, argv: list[str], io: IO) -> int:
    args = argv[1:]
    if argv[0] == "[":
        if not args or args[-1] != "]":
            io.err("[: missing ]\n")
            return 2
        args = args[:-1]
    if not args:
        return 1
    try:
        return 0 if _test(sh, args) else 1
    except (ValueError, IndexError) as exc:
        io.err(f"{argv[0]}: {exc or 'syntax error'}\n")
        return 2


# ---- stat, df, du, find
def _mount(norm: str) -> tuple[str, str, str]:
    if norm.startswith(("/sdcard", "/storage")):
        return "/dev/fuse", "/storage/emulated", "fuse"
    if norm.startswith("/data"):
        return "/dev/block/dm-51", "/data", "f2fs"
    return "/dev/block/dm-6", "/", "erofs"


def _space(sh: Shell, norm: str) -> tuple[int, int]:
    """(total, available) bytes of the file system holding ``norm``."""
    if _mount(norm)[1] == "/":
        return 7_340_032_000, 0
    available = sh.fs.available()
    return max(sh.fs.total_bytes, available + sh.fs.used_bytes()), available


@command("stat")
def _stat(sh: Shell, argv: list[str], io: IO) -> int:
    fmt = None
    args = argv[1:]
    if "-c" in args:
        index = args.index("-c")
        fmt = args[index + 1]
        args = args[:index] + args[index + 2:]
    for arg in list(args):
        if arg.startswith("--format=") or arg.startswith("--printf="):
            fmt = arg.split("=", 1)[1]
            args.remove(arg)
    flags, paths = _flags(["stat", *args], "fLt")
    status = 0
    for path in paths:
        norm = sh.path(path)
        try:
            st = os.stat(sh.host(norm))
        except OSError as exc:
            status = _err(io, "stat", path, exc)
            continue
        if "f" in flags:
            total, avail = _space(sh, norm)
            _dev, _mnt, kind = _mount(norm)
            values = {"a": avail // BLOCK, "b": total // BLOCK, "f": avail // BLOCK, "S": BLOCK, "s": BLOCK,
                      "c": 14_616_576, "d": 14_393_086, "l": 255, "t": "65735546" if kind == "fuse" else "f2f52010",
                      "T": kind, "i": "0", "n": path}
            default = (f"  File: \"{path}\"\n    ID: 0 Namelen: 255    Type: {kind}\n"
                       f"Block Size: {BLOCK}    Fundamental block size: {BLOCK}\n"
                       f"Blocks: Total: {values['b']}\tFree: {values['f']}\tAvailable: {values['a']}\n"
                       f"Inodes: Total: {values['c']}\tFree: {values['d']}\n")
        else:
            uid, user, gid, group = _owner(norm)
            kind = "directory" if stat.S_ISDIR(st.st_mode) else "regular file" if st.st_size else \
                "regular empty file"
            human = lambda t: time.strftime("%Y-%m-%d %H:%M:%S.000000000 %z", time.localtime(t))  # noqa: E731
            values = {"s": st.st_size, "n": path, "N": f"'{path}'", "Y": int(st.st_mtime), "X": int(st.st_atime),
                      "Z": int(st.st_ctime), "y": human(st.st_mtime), "x": human(st.st_atime), "z": human(st.st_ctime),
                      "a": f"{st.st_mode & 0o7777:o}", "A": stat.filemode(st.st_mode), "F": kind, "u": uid, "U": user,
                      "g": gid, "G": group, "h": st.st_nlink, "i": st.st_ino, "b": st.st_blocks, "B": 512,
                      "o": BLOCK, "d": 63, "D": "3f", "t": 0, "T": 0}
            default = (f"  File: {path}\n  Size: {st.st_size}\t Blocks: {st.st_blocks}\t IO Blocks: {BLOCK}\t{kind}\n"
                       f"Device: 3fh/63d\t Inode: {st.st_ino}\t Links: {st.st_nlink}\n"
                       f"Access: ({values['a']:0>4}/{values['A']})\tUid: ({uid:5d}/{user:>8})\t"
                       f"Gid: ({gid:5d}/{group:>8})\nAccess: {values['x']}\nModify: {values['y']}\n"
                       f"Change: {values['z']}\n")
        if fmt is None:
            io.out(default)
        else:
            table = values
            text = re.sub(r"%(.)", lambda m, t=table: "%" if m.group(1) == "%" else str(t.get(m.group(1), "?")), fmt)
            io.out(text.encode().decode("unicode_escape") + ("\n" if not fmt.endswith("\\n") else ""))
    return status


@command("df")
def _df(sh: Shell, argv: list[str], io: IO) -> int:
    flags, paths = _flags(argv, "hkPa")
    mounts = [_mount(sh.path(p)) + (sh.path(p),) for p in paths] if paths else \
        [_mount(p) + (p,) for p in ("/", "/data", "/sdcard")]
    human = "h" in flags
    size_title, avail_title = ("Size", "Avail") if human else ("1K-blocks", "Available")
    lines = [f"{'Filesystem':<20}{size_title:>10}{'Used':>10}{avail_title:>10} Use% Mounted on\n"]
    seen = set()
    for device, mount, _kind, norm in mounts:
        if mount in seen:
            continue
        seen.add(mount)
        total, avail = _space(sh, norm)
        used = total - avail
        cells = [_human(total), _human(used), _human(avail)] if human else [str(total // 1024), str(used // 1024),
                                                                            str(avail // 1024)]
        percent = -(-used * 100 // total) if total else 0
        lines.append(f"{device:<20}{cells[0]:>10}{cells[1]:>10}{cells[2]:>10} {percent:>3}% {mount}\n")
    io.out("".join(lines))
    return 0


@command("du")
def _du(sh: Shell, argv: list[str], io: IO) -> int:
    flags, paths = _flags(argv, "skhac")
    status = 0
    for path in paths or ["."]:
        try:
            host = sh.host(path)
            if not host.exists():
                raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
        except OSError as exc:
            status = _err(io, "du", path, exc)
            continue
        size = host.stat().st_size if host.is_file() else sum(
            os.lstat(os.path.join(d, n)).st_size for d, _s, names in os.walk(host) for n in names)
        blocks = -(-size // 1024)
        io.out(f"{_human(size) if 'h' in flags else blocks}\t{path}\n")
    return status


@command("find")
def _find(sh: Shell, argv: list[str], io: IO) -> int:
    args = argv[1:]
    roots = []
    while args and not args[0].startswith("-"):
        roots.append(args.pop(0))
    options: dict[str, str] = {}
    while args:
        key = args.pop(0)
        if key in ("-maxdepth", "-mindepth", "-type", "-name", "-iname"):
            options[key] = args.pop(0)
    status = 0
    for root in roots or ["."]:
        try:
            host = sh.host(root)
            if not host.exists():
                raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
        except OSError as exc:
            status = _err(io, "find", root, exc)
            continue
        found = []
        for folder, dirs, names in os.walk(host):
            dirs.sort()
            depth = len(Path(folder).relative_to(host).parts)
            entries = [(folder, True, depth)] if folder == str(host) else []
            entries += [(os.path.join(folder, n), os.path.isdir(os.path.join(folder, n)), depth + 1)
                        for n in sorted(names + dirs)]
            for full, is_dir, level in entries:
                if level > int(options.get("-maxdepth", 1 << 30)) or level < int(options.get("-mindepth", 0)):
                    continue
                if options.get("-type") in ("f", "d") and (options["-type"] == "d") != is_dir:
                    continue
                base = os.path.basename(full)
                if "-name" in options and not fnmatch.fnmatchcase(base, options["-name"]):
                    continue
                if "-iname" in options and not fnmatch.fnmatch(base.lower(), options["-iname"].lower()):
                    continue
                rel = Path(full).relative_to(host).as_posix()
                found.append(root if rel == "." else posixpath.join(root, rel))
            if depth + 1 > int(options.get("-maxdepth", 1 << 30)):
                dirs.clear()
        io.out("".join(f + "\n" for f in found))
    return status

