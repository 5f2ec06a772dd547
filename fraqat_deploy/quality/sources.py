"""Where the outputs ``compare`` scores come from: the PyTorch models of a run (full precision and fake-quant), its
exported Q/DQ graphs on ONNX Runtime's CPU provider, and the devices it was benchmarked on (``bench/<device>/<id>/``:
the HTP simulator, phones, AI Hub)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fraqat_deploy.errors import ConfigError, InputError
from fraqat_deploy.runs import RunDir
from fraqat_deploy.train.load import TrainedModel

#: schedule name (as given to ``train``) -> how reports call the method
METHOD_LABELS = {"fractional": "FraQAT", "vqat": "vQAT", "constant:4": "vQAT", "ptq": "PTQ",
                 "integer": "integer schedule", "simple": "simple schedule"}

SIMULATOR_FOLDER = "sim"
#: AI Hub benches: ``bench/hub-<target>/`` (``bench/hub/`` accepted too), result.json with runtime "htp"
HUB_FOLDER = "hub"


def schedule_name(run: Path) -> str:
    """The schedule a run was trained with, as the user named it ("fractional", "ptq", "8:1,4:3"...)."""
    stage = RunDir(run).manifest().get("stages", {}).get("train", {})
    return str(stage.get("args", {}).get("schedule") or stage.get("schedule") or "?")


def method_label(schedule: str) -> str:
    return METHOD_LABELS.get(schedule.strip().lower(), f"schedule {schedule}")


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "x"


# -- devices ---------------------------------------------------------------------------------------------


@dataclass
class DeviceResult:
    """The latest bench of one device folder: ``bench/<folder>/<bench_id>/result.json``."""

    folder: str
    kind: str  # "simulator" | "phone" | "ai_hub"
    bench_id: str | None
    path: Path | None  # the bench folder
    result: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None  # why this device contributes nothing

    @property
    def where(self) -> str | None:
        """What an AI Hub bench measured where (its ``hub.json``): profile inputs, host-side pipeline, ..."""
        hub = self.path / "hub.json" if self.path and self.kind == "ai_hub" else None
        if hub is None or not hub.is_file():
            return None
        try:
            return json.loads(hub.read_text()).get("where")
        except ValueError:
            return None

    @property
    def label(self) -> str:
        device = self.result.get("device", {})
        if self.kind == "simulator":
            return "HTP simulator"
        if self.kind == "ai_hub":
            return f"AI Hub {device.get('model', '')}".strip()
        return f"{device.get('model') or 'phone'} ({self.folder})"


def device_kind(folder: str, result: Mapping[str, Any]) -> str:
    runtime = result.get("device", {}).get("runtime")
    if folder == SIMULATOR_FOLDER or runtime == "htp-simulator":
        return "simulator"
    if (folder == HUB_FOLDER or folder.startswith(f"{HUB_FOLDER}-")) and runtime == "htp":
        return "ai_hub"
    return "phone"


def device_results(run: Path) -> list[DeviceResult]:
    """The latest bench of every device folder under ``run/bench/`` (the id run.json records, else the newest
    folder with a result.json): simulator first, then phones by name, then AI Hub."""
    bench = Path(run) / "bench"
    if not bench.is_dir():
        return []
    stages = RunDir(run).manifest().get("stages", {})
    out = []
    for folder in sorted(p for p in bench.iterdir() if p.is_dir() and not p.name.startswith(".")):
        recorded = stages.get(f"bench/{folder.name}", {})
        bench_id = recorded.get("id")
        if not bench_id or not (folder / bench_id / "result.json").is_file():
            ids = sorted(p.name for p in folder.iterdir() if (p / "result.json").is_file())
            if not ids:
                out.append(DeviceResult(folder.name, "phone", bench_id, None,
                                        skipped=f"no result.json under bench/{folder.name} "
                                                f"({recorded.get('status', 'no bench recorded')})"))
                continue
            bench_id = ids[-1]
        path = folder / bench_id
        try:
            result = json.loads((path / "result.json").read_text())
        except (OSError, ValueError) as e:
            out.append(DeviceResult(folder.name, "phone", bench_id, path, skipped=f"unreadable result.json: {e}"))
            continue
        device = DeviceResult(folder.name, device_kind(folder.name, result), bench_id, path, result)
        if result.get("status") != "ok":
            error = result.get("error") or {}
            device.skipped = f"bench {bench_id} ended in error: {error.get('kind')}: {error.get('message')}"
        out.append(device)
    order = {"simulator": 0, "phone": 1, "ai_hub": 2}
    return sorted(out, key=lambda d: (order[d.kind], d.folder))


# -- models ----------------------------------------------------------------------------------------------


def same_model(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two run manifests' ``model`` entries are the same full-precision model."""
    if a.get("adapter") != b.get("adapter"):
        return False
    spec_a, spec_b = dict(a.get("spec", {})), dict(b.get("spec", {}))
    if spec_a.get("sha256") or spec_b.get("sha256"):
        return spec_a.get("sha256") == spec_b.get("sha256")
    return spec_a == spec_b


