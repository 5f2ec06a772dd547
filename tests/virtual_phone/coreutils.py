"""Shell builtins and toybox-style coreutils, all in Python over the sandbox (messages follow toybox/mksh)."""

from __future__ import annotations

import errno
import os
import posixpath
import re
import time

from .interp import IO, SH, Cancelled, Shell, ShellExit, _Loop, _Return, command


def _err(io: IO, name: str, path: str, exc: OSError | int) -> int:
    code = exc if isinstance(exc, int) else (exc.errno or errno.EIO)
    io.err(f"{name}: {path}: {os.strerror(code)}\n")
    return 1


def _flags(argv: list[str], known: str) -> tuple[set[str], list[str]]:
    """Split ``-abc`` style flags (only letters in ``known``) from operands; ``--`` ends flags."""
    flags: set[str] = set()
    rest = []
    args = iter(argv[1:])
    for arg in args:
        if arg == "--":
            rest.extend(args)
            break
        if arg.startswith("-") and len(arg) > 1 and all(c in known for c in arg[1:]):
            flags.update(arg[1:])
        else:
            rest.append(arg)
    return flags, rest


# ---- builtins
@command("true", ":")
def _true(sh: Shell, argv: list[str], io: IO) -> int:
    return 0


@command("false")
def _false(sh: Shell, argv: list[str], io: IO) -> int:
    return 1


@command("exit")
def _exit(sh: Shell, argv: list[str], io: IO) -> int:
    raise ShellExit(int(argv[1]) if len(argv) > 1 and argv[1].lstrip("-").isdigit() else sh.status)


@command("return")
def _return(sh: Shell, argv: list[str], io: IO) -> int:
    raise _Return(int(argv[1]) if len(argv) > 1 else sh.status)


@command("break", "continue")
def _loop(sh: Shell, argv: list[str], io: IO) -> int:
    raise _Loop(argv[0])


@command("cd")
def _cd(sh: Shell, argv: list[str], io: IO) -> int:
    target = sh.path(argv[1] if len(argv) > 1 else "/")
    if not sh.host(target).is_dir():
        io.err(f"{SH}: cd: {argv[1]}: No such file or directory\n")
        return 2
    sh.cwd = target
    return 0


@command("pwd")
def _pwd(sh: Shell, argv: list[str], io: IO) -> int:
    io.out(sh.cwd + "\n")
    return 0


@command("export", "local", "readonly")
def _export(sh: Shell, argv: list[str], io: IO) -> int:
    for arg in argv[1:]:
        if "=" in arg:
            name, value = arg.split("=", 1)
            sh.vars[name] = value
    return 0


@command("unset")
def _unset(sh: Shell, argv: list[str], io: IO) -> int:
    for name in argv[1:]:
        sh.vars.pop(name, None)
        sh.funcs.pop(name, None)
    return 0


@command("set")
def _set(sh: Shell, argv: list[str], io: IO) -> int:
    args = argv[1:]
    while args and args[0].startswith(("-", "+")) and args[0] != "--":
        if "e" in args[0]:
            sh.errexit = args[0].startswith("-")
        args = args[1:]
    if args and args[0] == "--":
        sh.args = args[1:]
    return 0


@command("shift")
def _shift(sh: Shell, argv: list[str], io: IO) -> int:
    sh.args = sh.args[int(argv[1]) if len(argv) > 1 else 1:]
    return 0


@command("trap", "umask", "wait", "ulimit", "sync", "hash")
def _noop(sh: Shell, argv: list[str], io: IO) -> int:
    return 0


@command("eval")
def _eval(sh: Shell, argv: list[str], io: IO) -> int:
    return sh.run(" ".join(argv[1:]), io)


@command(".", "source")
def _source(sh: Shell, argv: list[str], io: IO) -> int:
    return sh.run(sh.read_file(argv[1]).decode("utf-8", "surrogateescape"), io)


@command("sh", "mksh", "bash")
def _sh(sh: Shell, argv: list[str], io: IO) -> int:
    child = sh.subshell()
    args = argv[1:]
    while args and args[0] in ("-e", "-x", "-u"):
        child.errexit = child.errexit or args[0] == "-e"
        args = args[1:]
    if args and args[0] == "-c":
        if len(args) < 2:
            io.err(f"{SH}: -c: option requires an argument\n")
            return 1
        child.args = args[3:]
        return child.run(args[1], io)
    if args:
        child.args = args[1:]
        try:
            script = sh.read_file(args[0]).decode("utf-8", "surrogateescape")
        except OSError as exc:
            io.err(f"{SH}: {args[0]}: {exc.strerror}\n")
            return 127
        return child.run(script, io)
    return child.run(io.stdin.read().decode("utf-8", "surrogateescape"), io)


@command("exec")
def _exec(sh: Shell, argv: list[str], io: IO) -> int:
    if len(argv) > 1:
        raise ShellExit(sh.call(argv[1:], io))
    return 0


