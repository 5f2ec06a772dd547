"""The run directory and its manifest ``run.json``: versions, arguments, output hashes, stage status."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fraqat_deploy import __version__, threads
from fraqat_deploy.errors import FraqatError, InputError

STATUSES = ("running", "done", "failed", "interrupted")
#: the shape every reader of run.json relies on (valid JSON of another shape is as damaged as broken JSON)
RUN_SCHEMA = {
    "type": "object",
    "required": ["stages"],
    "properties": {
        "stages": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "required": ["status"],
                "properties": {"status": {"enum": list(STATUSES)}, "reason": {"type": "string"}},
            },
        },
        "model": {"type": "object", "required": ["adapter", "spec"], "properties": {"adapter": {"type": "string"}}},
        "baselines": {"type": "array", "items": {"type": "string"}},
    },
}
DAMAGED_FIX = "restore it from a copy, or train again into a new --out folder"

LIBRARIES = ("torch", "diffusers", "transformers", "safetensors", "onnx", "onnxruntime", "onnxruntime-qnn", "numpy")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write through a temporary file and a rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)


def read_json(path: Path, fix: str) -> Any:
    """A JSON file of a run; a damaged one is a one-line error saying how to write it again."""
    try:
        return json.loads(Path(path).read_text())
    except ValueError as e:
        raise InputError(f"{path} is damaged (not valid JSON: {e})", fix) from None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def environment() -> dict[str, Any]:
    libs = {}
    for name in LIBRARIES:
        try:
            libs[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            libs[name] = None
    return {
        "fraqat_deploy": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "libraries": libs,
        "threads": threads.current().to_dict(),
    }


class RunDir:
    """``runs/<run>/``: one folder per stage and ``run.json`` describing them."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.manifest_path = self.path / "run.json"

    def exists(self) -> bool:
        return self.manifest_path.is_file()

    def manifest(self) -> dict[str, Any]:
        if not self.exists():
            return {"tool": "fraqat-deploy", "created": _now(), "stages": {}}
        data = read_json(self.manifest_path, DAMAGED_FIX)
        check_manifest(data, self.manifest_path)
        return data

    def stage_dir(self, stage: str) -> Path:
        d = self.path / stage
        d.mkdir(parents=True, exist_ok=True)
        return d

    def update(self, **top: Any) -> dict[str, Any]:
        m = self.manifest()
        m.update(top)
        write_json_atomic(self.manifest_path, m)
        return m

    def update_stage(self, stage: str, status: str, **info: Any) -> None:
        m = self.manifest()
        entry = m["stages"].setdefault(stage, {})
        entry.update(info)
        entry["status"] = status
        entry["updated"] = _now()
        entry.setdefault("started", entry["updated"])
        if status == "running":
            entry["started"] = entry["updated"]
            entry["environment"] = environment()
        write_json_atomic(self.manifest_path, m)

    def record_outputs(self, stage: str, files: list[Path]) -> None:
        hashes = {str(f.relative_to(self.path)): sha256_file(f) for f in files if f.is_file()}
        self.update_stage(stage, self.manifest()["stages"].get(stage, {}).get("status", "done"), outputs=hashes)


    # ---- one writer per stage; a stage that stops says why -----------------------------------------------
    def lock(self, stage: str) -> StageLock:
        return StageLock(self.path / ".locks" / (stage.replace("/", "__") + ".lock"), self.path, stage)

    @contextlib.contextmanager
    def guard(self, stage: str, *, lock: bool = True) -> Iterator[None]:
        """Hold ``stage``'s lock while it runs; if it stops on an error or an interruption while ``run.json`` says
        it is running, record ``failed`` or ``interrupted`` with the reason."""
        with self.lock(stage) if lock else contextlib.nullcontext():
            try:
                yield
            except BaseException as e:
                self._record_stop(stage, e)
                raise

    def _record_stop(self, stage: str, e: BaseException) -> None:
        if isinstance(e, SystemExit) and not e.code:
            return
        try:
            entry = self.manifest()["stages"].get(stage) if self.exists() else None
        except FraqatError:
            return  # a damaged run.json is reported as such, not overwritten
        if not entry or entry.get("status") not in ("running", "failed") or \
                (entry["status"] == "failed" and entry.get("reason")):
            return
        if isinstance(e, KeyboardInterrupt):
            status, reason = "interrupted", getattr(e, "reason", None) or "Ctrl-C"
        elif isinstance(e, FraqatError):
            status, reason = "failed", e.one_line()
        else:
            status, reason = "failed", f"{type(e).__name__}: {e}"
        self.update_stage(stage, status, reason=reason)


def check_manifest(data: Any, path: Path) -> None:
    import jsonschema

    try:
        jsonschema.validate(data, RUN_SCHEMA)
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "top level"
        raise InputError(f"{path} is damaged (at {where}: {e.message})", DAMAGED_FIX) from None


class StageLock:
    """An exclusive lock on one stage of a run (``fcntl.flock``: released by the OS if the process dies)."""

    def __init__(self, path: Path, run: Path, stage: str) -> None:
        self.path, self.run, self.stage = path, run, stage
        self._fd: int | None = None

    def __enter__(self) -> StageLock:
        self._new_run = not self.run.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            self._new_run = False
            raise InputError(f"{self.run} is busy: its {self.stage} stage is being written by {holder}",
                             "wait for that process to finish (or stop it), or pass another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"process {os.getpid()} ({' '.join(sys.argv[:3])[:120]})".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if self._new_run and {p.name for p in self.run.iterdir()} == {".locks"}:  # a refusal leaves nothing
            shutil.rmtree(self.run, ignore_errors=True)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
