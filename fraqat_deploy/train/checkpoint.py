"""Training checkpoints: weights (safetensors), optimizer, schedule position and every RNG state.

A checkpoint is written into a temporary folder and renamed into place, so a run killed at any instant leaves
either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from fraqat_deploy.errors import InputError

PREFIX = "step-"


def state_dict_for_save(model: nn.Module) -> dict[str, torch.Tensor]:
    # tied weights (Gemma's embedding and lm_head) are one tensor: safetensors wants each storage once
    seen: dict[int, str] = {}
    out = {}
    for name, t in model.state_dict().items():
        key = t.data_ptr()
        if key in seen and t.numel() > 0:
            continue
        seen[key] = name
        out[name] = t.detach().contiguous().cpu()
    return out


def save_weights(model: nn.Module, path: Path) -> None:
    save_file(state_dict_for_save(model), str(path))


def load_weights(model: nn.Module, path: Path) -> None:
    """Copy the weights of ``path`` into ``model``'s own tensors one at a time (a real model's checkpoint is GBs:
    it is never held whole beside the model)."""
    if not path.is_file():
        raise InputError(f"no weights at {path}", "check the run folder, or train again")
    damaged = "the file is damaged: train again or resume"
    misfit = "use the same --model and model source as the run that wrote them"
    state = model.state_dict()
    try:
        reader = safe_open(str(path), framework="pt")
    except Exception as e:  # safetensors raises several types for a damaged file
        raise InputError(f"cannot read weights {path}: {e}", damaged) from None
    with reader:
        keys = list(reader.keys())
        # keys left out by state_dict_for_save are tied to ones that were saved
        missing = sorted(set(state) - set(keys) - _tied_keys(model))
        unexpected = sorted(set(keys) - set(state))
        if missing or unexpected:
            raise InputError(f"weights {path} do not fit the model (missing {missing[:3]}, unexpected "
                             f"{unexpected[:3]})", misfit)
        with torch.no_grad():
            for key in keys:
                try:
                    tensor = reader.get_tensor(key)
                except Exception as e:
                    raise InputError(f"cannot read weights {path} ({key}): {e}", damaged) from None
                if tensor.shape != state[key].shape:
                    raise InputError(f"weights {path} do not fit the model ({key}: {tuple(tensor.shape)} in the "
                                     f"file, {tuple(state[key].shape)} in the model)", misfit)
                state[key].copy_(tensor)
                del tensor


def _tied_keys(model: nn.Module) -> set[str]:
    saved = set(state_dict_for_save(model))
    return set(model.state_dict()) - saved


def rng_state() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def save_checkpoint(
    folder: Path, step: int, model: nn.Module, quant_state: dict, trainer_state: dict[str, Any], keep: int
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{PREFIX}{step:07d}"
    tmp = folder / f".tmp-{PREFIX}{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_weights(model, tmp / "model.safetensors")
    (tmp / "quant_state.json").write_text(json.dumps(quant_state, indent=1))
    torch.save({**trainer_state, "rng": rng_state()}, tmp / "trainer.pt")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in list_checkpoints(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def load_trainer_state(ckpt: Path) -> dict[str, Any]:
    return torch.load(ckpt / "trainer.pt", weights_only=False)
