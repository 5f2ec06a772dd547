"""Runs parsed shell commands against the phone: nothing here ever starts a host process.

Every command is a Python double registered with ``@command`` (``coreutils.py``, ``android.py``); file names
reach the host only through ``Sandbox.host``. Words are expanded as sh does (parameters, command
substitution, field splitting of unquoted results, globbing against the sandbox).
"""

from __future__ import annotations

import os
import posixpath
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .expand import Expansions
from .shlang import SH, AndOr, For, FuncDef, Group, If, Pipeline, Redir, Seq, ShellSyntaxError, Simple, While, parse
from .transport import Disconnected

if TYPE_CHECKING:
    from .phone import VirtualPhone

BIN_DIRS = {"/system/bin", "/system/xbin", "/vendor/bin", "/bin", "/sbin", "/product/bin", "/system_ext/bin",
            "/apex/com.android.runtime/bin"}
DEFAULT_ENV = {
    "PATH": "/product/bin:/apex/com.android.runtime/bin:/apex/com.android.art/bin:/system_ext/bin:/system/bin:"
            "/system/xbin:/odm/bin:/vendor/bin:/vendor/xbin",
    "HOME": "/", "USER": "shell", "LOGNAME": "shell", "HOSTNAME": "localhost", "SHELL": SH, "TMPDIR": "/data/local/tmp",
    "ANDROID_DATA": "/data", "ANDROID_ROOT": "/system", "EXTERNAL_STORAGE": "/sdcard", "IFS": " \t\n",
}

CommandFn = Callable[["Shell", list[str], "IO"], int]
COMMANDS: dict[str, CommandFn] = {}


def command(*names: str) -> Callable[[CommandFn], CommandFn]:
    def register(fn: CommandFn) -> CommandFn:
        for name in names:
            COMMANDS[name] = fn
        return fn
    return register