def check_baseline(run: Path, baseline: Path) -> None:
    if not RunDir(baseline).exists():
        raise InputError(f"no run at {baseline} (no run.json)", "pass a training run folder to --baseline")
    ours, theirs = RunDir(run).manifest().get("model", {}), RunDir(baseline).manifest().get("model", {})
    if not same_model(ours, theirs):
        raise ConfigError(
            f"the baseline {baseline} holds another model ('{theirs.get('adapter')}') than {run} "
            f"('{ours.get('adapter')}')",
            "compare runs trained from the same full-precision model")


@torch.no_grad()
def torch_images(trained: TrainedModel, student: nn.Module | None, pairs: Sequence[tuple[str, int]]
                 ) -> list[torch.Tensor]:
    """One image [3, H, W] per (prompt, seed), each generated alone: the noise of a batch depends on the batch,
    and a device draws one prompt at a time from ``sampling_noise(1, ..., seed)``."""
    return [trained.adapter.generate(trained.fp, [prompt], seed=seed, student=student)[0].cpu()
            for prompt, seed in pairs]


def exported_components(run: Path) -> dict[str, Path] | None:
    """``export/<component>.onnx`` of every component the export manifest lists; None when not exported."""
    manifest = Path(run) / "export" / "export.json"
    if not manifest.is_file():
        return None
    names = list(json.loads(manifest.read_text()).get("components", {}))
    files = {name: Path(run) / "export" / f"{name}.onnx" for name in names}
    return files if files and all(f.is_file() for f in files.values()) else None


def _cpu_runner(components: Mapping[str, Path]) -> Callable[[str, Mapping[str, np.ndarray]], list[np.ndarray]]:
    from fraqat_deploy.compile.htp import cpu_session

    sessions = {name: cpu_session(path) for name, path in components.items()}
    return lambda component, feed: sessions[component].run(None, dict(feed))


def onnx_cpu_outputs(trained: TrainedModel, components: Mapping[str, Path], pairs: Sequence[tuple[str, int]],
                     **options: Any) -> list[Any]:
    """What the app's pipeline (``device/pipeline.py``) makes of each (prompt, seed) with the exported Q/DQ graphs
    on ONNX Runtime's CPU provider: images [3, H, W] in [0, 1], or new token ids."""
    from fraqat_deploy.device import pipeline as pipe

    bench_inputs = getattr(trained.adapter, "bench_inputs", None)
    if bench_inputs is None:
        raise ConfigError(f"the '{trained.adapter.name}' model has no device pipeline")
    run = _cpu_runner(components)
    manifest = next(iter(components.values())).parent / "export.json"
    export = json.loads(manifest.read_text()) if manifest.is_file() else {}
    out = []
    for prompt, seed in pairs:
        settings, rows = bench_inputs(trained.fp, [prompt], seed=seed, **options)
        settings = pipe.with_graph_rows(settings, export)
        kind = settings.get("kind")
        if kind == "sana":
            out.append(torch.from_numpy(pipe.sana_generate(run, settings, rows[0], pipe.Timed())))
        elif kind == "gemma" and hasattr(pipe, "gemma_generate"):
            embedding = pipe.host_embedding(settings, export, manifest.parent)
            out.append(pipe.gemma_generate(run, settings, rows[0], pipe.Timed(), embedding)[0])
        else:
            raise ConfigError(f"no host pipeline for '{kind}' graphs")
    return out
