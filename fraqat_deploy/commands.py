"""Which run a command works on when ``--run`` is not given: the newest suitable run under ``runs/``.

``fraqat-deploy compile sana`` and ``fraqat-deploy bench --device s25u`` are meant to work as typed: without
``--run`` a command takes the newest run (by the time its ``run.json`` was last written) of that model that has
what the command needs, and says which it took. ``compile <model>`` with no trained run at all quantizes the
model's default full-precision source without training (PTQ) into ``runs/<model>-ptq``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fraqat_deploy.errors import FraqatError, InputError
from fraqat_deploy.runs import RunDir

#: where runs are looked for (relative to the working folder, like the README's ``--out runs/...``)
RUNS = Path("runs")
Need = Literal["trained", "exported", "compiled"]


@dataclass(frozen=True)
class FoundRun:
    path: Path
    adapter: str
    manifest: dict[str, Any]


def _has(manifest: dict[str, Any], need: Need, target: str | None) -> bool:
    stages = manifest.get("stages", {})
    done = lambda name: stages.get(name, {}).get("status") == "done"  # noqa: E731
    if need == "trained":
        return done("train")
    if need == "exported":
        return done("export")
    if target:
        return done(f"compile/{target}")
    return any(done(name) for name in stages if name.startswith("compile/"))


def find_runs(model: str | None, need: Need, *, target: str | None = None, root: Path = RUNS) -> list[FoundRun]:
    """Runs of ``model`` (any model when None) under ``root`` that have ``need``, newest first. Damaged run
    folders are passed over (the command that names one reports it)."""
    from fraqat_deploy.models import get_adapter

    adapter = get_adapter(model).name if model else None
    found = []
    for manifest_path in list(root.glob("*/run.json")) + list(root.glob("*/baselines/*/run.json")):
        try:
            manifest = RunDir(manifest_path.parent).manifest()
            mtime = manifest_path.stat().st_mtime
        except (FraqatError, OSError):
            continue
        name = manifest.get("model", {}).get("adapter")
        if name and (adapter is None or name == adapter) and _has(manifest, need, target):
            found.append((mtime, FoundRun(manifest_path.parent, name, manifest)))
    return [f for _, f in sorted(found, key=lambda x: x[0], reverse=True)]


def newest_run(model: str | None, need: Need, *, target: str | None = None, root: Path = RUNS) -> FoundRun | None:
    runs = find_runs(model, need, target=target, root=root)
    return runs[0] if runs else None


def has_default_source(model: str) -> bool:
    """Does ``model`` load without ``--source`` (the embedded digits-Sana and tiny-Gemma do; Sana, Gemma don't)?"""
    from fraqat_deploy.models import get_adapter
    from fraqat_deploy.models.base import ModelAdapter

    return type(get_adapter(model))._default_model is not ModelAdapter._default_model


def ptq_folder(model: str, root: Path = RUNS) -> Path:
    from fraqat_deploy.models import get_adapter

    return root / f"{get_adapter(model).name}-ptq"


def no_source_error(model: str) -> InputError:
    from fraqat_deploy.models import get_adapter

    adapter = get_adapter(model)
    return InputError(
        f"no trained {adapter.name} run under {RUNS}/ and no {adapter.name} weights given to quantize",
        f"pass --source <the full-precision {adapter.name} folder or hub id> (PTQ), or --run <a run>, or train "
        f"one first: fraqat-deploy train {adapter.name} --source ... --out {RUNS}/{adapter.name}")
