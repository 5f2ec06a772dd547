"""The run directory and its manifest ``run.json``: versions, arguments, output hashes, stage status."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fraqat_deploy import __version__, threads
from fraqat_deploy.errors import InputError

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
        return read_json(self.manifest_path, "restore it from a copy, or train again into a new --out folder")

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


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
