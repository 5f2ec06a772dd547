"""Questions about files: ``test``/``[``, ``stat`` (also ``-f``), ``df``, ``du`` and ``find``.

Free space comes from the phone's ``free_bytes`` knob, so ``df`` and ``stat -f`` agree with what a push can use.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import posixpath
import re
import stat
import time
from pathlib import Path

from .coreutils import _err, _flags
from .coreutils_fs import BLOCK, _human, _owner
from .interp import IO, Shell, command


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

