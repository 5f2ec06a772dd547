"""The services a host can OPEN: ``shell[,v2,...]:``, ``exec:`` and ``sync:``; anything else is refused (CLSE)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .interp import IO, CallbackOut, Cancelled, In, Shell
from .sync import serve_sync
from .transport import Disconnected, Stream

if TYPE_CHECKING:
    from .phone import VirtualPhone

# shell protocol v2 packet ids
STDIN, STDOUT, STDERR, EXIT, CLOSE_STDIN, WINDOW_SIZE = range(6)


def open_service(phone: VirtualPhone, name: str) -> Callable[[Stream], None] | None:
    phone.record("open", name)
    service, _, arg = name.partition(":")
    options = service.split(",")
    if options[0] == "shell":
        return lambda stream: serve_shell(phone, stream, arg, v2="v2" in options[1:])
    if service == "exec":
        return lambda stream: serve_shell(phone, stream, arg, v2=False)
    if service == "sync":
        return lambda stream: serve_sync(phone, stream)
    return None


def _packet(kind: int, data: bytes) -> bytes:
    return bytes([kind]) + len(data).to_bytes(4, "little") + data


def _v2_stdin(stream: Stream) -> Callable[[], bytes]:
    def more() -> bytes:
        while True:
            try:
                header = stream.read_exact(5)
                data = stream.read_exact(int.from_bytes(header[1:], "little"))
            except Disconnected:
                return b""
            if header[0] == STDIN and data:
                return data
            if header[0] == CLOSE_STDIN:
                return b""
    return more


def serve_shell(phone: VirtualPhone, stream: Stream, command: str, v2: bool) -> None:
    """Run a command line (or, when empty, lines read from stdin) through the phone's shell."""
    phone.record("shell", command)
    if v2:
        io = IO(In(more=_v2_stdin(stream)), CallbackOut(lambda d: stream.write(_packet(STDOUT, d))),
                CallbackOut(lambda d: stream.write(_packet(STDERR, d))))
    else:
        io = IO(In(more=stream.read_some), CallbackOut(stream.write), CallbackOut(stream.write))
    shell = Shell(phone, cancel=stream.closed)
    try:
        if command.strip():
            status = shell.run(command, io)
        else:
            status = 0
            while not shell.exited and (line := io.stdin.readline()):
                status = shell.run(line.decode("utf-8", "surrogateescape"), io)
    except Cancelled:
        return
    if v2:
        stream.write(_packet(EXIT, bytes([status & 0xFF])))
