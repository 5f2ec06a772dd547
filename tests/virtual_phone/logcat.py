"""``logcat`` (dump, follow, --pid, -v formats, -s and TAG:LEVEL filters, -t, -e, -c) and ``log``."""

from __future__ import annotations

import re
import time

from .apps import LogRecord
from .interp import IO, Cancelled, Shell, command

LEVELS = "VDIWEFS"


def format_record(r: LogRecord, fmt: str) -> str:
    stamp = time.strftime("%m-%d %H:%M:%S", time.localtime(r.time)) + f".{int(r.time * 1000) % 1000:03d}"
    if fmt == "brief":
        return f"{r.level}/{r.tag:<8}({r.pid:5d}): {r.message}\n"
    if fmt == "time":
        return f"{stamp} {r.level}/{r.tag:<8}({r.pid:5d}): {r.message}\n"
    if fmt == "tag":
        return f"{r.level}/{r.tag:<8}: {r.message}\n"
    if fmt == "process":
        return f"{r.level}({r.pid:5d}) {r.message}  ({r.tag})\n"
    if fmt == "raw":
        return r.message + "\n"
    if fmt == "long":
        return f"[ {stamp} {r.pid:5d}:{r.tid:5d} {r.level}/{r.tag} ]\n{r.message}\n\n"
    return f"{stamp} {r.pid:5d} {r.tid:5d} {r.level} {r.tag:<8}: {r.message}\n"


# ---- logs
def _level_filter(specs: list[str], silent: bool):
    default = "S" if silent else "V"
    levels: dict[str, str] = {}
    for spec in specs:
        tag, _, level = spec.partition(":")
        level = (level or "V").upper()[:1]
        if tag == "*":
            default = level
        else:
            levels[tag] = level
    return lambda r: LEVELS.index(r.level) >= LEVELS.index(levels.get(r.tag, default))


@command("logcat")
def _logcat(sh: Shell, argv: list[str], io: IO) -> int:
    args = argv[1:]
    dump, fmt, pid, tail, regex, silent, specs, max_count = False, "threadtime", None, None, None, False, [], None
    it = iter(args)
    for arg in it:
        if arg == "-d":
            dump = True
        elif arg in ("-c", "--clear"):
            sh.phone.logcat.clear()
            return 0
        elif arg == "-v":
            fmt = next(it).split(",")[0] if True else fmt
            fmt = fmt if fmt in ("brief", "time", "tag", "process", "raw", "long", "threadtime") else "threadtime"
        elif arg.startswith("--pid"):
            pid = int(arg.split("=", 1)[1] if "=" in arg else next(it))
        elif arg in ("-t", "-T"):
            tail, dump = int(next(it)), dump or arg == "-t"
        elif arg.startswith("-t") and arg[2:].isdigit():
            tail, dump = int(arg[2:]), True
        elif arg in ("-e", "--regex"):
            regex = re.compile(next(it))
        elif arg in ("-m", "--max-count"):
            max_count = int(next(it))
        elif arg == "-s":
            silent = True
        elif arg in ("-b", "--buffer", "-f", "--file", "-r", "-n", "-G"):
            next(it)
        elif not arg.startswith("-"):
            specs.append(arg)
    keep = _level_filter(specs, silent)

    def select(records: list[LogRecord]) -> list[LogRecord]:
        return [r for r in records if (pid is None or r.pid == pid) and keep(r)
                and (regex is None or regex.search(r.message))]

    logcat = sh.phone.logcat
    with logcat.cond:
        seen = len(logcat.records)
        chosen = select(logcat.records[:seen])
    if tail is not None:
        chosen = chosen[-tail:] if tail else []
    if max_count is not None:
        chosen = chosen[:max_count]
    io.out("".join(format_record(r, fmt) for r in chosen))
    if dump or (max_count is not None and len(chosen) >= max_count):
        return 0
    while True:  # follow the log until the host goes away
        with logcat.cond:
            while len(logcat.records) == seen and not sh.cancel.is_set():
                logcat.cond.wait(0.2)
            fresh, seen = logcat.records[seen:], len(logcat.records)
        if sh.cancel.is_set():
            raise Cancelled()
        io.out("".join(format_record(r, fmt) for r in select(fresh)))


@command("log")
def _log(sh: Shell, argv: list[str], io: IO) -> int:
    args, tag, level = argv[1:], "log", "I"
    while args and args[0] in ("-t", "-p"):
        if args[0] == "-t":
            tag = args[1]
        else:
            level = args[1][:1].upper()
        args = args[2:]
    sh.phone.logcat.add(sh.pid, level, tag, " ".join(args))
    return 0
