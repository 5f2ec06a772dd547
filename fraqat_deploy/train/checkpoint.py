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
from safetensors.torch import save_file
from torch import nn

from fraqat_deploy.errors import InputError
from fraqat_deploy.models.half import HALF, upcast_parameters

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


#: safetensors dtype names -> torch dtypes (https://github.com/huggingface/safetensors, the format's header)
_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool}


def _safetensors_header(fh: Any) -> tuple[dict[str, Any], int]:
    """The header of an open safetensors file (name -> dtype, shape, data_offsets) and where its data starts."""
    size = int.from_bytes(fh.read(8), "little")
    if not 2 <= size <= 100_000_000:
        raise ValueError(f"header length {size} is not plausible")
    header = json.loads(fh.read(size))
    header.pop("__metadata__", None)
    return header, 8 + size


def load_weights(model: nn.Module, path: Path) -> None:
    """Copy the weights of ``path`` into ``model``'s own tensors one at a time, with plain reads: a real model's
    checkpoint is GBs, and reading it through a memory map (safetensors' own reader) kept every page read resident
    until the end (+2.3 GB peak on Sana 600M, measured).

    A 16-bit parameter of ``model`` stored in float32 (a float32 master weight of a run trained from a 16-bit
    checkpoint, see ``trainer.float32_masters``) becomes float32: copied into 16 bits it would be rounded."""
    if not path.is_file():
        raise InputError(f"no weights at {path}", "check the run folder, or train again")
    damaged = "the file is damaged: train again or resume"
    misfit = "use the same --model and model source as the run that wrote them"
    state = model.state_dict()
    with path.open("rb") as fh:
        try:
            header, data_start = _safetensors_header(fh)
        except (ValueError, UnicodeDecodeError) as e:
            raise InputError(f"cannot read weights {path}: {e}", damaged) from None
        # keys left out by state_dict_for_save are tied to ones that were saved
        missing = sorted(set(state) - set(header) - _tied_keys(model))
        unexpected = sorted(set(header) - set(state))
        if missing or unexpected:
            raise InputError(f"weights {path} do not fit the model (missing {missing[:3]}, unexpected "
                             f"{unexpected[:3]})", misfit)
        masters = {key for key, entry in header.items() if isinstance(entry, dict) and entry.get("dtype") == "F32"
                   and state[key].dtype in HALF}
        if masters:
            upcast_parameters(model, masters)
            state = model.state_dict()
        with torch.no_grad():
            for key, entry in header.items():
                try:
                    dtype = _SAFETENSORS_DTYPES[entry["dtype"]]
                    begin, stop = entry["data_offsets"]
                    fh.seek(data_start + begin)
                    buffer = bytearray(stop - begin)
                    if fh.readinto(buffer) != len(buffer):
                        raise ValueError("the file ends early")
                    tensor = torch.frombuffer(buffer, dtype=dtype) if buffer else torch.empty(0, dtype=dtype)
                    tensor = tensor.reshape(entry["shape"])
                except (KeyError, TypeError, ValueError, RuntimeError) as e:
                    raise InputError(f"cannot read weights {path} ({key}): {e}", damaged) from None
                if tensor.shape != state[key].shape:
                    raise InputError(f"weights {path} do not fit the model ({key}: {tuple(tensor.shape)} in the "
                                     f"file, {tuple(state[key].shape)} in the model)", misfit)
                state[key].copy_(tensor)
                del tensor, buffer


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
