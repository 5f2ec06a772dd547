"""A fresh install gets what the tests ran: every dependency is pinned to a tested range, and the installed
versions (what these tests run on) fall inside it."""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

from packaging.requirements import Requirement

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
#: the packages whose behaviour the compile records, exported graphs and the app depend on
CORE = ("torch", "onnx", "onnxscript", "onnxruntime", "onnxruntime-qnn", "diffusers", "transformers", "qai-hub")


def _requirements() -> dict[str, Requirement]:
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    return {Requirement(d).name.lower(): Requirement(d) for d in deps}


def test_every_dependency_has_a_tested_range() -> None:
    reqs = _requirements()
    for name, req in reqs.items():
        ops = {s.operator for s in req.specifier}
        assert ">=" in ops and "<" in ops, f"{name} is not pinned to a range: {req}"
    for name in CORE:
        assert name in reqs, name


def test_the_installed_versions_are_inside_the_pins() -> None:
    for name, req in _requirements().items():
        if req.marker is not None and not req.marker.evaluate():
            continue
        installed = importlib.metadata.version(name)
        assert req.specifier.contains(installed, prereleases=True), f"{name} {installed} is outside {req.specifier}"