class ShellExit(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class Cancelled(Exception):
    """The host went away (stream closed): stop running."""


class _Return(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


class _Loop(Exception):
    def __init__(self, kind: str) -> None:
        self.kind = kind


# ---- standard streams
class Out:
    def write(self, data: bytes) -> None:
        raise NotImplementedError


class NullOut(Out):
    def write(self, data: bytes) -> None:
        pass


class BufferOut(Out):
    def __init__(self) -> None:
        self.buffer = bytearray()

    def write(self, data: bytes) -> None:
        self.buffer += data


class CallbackOut(Out):
    def __init__(self, send: Callable[[bytes], None]) -> None:
        self.send = send

    def write(self, data: bytes) -> None:
        if data:
            self.send(data)


class FileOut(Out):
    def __init__(self, handle) -> None:
        self.handle = handle

    def write(self, data: bytes) -> None:
        self.handle.write(data)


class In:
    """Standard input: ``read`` gives everything up to EOF, ``readline`` one line."""

    def __init__(self, data: bytes = b"", more: Callable[[], bytes] | None = None) -> None:
        self.buffer = bytearray(data)
        self.more = more

    def _fill(self) -> bool:
        if self.more is None:
            return False
        chunk = self.more()
        if not chunk:
            self.more = None
            return False
        self.buffer += chunk
        return True

    def read(self, n: int = -1) -> bytes:
        while (n < 0 or len(self.buffer) < n) and self._fill():
            pass
        n = len(self.buffer) if n < 0 else min(n, len(self.buffer))
        out = bytes(self.buffer[:n])
        del self.buffer[:n]
        return out

    def readline(self) -> bytes:
        while b"\n" not in self.buffer and self._fill():
            pass
        end = self.buffer.find(b"\n")
        end = len(self.buffer) if end < 0 else end + 1
        out = bytes(self.buffer[:end])
        del self.buffer[:end]
        return out


@dataclass
class IO:
    stdin: In
    stdout: Out
    stderr: Out

    def out(self, text: str) -> None:
        self.stdout.write(text.encode("utf-8", "surrogateescape"))

    def err(self, text: str) -> None:
        self.stderr.write(text.encode("utf-8", "surrogateescape"))


class Shell(Expansions):
    """One ``sh`` process: variables, functions, cwd and the last status."""

    def __init__(self, phone: VirtualPhone, cancel: threading.Event | None = None) -> None:
        self.phone = phone
        self.fs = phone.fs
        self.cancel = cancel or threading.Event()
        self.vars: dict[str, str] = dict(DEFAULT_ENV)
        self.funcs: dict[str, object] = {}
        self.args: list[str] = []
        self.cwd = "/"
        self.status = 0
        self.errexit = False
        self.exited = False  # ``exit`` ran: an interactive session ends
        self.stderr: Out = NullOut()
        self.pid = phone.new_pid()

    def subshell(self) -> Shell:
        child = Shell.__new__(Shell)
        child.__dict__.update(self.__dict__)
        child.vars, child.funcs, child.args = dict(self.vars), dict(self.funcs), list(self.args)
        return child

    # ---- entry points
    def run(self, src: str, io: IO) -> int:
        """Run a whole command line or script; returns the exit status."""
        try:
            return self.exec_seq(parse(src), io)
        except ShellSyntaxError as exc:  # also raised while expanding: ${x?}, $((1/0)), bad ${...}
            io.err(f"{SH}: {exc}\n")
            return 1 if "syntax" in str(exc) else 2
        except ShellExit as done:
            self.exited = True
            return done.code & 0xFF
        except _Return as ret:
            return ret.code
        except _Loop:
            return self.status

    def path(self, path: str) -> str:
        return self.fs.normalize(path, self.cwd)

    def host(self, path: str):
        return self.fs.host(path, self.cwd)

    def check(self) -> None:
        if self.cancel.is_set():
            raise Cancelled()

    # ---- tree walking
    def exec_seq(self, seq: Seq, io: IO, condition: bool = False) -> int:
        status = 0
        for node, background in seq.items:
            if background:
                child = self.subshell()
                # as on Android, a job sent to the background (with its output redirected) outlives the adb shell
                # session that started it: it does not share the session's cancel event
                child.cancel = threading.Event()
                bg_io = IO(In(), io.stdout, io.stderr)
                threading.Thread(target=self._background, args=(child, node, bg_io), daemon=True).start()
                status = 0
            else:
                status = self.exec_and_or(node, io)
                simple = not node.rest and not node.first.negate
                if self.errexit and status != 0 and simple and not condition:
                    raise ShellExit(status)
            self.status = status
        return status

    @staticmethod
    def _background(child: Shell, node: AndOr, io: IO) -> None:
        try:
            child.exec_and_or(node, io)
        except (ShellExit, Cancelled, Disconnected, _Return, _Loop):
            pass

    def exec_and_or(self, node: AndOr, io: IO) -> int:
        status = self.exec_pipeline(node.first, io)
        for op, pipeline in node.rest:
            self.status = status
            if (op == "&&") == (status == 0):
                status = self.exec_pipeline(pipeline, io)
        return status

    def exec_pipeline(self, pipeline: Pipeline, io: IO) -> int:
        stdin = io.stdin
        status = 0
        for index, node in enumerate(pipeline.commands):
            last = index == len(pipeline.commands) - 1
            stdout = io.stdout if last else BufferOut()
            status = self.exec_command(node, IO(stdin, stdout, io.stderr))
            if not last:
                stdin = In(bytes(stdout.buffer))
        if pipeline.negate:
            status = int(status == 0)
        self.status = status
        return status

    def exec_command(self, node, io: IO) -> int:
        self.check()
        self.stderr = io.stderr  # where command substitutions report errors
        if isinstance(node, Simple):
            return self.exec_simple(node, io)
        if isinstance(node, FuncDef):
            self.funcs[node.name] = node.body
            return 0
        try:
            io, opened = self.redirect(getattr(node, "redirs", []), io)
        except OSError as exc:
            io.err(f"{SH}: can't create {exc.filename}: {exc.strerror}\n")
            return 1
        try:
            if isinstance(node, Group):
                if not node.subshell:
                    return self.exec_seq(node.body, io)
                child = self.subshell()
                try:
                    return child.exec_seq(node.body, io)
                except ShellExit as done:
                    return done.code
            if isinstance(node, If):
                for cond, body in node.clauses:
                    if self.exec_seq(cond, io, condition=True) == 0:
                        return self.exec_seq(body, io)
                return self.exec_seq(node.otherwise, io) if node.otherwise else 0
            if isinstance(node, For):
                values = self.args if node.words is None else [f for w in node.words for f in self.expand(w)]
                status = 0
                for value in values:
                    self.check()
                    self.vars[node.name] = value
                    try:
                        status = self.exec_seq(node.body, io)
                    except _Loop as signal:
                        if signal.kind == "break":
                            break
                return status
            if isinstance(node, While):
                status = 0
                while True:
                    self.check()
                    if (self.exec_seq(node.cond, io, condition=True) == 0) == node.until:
                        return status
                    try:
                        status = self.exec_seq(node.body, io)
                    except _Loop as signal:
                        if signal.kind == "break":
                            return status
        finally:
            _close_files(opened)
        raise TypeError(f"unknown shell node {node!r}")

    def exec_simple(self, node: Simple, io: IO) -> int:
        argv = [field for word in node.words for field in self.expand(word)]
        values = [(name, self.expand_one(word)) for name, word in node.assigns]
        try:
            io, opened = self.redirect(node.redirs, io)
        except OSError as exc:
            io.err(f"{SH}: can't create {exc.filename}: {exc.strerror}\n")
            return 1
        try:
            if not argv:
                self.vars.update(values)
                return self.status if node.words else 0
            saved = {name: self.vars.get(name) for name, _ in values}
            self.vars.update(values)
            try:
                return self.call(argv, io)
            finally:
                for name, old in saved.items():
                    if old is None:
                        self.vars.pop(name, None)
                    else:
                        self.vars[name] = old
        finally:
            _close_files(opened)

    def call(self, argv: list[str], io: IO) -> int:
        name = argv[0]
        self.phone.record("exec", " ".join(argv))
        if name in self.funcs:
            saved, self.args = self.args, argv[1:]
            try:
                return self.exec_command(self.funcs[name], io)
            except _Return as ret:
                return ret.code
            finally:
                self.args = saved
        fn = COMMANDS.get(name)
        if fn is None and "/" in name:
            norm = self.path(name)
            if posixpath.dirname(norm) in BIN_DIRS:
                fn = COMMANDS.get(posixpath.basename(norm))
            elif self.host(norm).is_file():
                return COMMANDS["sh"](self, ["sh", *argv], io)
        if fn is None:
            io.err(f"{SH}: {name}: inaccessible or not found\n")
            return 127
        try:
            return int(fn(self, argv, io) or 0)
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            io.err(f"{posixpath.basename(name)}: {where}{exc.strerror}\n")
            return 1
        except (ValueError, IndexError, KeyError, StopIteration) as exc:  # bad arguments, as a tool would say
            io.err(f"{posixpath.basename(name)}: bad arguments: {exc}\n")
            return 1

    def redirect(self, redirs: list[Redir], io: IO) -> tuple[IO, list[Out]]:
        """The command's standard streams after its redirections, and the files it opened (to close)."""
        if not redirs:
            return io, []
        fds: dict[int, object] = {0: io.stdin, 1: io.stdout, 2: io.stderr}
        opened: list[Out] = []
        for redir in redirs:
            target = self.expand_one(redir.target)
            op = redir.op
            if op in (">", ">|", ">>", "&>"):
                out = self.open_out(target, append=op == ">>")
                opened.append(out)
                for fd in ((1, 2) if op == "&>" else (1 if redir.fd is None else redir.fd,)):
                    fds[fd] = out
            elif op == "<":
                fds[0 if redir.fd is None else redir.fd] = In(self.read_file(target))
            elif op == ">&":
                fd = 1 if redir.fd is None else redir.fd
                if target == "-":
                    fds[fd] = NullOut()
                elif target.isdigit():
                    fds[fd] = fds.get(int(target), NullOut())
                else:
                    fds[fd] = self.open_out(target, append=False)
                    opened.append(fds[fd])
            elif op == "<&":
                fds[0 if redir.fd is None else redir.fd] = fds.get(int(target), In()) if target.isdigit() else In()
        return IO(fds[0], fds[1], fds[2]), opened  # type: ignore[arg-type]

    def open_out(self, target: str, append: bool) -> Out:
        if self.path(target) == "/dev/null":
            return NullOut()
        return FileOut(self.fs.open_write(target, self.cwd, append=append))

    def read_file(self, path: str) -> bytes:
        """A file's bytes, including the virtual ``/proc`` and ``/dev`` files."""
        norm = self.path(path)
        virtual = self.phone.virtual_file(norm)
        if virtual is not None:
            return virtual
        host = self.fs.host(norm)
        if host.is_dir():
            raise OSError(21, os.strerror(21), path)
        with open(host, "rb") as handle:
            return handle.read()


def _close_files(opened: list[Out]) -> None:
    for stream in opened:
        if isinstance(stream, FileOut):
            try:
                stream.handle.close()
            except OSError:
                pass
