"""The ``sync:`` service: STAT/STA2/LST2, LIST/LIS2, SEND (push), RECV (pull) and QUIT, as adbd speaks them.

Requests are ``id + uint32 length + path``. SEND's path is ``"<path>,<mode>"``, followed by DATA chunks of at
most 64 KiB and DONE carrying the mtime; the answer is OKAY or FAIL with a message. On any failure the
partial file is removed and, as adbd does, the service reads the rest of the upload before answering FAIL
and ending the sync session.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from typing import TYPE_CHECKING

from .transport import Disconnected, Stream

if TYPE_CHECKING:
    from .phone import VirtualPhone

SYNC_DATA_MAX = 64 * 1024
STAT_V1 = struct.Struct("<4sIII")
STAT_V2 = struct.Struct("<4sIQQIIIIQqqq")
DENT_V1 = struct.Struct("<4sIIII")
DENT_V2 = struct.Struct("<4sIQQIIIIQqqqI")
ID_LEN = struct.Struct("<4sI")


def _fail(stream: Stream, message: str) -> None:
    data = message.encode()
    stream.write(ID_LEN.pack(b"FAIL", len(data)) + data)


def _v2_fields(st: os.stat_result | None, error: int) -> tuple:
    if st is None:
        return (error, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    return (0, st.st_dev, st.st_ino, st.st_mode, st.st_nlink, 2000, 1015, st.st_size,
            int(st.st_atime), int(st.st_mtime), int(st.st_ctime))


def serve_sync(phone: VirtualPhone, stream: Stream) -> None:
    while True:
        try:
            request, length = ID_LEN.unpack(stream.read_exact(8))
        except Disconnected:
            return
        if request == b"QUIT":
            return
        if length > 1024:
            _fail(stream, "path too long")
            return
        path = stream.read_exact(length).decode("utf-8", "surrogateescape")
        phone.record("sync", f"{request.decode(errors='replace')} {path}")
        if request in (b"STAT", b"STA2", b"LST2"):
            _stat(phone, stream, request, path)
        elif request in (b"LIST", b"LIS2"):
            _list(phone, stream, request == b"LIS2", path)
        elif request == b"SEND":
            if not _send(phone, stream, path):
                return
        elif request == b"RECV":
            if not _recv(phone, stream, path):
                return
        else:
            _fail(stream, f"unknown command {request!r}")
            return


def _lookup(phone: VirtualPhone, path: str, follow: bool = True) -> tuple[os.stat_result | None, int]:
    try:
        host = phone.fs.host(path)
        return (os.stat(host) if follow else os.lstat(host)), 0
    except OSError as exc:
        return None, exc.errno or errno.ENOENT


def _stat(phone: VirtualPhone, stream: Stream, request: bytes, path: str) -> None:
    st, error = _lookup(phone, path, follow=request != b"LST2")
    if request == b"STAT":
        if st is None:
            stream.write(STAT_V1.pack(b"STAT", 0, 0, 0))
        else:
            stream.write(STAT_V1.pack(b"STAT", st.st_mode, st.st_size & 0xFFFFFFFF, int(st.st_mtime)))
    else:
        stream.write(STAT_V2.pack(request, *_v2_fields(st, error)))


def _list(phone: VirtualPhone, stream: Stream, v2: bool, path: str) -> None:
    entries: list[tuple[str, os.stat_result]] = []
    try:
        host = phone.fs.host(path)
        if host.is_dir():
            entries = [(".", os.stat(host)), ("..", os.stat(host if host == phone.fs.root else host.parent))]
            entries += [(entry.name, entry.stat(follow_symlinks=False)) for entry in sorted(os.scandir(host),
                                                                                           key=lambda e: e.name)]
    except OSError:
        entries = []
    batch = bytearray()
    for name, st in entries:
        raw = name.encode("utf-8", "surrogateescape")
        if v2:
            record = DENT_V2.pack(b"DNT2", *_v2_fields(st, 0), len(raw)) + raw
        else:
            record = DENT_V1.pack(b"DENT", st.st_mode, st.st_size & 0xFFFFFFFF, int(st.st_mtime), len(raw)) + raw
        if len(batch) + len(record) > stream.conn.max_payload:
            stream.write(bytes(batch))  # whole records per packet: adbutils reads entry headers with recv()
            batch.clear()
        batch += record
    done = DENT_V2.pack(b"DONE", *([0] * 12)) if v2 else DENT_V1.pack(b"DONE", 0, 0, 0, 0)
    stream.write(bytes(batch) + done)


def _send(phone: VirtualPhone, stream: Stream, spec: str) -> bool:
    path, _, mode_text = spec.rpartition(",")
    if not path:
        path, mode_text = spec, "33188"
    try:
        mode = int(mode_text)
    except ValueError:
        mode = 0o100644
    out = None
    error = ""
    try:
        if stat.S_ISLNK(mode):
            raise OSError(errno.EPERM, "symlinks are not supported by the virtual phone")
        norm = phone.fs.check_writable(path)
        try:
            phone.fs.host(norm).parent.mkdir(parents=True, exist_ok=True)  # fixed_push_mkdir
        except OSError as exc:
            raise OSError(exc.errno, f"secure_mkdirs failed: {os.strerror(exc.errno or errno.EIO)}") from None
        out = phone.fs.open_write(norm)
    except OSError as exc:
        error = exc.strerror if (exc.strerror or "").startswith("secure_mkdirs") else \
            f"couldn't create file: {exc.strerror}"
    received = 0
    try:
        while True:
            request, length = ID_LEN.unpack(stream.read_exact(8))
            if request == b"DONE":
                break
            if request != b"DATA" or length > SYNC_DATA_MAX:
                error = error or "invalid data message"
                if out is not None:
                    out.discard()
                _fail(stream, error)
                return False
            data = stream.read_exact(length)
            received += length
            limit = phone.drop_after_push_bytes
            if limit is not None and received >= limit:
                phone.drop_after_push_bytes = None  # one shot: the phone can be reconnected afterwards
                stream.conn.drop()
                raise Disconnected("dropped mid-push by the fault knob")
            if out is not None and not error:
                try:
                    out.write(data)
                except OSError as exc:
                    error = f"write failed: {exc.strerror}"
        mtime = length
    except Disconnected:
        if out is not None:
            out.discard()
        raise
    if error:
        if out is not None:
            out.discard()
        _fail(stream, error)
        return False
    assert out is not None
    out.close()
    os.chmod(out.host, (mode & 0o777) | 0o600)
    os.utime(out.host, (mtime, mtime))
    stream.write(ID_LEN.pack(b"OKAY", 0))
    return True


def _recv(phone: VirtualPhone, stream: Stream, path: str) -> bool:
    try:
        host = phone.fs.host(path)
        if host.is_dir():
            raise OSError(errno.EISDIR, os.strerror(errno.EISDIR))
        handle = open(host, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        _fail(stream, f"open failed: {exc.strerror}")
        return False
    with handle:
        batch = bytearray()
        while True:
            chunk = handle.read(SYNC_DATA_MAX)
            if not chunk:
                break
            batch += ID_LEN.pack(b"DATA", len(chunk)) + chunk
            if len(batch) >= stream.conn.max_payload:
                stream.write(bytes(batch))
                batch.clear()
    stream.write(bytes(batch) + ID_LEN.pack(b"DONE", 0))
    return True