@command("read")
def _read(sh: Shell, argv: list[str], io: IO) -> int:
    names = [a for a in argv[1:] if not a.startswith("-")] or ["REPLY"]
    line = io.stdin.readline()
    if not line:
        return 1
    fields = line.decode("utf-8", "surrogateescape").rstrip("\n").split(None, len(names) - 1)
    for index, name in enumerate(names):
        sh.vars[name] = fields[index] if index < len(fields) else ""
    return 0


@command("command", "which", "type")
def _which(sh: Shell, argv: list[str], io: IO) -> int:
    from .interp import COMMANDS

    names = [a for a in argv[1:] if not a.startswith("-")]
    if argv[0] == "command" and not any(a in ("-v", "-V") for a in argv[1:]):
        return sh.call(names, io) if names else 0
    status = 0
    for name in names:
        if name in COMMANDS:
            io.out(f"/system/bin/{name}\n")
        else:
            status = 1
    return status


# ---- text
@command("echo")
def _echo(sh: Shell, argv: list[str], io: IO) -> int:
    args, newline, escapes = argv[1:], True, False
    while args and re.fullmatch(r"-[neE]+", args[0]):
        newline = newline and "n" not in args[0]
        escapes = "e" in args[0]
        args = args[1:]
    text = " ".join(args)
    if escapes:
        text = text.encode("utf-8", "surrogateescape").decode("unicode_escape")
    io.out(text + ("\n" if newline else ""))
    return 0


@command("printf")
def _printf(sh: Shell, argv: list[str], io: IO) -> int:
    if len(argv) < 2:
        return 1
    fmt, args = argv[1], argv[2:]
    spec = re.compile(r"%([-+ 0#]*\d*(?:\.\d+)?)([sdiuxXofgcb%])")

    def one(values: list[str]) -> str:
        def sub(match: re.Match) -> str:
            flags, conv = match.groups()
            if conv == "%":
                return "%"
            value = values.pop(0) if values else ""
            if conv in "diuxXoc":
                number = int(value or 0, 0) if conv != "c" else 0
                return (f"%{flags}{'d' if conv in 'iu' else conv}" % number) if conv != "c" else value[:1]
            if conv in "fg":
                return f"%{flags}{conv}" % float(value or 0)
            if conv == "b":
                return value.encode().decode("unicode_escape")
            return f"%{flags}s" % value
        return spec.sub(sub, fmt.encode().decode("unicode_escape"))

    values = list(args)
    out = one(values)
    while values:
        out += one(values)
    io.out(out)
    return 0


def _inputs(sh: Shell, io: IO, name: str, paths: list[str]) -> list[tuple[str, bytes | None]]:
    """(label, bytes or None when unreadable) for each operand; stdin when there are none."""
    if not paths or paths == ["-"]:
        return [("-", io.stdin.read())]
    out: list[tuple[str, bytes | None]] = []
    for path in paths:
        try:
            out.append((path, io.stdin.read() if path == "-" else sh.read_file(path)))
        except OSError as exc:
            _err(io, name, path, exc)
            out.append((path, None))
    return out


@command("cat")
def _cat(sh: Shell, argv: list[str], io: IO) -> int:
    _, paths = _flags(argv, "uvnAe")
    status = 0
    for _label, data in _inputs(sh, io, "cat", paths):
        if data is None:
            status = 1
        else:
            io.stdout.write(data)
    return status


@command("head", "tail")
def _head_tail(sh: Shell, argv: list[str], io: IO) -> int:
    count, by_bytes, paths = 10, False, []
    args = argv[1:]
    while args:
        arg = args.pop(0)
        if arg in ("-n", "-c"):
            by_bytes = arg == "-c"
            count = int(args.pop(0).lstrip("+"))
        elif re.fullmatch(r"-[nc]\d+", arg):
            by_bytes, count = arg[1] == "c", int(arg[2:])
        elif re.fullmatch(r"-\d+", arg):
            count = int(arg[1:])
        else:
            paths.append(arg)
    status = 0
    for _label, data in _inputs(sh, io, argv[0], paths):
        if data is None:
            status = 1
            continue
        if by_bytes:
            io.stdout.write(data[:count] if argv[0] == "head" else data[-count:] if count else b"")
        else:
            lines = data.splitlines(keepends=True)
            io.stdout.write(b"".join(lines[:count] if argv[0] == "head" else lines[-count:] if count else []))
    return status


@command("wc")
def _wc(sh: Shell, argv: list[str], io: IO) -> int:
    flags, paths = _flags(argv, "clw")
    flags = flags or {"l", "w", "c"}
    status = 0
    for label, data in _inputs(sh, io, "wc", paths):
        if data is None:
            status = 1
            continue
        counts = [str(n) for f, n in (("l", data.count(b"\n")), ("w", len(data.split())), ("c", len(data)))
                  if f in flags]
        io.out(" ".join(counts) + ("" if label == "-" else f" {label}") + "\n")
    return status


