"""Text tools the device scripts use, as toybox has them: ``sed`` (the ``-n`` / ``s///[gp]`` / ``p`` / ``d``
subset, basic regular expressions), ``cut -d -f`` and ``nohup``."""

from __future__ import annotations

import re

from .coreutils import _inputs
from .interp import IO, Shell, command


def _bre(pattern: str) -> str:
    """A POSIX basic regular expression as a Python one: ``\\( \\) \\{ \\} \\+ \\?`` are the operators, bare
    ``( ) { } + ?`` are literals."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            nxt = pattern[i + 1]
            out.append(nxt if nxt in "(){}+?|" else "\\" + nxt)
            i += 2
            continue
        out.append("\\" + c if c in "(){}+?|" else c)
        i += 1
    return "".join(out)


def _split_s(script: str) -> tuple[str, str, str]:
    delim = script[1]
    parts, cur, i = [], [], 2
    while i < len(script):
        c = script[i]
        if c == "\\" and i + 1 < len(script) and script[i + 1] == delim:
            cur.append(delim)
            i += 2
            continue
        if c == delim:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    if len(parts) != 3:
        raise ValueError(f"unterminated `s' command: {script}")
    return parts[0], parts[1], parts[2]


@command("sed")
def _sed(sh: Shell, argv: list[str], io: IO) -> int:
    args, quiet, scripts = argv[1:], False, []
    while args and args[0].startswith("-") and args[0] != "-":
        flag = args.pop(0)
        if flag == "-n":
            quiet = True
        elif flag == "-e" and args:
            scripts.append(args.pop(0))
        else:
            io.err(f"sed: unsupported option {flag}\n")
            return 1
    if not scripts:
        if not args:
            io.err("sed: no script\n")
            return 1
        scripts.append(args.pop(0))
    commands = []
    for script in scripts:
        script = script.strip()
        try:
            if script.startswith("s") and len(script) > 1:
                pattern, repl, flags = _split_s(script)
                regex = re.compile(_bre(pattern))
                repl = re.sub(r"\\(\d)", r"\\g<\1>", repl.replace("&", r"\g<0>"))
                commands.append(("s", regex, repl, flags))
            elif script in ("p", "d"):
                commands.append((script, None, None, None))
            else:
                raise ValueError(f"unsupported command: {script}")
        except (ValueError, re.error) as exc:
            io.err(f"sed: {exc}\n")
            return 1
    status = 0
    for _label, data in _inputs(sh, io, "sed", args):
        if data is None:
            status = 2
            continue
        for raw in data.decode("utf-8", "surrogateescape").splitlines():
            line, deleted = raw, False
            for kind, regex, repl, flags in commands:
                if kind == "s":
                    new, n = regex.subn(repl, line, count=0 if "g" in flags else 1)
                    line = new
                    if n and "p" in flags:
                        io.out(line + "\n")
                elif kind == "p":
                    io.out(line + "\n")
                elif kind == "d":
                    deleted = True
                    break
            if not quiet and not deleted:
                io.out(line + "\n")
    return status


@command("cut")
def _cut(sh: Shell, argv: list[str], io: IO) -> int:
    args, delim, fields = argv[1:], "\t", None
    while args and args[0].startswith("-") and args[0] != "-":
        flag = args.pop(0)
        if flag.startswith("-d"):
            delim = flag[2:] or args.pop(0)
        elif flag.startswith("-f"):
            fields = flag[2:] or args.pop(0)
        else:
            io.err(f"cut: unsupported option {flag}\n")
            return 1
    if fields is None:
        io.err("cut: needs -f\n")
        return 1
    wanted = set()
    for part in fields.split(","):
        lo, _, hi = part.partition("-")
        wanted.update(range(int(lo), int(hi or lo) + 1))
    for _label, data in _inputs(sh, io, "cut", args):
        for line in (data or b"").decode("utf-8", "surrogateescape").splitlines():
            cols = line.split(delim)
            io.out((delim.join(c for i, c in enumerate(cols, 1) if i in wanted) if len(cols) > 1 else line) + "\n")
    return 0


@command("nohup")
def _nohup(sh: Shell, argv: list[str], io: IO) -> int:
    return sh.call(argv[1:], io) if len(argv) > 1 else 125
