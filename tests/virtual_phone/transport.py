"""The device side of the adb transport: 24-byte packets, the CNXN/AUTH handshake and per-service streams.

A packet header is six little-endian uint32: command, arg0, arg1, payload length, payload checksum and
``command ^ 0xffffffff``. The host opens a service with OPEN(host-id, 0, "name\\0"); the device answers
OKAY(device-id, host-id) or CLSE. Each WRTE must be acknowledged by an OKAY before the writer sends the next
one: this class acknowledges host data only when a service has consumed it (back-pressure), and waits for
the host's OKAY before each of its own writes.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .phone import VirtualPhone

A_SYNC, A_CNXN, A_OPEN, A_OKAY, A_CLSE, A_WRTE, A_AUTH, A_STLS = (
    int.from_bytes(name, "little") for name in (b"SYNC", b"CNXN", b"OPEN", b"OKAY", b"CLSE", b"WRTE", b"AUTH", b"STLS")
)
A_VERSION = 0x01000001  # "skip checksum" version
MAX_PAYLOAD = 256 * 1024
AUTH_TOKEN, AUTH_SIGNATURE, AUTH_RSAPUBLICKEY = 1, 2, 3
HEADER = struct.Struct("<6I")

log = logging.getLogger(__name__)


class Disconnected(Exception):
    """The stream or the whole connection is gone."""


class Stream:
    """One open service: a byte pipe in each direction with adb's one-packet-in-flight flow control."""

    def __init__(self, conn: Connection, local_id: int, remote_id: int) -> None:
        self.conn = conn
        self.local_id = local_id
        self.remote_id = remote_id
        self._cond = threading.Condition()
        self._inbox: deque[bytes] = deque()
        self._buffer = bytearray()
        self._unacked = False
        self.closed = threading.Event()

    # called by the connection's reader thread
    def _feed(self, data: bytes) -> None:
        with self._cond:
            self._inbox.append(data)
            self._cond.notify_all()

    def _okay(self) -> None:
        with self._cond:
            self._unacked = False
            self._cond.notify_all()

    def _remote_closed(self) -> None:
        with self._cond:
            self.closed.set()
            self._cond.notify_all()

    # called by the service thread
    def recv(self) -> bytes:
        """The next packet's payload from the host; b"" once the stream is closed and drained."""
        with self._cond:
            while not self._inbox and not self.closed.is_set():
                self._cond.wait(0.5)
            if not self._inbox:
                return b""
            data = self._inbox.popleft()
        if not self.closed.is_set():
            self.conn.send(A_OKAY, self.local_id, self.remote_id)
        return data

    def read_exact(self, n: int) -> bytes:
        """Exactly ``n`` bytes; raises Disconnected when the stream ends first."""
        while len(self._buffer) < n:
            data = self.recv()
            if not data:
                raise Disconnected("stream closed")
            self._buffer += data
        out = bytes(self._buffer[:n])
        del self._buffer[:n]
        return out

    def read_some(self) -> bytes:
        """Whatever is buffered, or the next packet; b"" at the end."""
        if self._buffer:
            out = bytes(self._buffer)
            self._buffer.clear()
            return out
        return self.recv()

    def write(self, data: bytes) -> None:
        size = self.conn.max_payload
        for start in range(0, len(data), size):
            chunk = data[start:start + size]
            with self._cond:
                while self._unacked and not self.closed.is_set():
                    self._cond.wait(0.5)
                if self.closed.is_set():
                    raise Disconnected("stream closed by the host")
                self._unacked = True
            self.conn.send(A_WRTE, self.local_id, self.remote_id, chunk)

    def close(self) -> None:
        if not self.closed.is_set():
            self.closed.set()
            try:
                self.conn.send(A_CLSE, self.local_id, self.remote_id)
            except Disconnected:
                pass
        self.conn._forget(self.local_id)


ServiceOpener = Callable[["VirtualPhone", str], "Callable[[Stream], None] | None"]