@command("grep", "egrep", "fgrep")
def _grep(sh: Shell, argv: list[str], io: IO) -> int:
    flags, args = _flags(argv, "qvciEFnoshrw")
    if "e" in flags or not args:
        return 2
    pattern, paths = args[0], args[1:]
    if "F" in flags or argv[0] == "fgrep":
        pattern = re.escape(pattern)
    if "w" in flags:
        pattern = rf"\b(?:{pattern})\b"
    regex = re.compile(pattern.encode(), re.I if "i" in flags else 0)
    found, status_err = 0, 0
    for label, data in _inputs(sh, io, "grep", paths):
        if data is None:
            status_err = 2
            continue
        lines = [line for line in data.splitlines() if bool(regex.search(line)) != ("v" in flags)]
        found += len(lines)
        if "q" in flags:
            continue
        prefix = f"{label}:".encode() if len(paths) > 1 and "h" not in flags else b""
        if "c" in flags:
            io.stdout.write(prefix + f"{len(lines)}\n".encode())
        else:
            for number, line in enumerate(lines, 1):
                io.stdout.write(prefix + (f"{number}:".encode() if "n" in flags else b"") + line + b"\n")
    return 0 if found else (status_err or 1)


@command("sort")
def _sort(sh: Shell, argv: list[str], io: IO) -> int:
    flags, paths = _flags(argv, "nru")
    lines = [line for _label, data in _inputs(sh, io, "sort", paths) if data for line in data.splitlines()]
    if "u" in flags:
        lines = list(dict.fromkeys(lines))
    key = (lambda s: float(re.match(rb"\s*(-?\d+(\.\d+)?)?", s).group(1) or 0)) if "n" in flags else None
    io.stdout.write(b"".join(line + b"\n" for line in sorted(lines, key=key, reverse="r" in flags)))
    return 0


@command("tee")
def _tee(sh: Shell, argv: list[str], io: IO) -> int:
    flags, paths = _flags(argv, "a")
    data = io.stdin.read()
    io.stdout.write(data)
    for path in paths:
        out = sh.fs.open_write(path, sh.cwd, append="a" in flags)
        try:
            out.write(data)
        finally:
            out.close()
    return 0


@command("basename")
def _basename(sh: Shell, argv: list[str], io: IO) -> int:
    name = posixpath.basename(argv[1].rstrip("/")) if len(argv) > 1 else ""
    if len(argv) > 2 and name.endswith(argv[2]) and name != argv[2]:
        name = name[: -len(argv[2])]
    io.out(name + "\n")
    return 0


@command("dirname")
def _dirname(sh: Shell, argv: list[str], io: IO) -> int:
    io.out((posixpath.dirname(argv[1].rstrip("/")) or ".") + "\n")
    return 0


@command("sleep")
def _sleep(sh: Shell, argv: list[str], io: IO) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    total = 0.0
    for arg in argv[1:]:
        match = re.fullmatch(r"(\d*\.?\d+)([smhd]?)", arg)
        if match is None:
            io.err(f"sleep: bad number '{arg}'\n")
            return 1
        total += float(match.group(1)) * units[match.group(2) or "s"]
    if sh.cancel.wait(total):
        raise Cancelled()
    return 0


@command("date")
def _date(sh: Shell, argv: list[str], io: IO) -> int:
    fmt = next((a[1:] for a in argv[1:] if a.startswith("+")), "%a %b %e %H:%M:%S %Z %Y")
    io.out(time.strftime(fmt.replace("%N", "000000000")) + "\n")
    return 0


@command("id")
def _id(sh: Shell, argv: list[str], io: IO) -> int:
    io.out("uid=2000(shell) gid=2000(shell) groups=2000(shell),1004(input),1007(log),1011(adb),1015(sdcard_rw),"
           "1028(sdcard_r),1078(ext_data_rw),1079(ext_obb_rw),3001(net_bt_admin),3002(net_bt),3003(inet),"
           "3006(net_bw_stats),3009(readproc),3011(uhid),3012(readtracefs) context=u:r:shell:s0\n")
    return 0


@command("whoami")
def _whoami(sh: Shell, argv: list[str], io: IO) -> int:
    io.out("shell\n")
    return 0


@command("uname")
def _uname(sh: Shell, argv: list[str], io: IO) -> int:
    parts = {"s": "Linux", "n": "localhost", "r": "6.6.30-android15-8-31998796-abS938BXXU1AYA1",
             "v": "#1 SMP PREEMPT Fri Jan 10 08:18:14 KST 2025", "m": "aarch64", "o": "Toybox"}
    flags, _ = _flags(argv, "asnrvmo")
    keys = "snrvmo" if "a" in flags else [k for k in "snrvmo" if k in flags] or ["s"]
    io.out(" ".join(parts[k] for k in keys) + "\n")
    return 0


@command("nproc")
def _nproc(sh: Shell, argv: list[str], io: IO) -> int:
    io.out("8\n")
    return 0


@command("env", "printenv")
def _env(sh: Shell, argv: list[str], io: IO) -> int:
    io.out("".join(f"{k}={v}\n" for k, v in sorted(sh.vars.items()) if k != "IFS"))
    return 0


from . import coreutils_fs, coreutils_text  # noqa: E402,F401 - the file and text commands register themselves
