"""Load what a training run produced: the full-precision model and its trained, quantized student."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from fraqat_deploy.errors import InputError
from fraqat_deploy.models import LoadedModel, ModelAdapter, get_adapter
from fraqat_deploy.quant import QuantPolicy, load_quant_state, prepare
from fraqat_deploy.runs import RunDir
from fraqat_deploy.train.checkpoint import load_weights


@dataclass
class TrainedModel:
    adapter: ModelAdapter
    fp: LoadedModel  # the full-precision model (its student untouched)
    student: nn.Module  # the quantized, trained student
    quant_state: dict[str, Any]
    policy: QuantPolicy
    run: Path


def load_trained(run: Path | str, model: str | None = None) -> TrainedModel:
    """The trained student of ``run`` (quantized as trained) beside the full-precision model it came from."""
    rd = RunDir(run)
    fix = f"train first: fraqat-deploy train <model> --out {rd.path}"
    if not rd.exists():
        raise InputError(f"no run at {rd.path} (no run.json)", fix)
    manifest = rd.manifest()
    train_stage = manifest.get("stages", {}).get("train", {})
    if train_stage.get("status") != "done":
        raise InputError(f"the training of {rd.path} is not finished ({train_stage.get('status', 'absent')})",
                         f"finish it: fraqat-deploy train <model> --out {rd.path} --resume")
    adapter = get_adapter(manifest["model"]["adapter"])
    if model is not None and model != adapter.name:
        raise InputError(f"{rd.path} holds a '{adapter.name}' model, not '{model}'",
                         f"use: fraqat-deploy ... {adapter.name} --run {rd.path}")
    fp = adapter.load_from_spec(manifest["model"]["spec"])
    state_path = rd.path / "train" / "quant_state.json"
    try:
        state = json.loads(state_path.read_text())
        policy = QuantPolicy.from_dict(state["policy"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"cannot read {state_path}: {e}", f"the run is damaged: {fix}") from None
    student = copy.deepcopy(fp.student)
    prepare(student, policy)
    load_weights(student, rd.path / "train" / "model.safetensors")
    try:
        load_quant_state(student, state)
    except ValueError as e:
        raise InputError(f"{state_path} does not fit the model: {e}", f"the run is damaged: {fix}") from None
    return TrainedModel(adapter, fp, student.eval(), state, policy, rd.path)