class Connection:
    """One TCP connection from the adb server; a reader thread dispatches packets, services run in threads."""

    def __init__(self, phone: VirtualPhone, sock: socket.socket, open_service: ServiceOpener) -> None:
        self.phone = phone
        self.sock = sock
        self.open_service = open_service
        self.max_payload = 4096
        self.online = False
        self.dead = threading.Event()
        self._send_lock = threading.Lock()
        self._streams: dict[int, Stream] = {}
        self._streams_lock = threading.Lock()
        self._next_id = 1
        self.thread = threading.Thread(target=self._run, name=f"vphone-{phone.port}-conn", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def send(self, command: int, arg0: int, arg1: int, data: bytes = b"") -> None:
        if self.dead.is_set():
            raise Disconnected("connection dropped")
        header = HEADER.pack(command, arg0, arg1, len(data), sum(data) & 0xFFFFFFFF, command ^ 0xFFFFFFFF)
        try:
            with self._send_lock:
                self.sock.sendall(header + data)
        except OSError as exc:
            self.drop()
            raise Disconnected(str(exc)) from exc

    def drop(self) -> None:
        """Cut the TCP connection at once, as a pulled cable does."""
        if self.dead.is_set():
            return
        self.dead.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        with self._streams_lock:
            streams = list(self._streams.values())
            self._streams.clear()
        for stream in streams:
            stream._remote_closed()

    def _forget(self, local_id: int) -> None:
        with self._streams_lock:
            self._streams.pop(local_id, None)

    def _recv_exact(self, n: int) -> bytes:
        chunks, left = [], n
        while left:
            chunk = self.sock.recv(left)
            if not chunk:
                raise Disconnected("host closed the connection")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def _run(self) -> None:
        try:
            while not self.dead.is_set():
                command, arg0, arg1, length, _check, magic = HEADER.unpack(self._recv_exact(HEADER.size))
                if magic != command ^ 0xFFFFFFFF:
                    raise Disconnected("bad packet magic")
                self._dispatch(command, arg0, arg1, self._recv_exact(length) if length else b"")
        except (Disconnected, OSError):
            pass
        except Exception:  # a bug in the double must not hang the test: log it and drop the connection
            log.exception("virtual phone transport failed")
        finally:
            self.drop()

    def _dispatch(self, command: int, arg0: int, arg1: int, data: bytes) -> None:
        if command == A_CNXN:
            self.max_payload = max(4096, min(arg1, MAX_PAYLOAD))
            if self.phone.authorized:
                self.online = True
                self.send(A_CNXN, A_VERSION, MAX_PAYLOAD, self.phone.banner().encode())
            else:
                self.send(A_AUTH, AUTH_TOKEN, 0, os.urandom(20))
        elif command == A_AUTH:
            # No key is ever accepted: a signature gets a fresh token; the public key would raise the
            # "Allow USB debugging?" dialog on a real phone, which nobody answers.
            if arg0 == AUTH_SIGNATURE:
                self.send(A_AUTH, AUTH_TOKEN, 0, os.urandom(20))
        elif not self.online:
            return
        elif command == A_OPEN:
            self._open(arg0, data.rstrip(b"\0").decode("utf-8", "surrogateescape"))
        elif command == A_WRTE:
            stream = self._streams.get(arg1)
            if stream is None:
                self.send(A_CLSE, 0, arg0)
            else:
                stream._feed(data)
        elif command == A_OKAY:
            stream = self._streams.get(arg1)
            if stream is not None:
                stream._okay()
        elif command == A_CLSE:
            with self._streams_lock:
                stream = self._streams.pop(arg1, None)
            if stream is not None:
                stream._remote_closed()

    def _open(self, remote_id: int, name: str) -> None:
        handler = self.open_service(self.phone, name)
        if handler is None:
            self.send(A_CLSE, 0, remote_id)
            return
        with self._streams_lock:
            local_id = self._next_id
            self._next_id += 1
            stream = Stream(self, local_id, remote_id)
            self._streams[local_id] = stream
        self.send(A_OKAY, local_id, remote_id)

        def serve() -> None:
            try:
                handler(stream)
            except Disconnected:
                pass
            except Exception:
                log.exception("virtual phone service %r failed", name)
            finally:
                stream.close()

        threading.Thread(target=serve, name=f"vphone-{self.phone.port}-{name}", daemon=True).start()
