"""16-bit weights that compute in float32: how the 2.6B-parameter Gemma-2 components (Sana's text encoder, the
Gemma-2-2B LLM) fit in memory.

Gemma-2 ships bfloat16 weights. Loaded as float32 they take 10.5 GB, and an export holds them more than twice
(the issue's 24 GiB machine cannot). Loaded in the checkpoint's own 16-bit type they take 5.2 GB, and since
every bfloat16 (or float16) value is exactly a float32 one, nothing is lost if every module computes in float32:
``compute_in_fp32`` makes each module that holds 16-bit parameters see them upcast to float32 while it runs
(one module's parameters at a time, released when it returns), so its outputs are those of a float32 load of the
same weights, bit for bit. Embeddings look their rows up in 16 bits and upcast them (the same values, without a
float32 copy of a 256k-row table).

Only matrices stay 16-bit (``keep_half``): 1-D parameters (norms, biases) and buffers (RoPE frequencies) are
upcast once at load, so everything a model computes from them outside a module's forward is float32 too.
"""

from __future__ import annotations

import json
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

HALF = (torch.bfloat16, torch.float16)
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
_STASH = "_fp32_compute_stash"
_installed = False


def checkpoint_dtype(where: str, local: bool, subfolder: str | None = None) -> torch.dtype:
    """The 16-bit dtype a transformers checkpoint declares (``dtype`` / ``torch_dtype`` in its config.json), or
    float32 (also for a hub id: only a local folder's config is read)."""
    config = Path(where, subfolder or "", "config.json")
    if not local or not config.is_file():
        return torch.float32
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return torch.float32
    declared = data.get("dtype") or data.get("torch_dtype")
    return _DTYPES.get(str(declared), torch.float32)


def has_half(module: nn.Module) -> bool:
    return any(p.dtype in HALF for p in module.parameters())


def keep_half(module: nn.Module) -> nn.Module:
    """``module`` with its matrices kept 16-bit, every other parameter and buffer upcast to float32, computing
    in float32 (``compute_in_fp32``). A module without 16-bit parameters is returned as it is."""
    if not has_half(module):
        return module
    for sub in module.modules():
        for name, p in list(sub._parameters.items()):
            if p is not None and p.dtype in HALF and p.dim() < 2:
                sub._parameters[name] = nn.Parameter(p.detach().float(), requires_grad=p.requires_grad)
        for name, b in list(sub._buffers.items()):
            if b is not None and b.dtype in HALF:
                sub._buffers[name] = b.float()
        if isinstance(sub, nn.Embedding) and sub.weight.dtype in HALF and sub.max_norm is None:
            _rows_in_fp32(sub)
    compute_in_fp32()
    return module


def upcast_parameters(module: nn.Module, names: set[str]) -> int:
    """Each 16-bit parameter of ``module`` named in ``names`` (any of a tied parameter's names) becomes a float32
    parameter, once, still tied, with its ``requires_grad``: a trained model's float32 "master" weights
    (``train.trainer.float32_masters``, ``train.checkpoint.load_weights``). An embedding whose table becomes
    float32 runs its class's forward again, as a float32 load does. Returns how many parameters were upcast."""
    # (held until the end: a freed parameter's id could be a new one's)
    chosen = {id(p): p for name, p in module.named_parameters(remove_duplicate=False) if name in names
              and p.dtype in HALF}
    done: dict[int, nn.Parameter] = {}
    for sub in module.modules():
        for name, p in list(sub._parameters.items()):
            if p is not None and id(p) in chosen:
                if id(p) not in done:
                    done[id(p)] = nn.Parameter(p.detach().float(), requires_grad=p.requires_grad)
                sub._parameters[name] = done[id(p)]
        if getattr(sub, ROWS_IN_FP32, False) and sub.weight.dtype == torch.float32:
            sub.__dict__.pop("forward", None)
            delattr(sub, ROWS_IN_FP32)
    return len(done)


#: marks an embedding whose forward ``keep_half`` replaced (``export.half`` traces the class's own forward)
ROWS_IN_FP32 = "_rows_in_fp32"


def _rows_in_fp32(embedding: nn.Embedding) -> None:
    """An embedding looks up its rows in 16 bits and upcasts them (exact), instead of upcasting a whole table
    (Gemma-2-2B's: 2.4 GB in float32) at every call. transformers' Gemma-2 embedding also scales the rows by
    ``sqrt(hidden)``, a buffer made at init in the load's dtype and applied in the weight's dtype
    (``rows * embed_scale.to(weight.dtype)``): in 16 bits both round, so here the scale is the float32 one and
    is applied to the upcast rows, as a float32 load computes."""
    if hasattr(embedding, "scalar_embed_scale"):
        embedding._buffers["embed_scale"] = torch.tensor(float(embedding.scalar_embed_scale), dtype=torch.float32)
    embedding.forward = types.MethodType(_fp32_rows, embedding)  # type: ignore[method-assign]
    setattr(embedding, ROWS_IN_FP32, True)


def _fp32_rows(self: nn.Embedding, input_ids: torch.Tensor) -> torch.Tensor:
    # the rows are gathered (a data move) and upcast, then looked up again by position in float32: one float32
    # embedding op, as a float32 load runs it (the export's noise-floor reference moves the output of every op)
    table = self.weight[input_ids.reshape(-1)].float()
    rows = F.embedding(torch.arange(table.shape[0], device=input_ids.device).reshape(input_ids.shape), table)
    scale = self._buffers.get("embed_scale")
    return rows if scale is None else rows * scale


def _before(module: nn.Module, args: object) -> None:
    params = module._parameters
    if not params or getattr(module, ROWS_IN_FP32, False) or _STASH in module.__dict__:
        return
    half = {name: p for name, p in params.items() if p is not None and p.dtype in HALF}
    if half:
        module.__dict__[_STASH] = half
        for name, p in half.items():
            params[name] = p.float()  # through autograd: a gradient still reaches the 16-bit parameter


def _after(module: nn.Module, args: object, output: object) -> None:
    stash = module.__dict__.pop(_STASH, None)
    if stash is not None:
        module._parameters.update(stash)


def compute_in_fp32() -> None:
    """Every module holding 16-bit parameters computes in float32 from now on, in this process (global module
    hooks, installed once; a module without 16-bit parameters is untouched)."""
    global _installed
    if _installed:
        return
    nn.modules.module.register_module_forward_pre_hook(_before)
    nn.modules.module.register_module_forward_hook(_after, always_call=True)
    _installed = True
