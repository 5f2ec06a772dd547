"""Text metrics for causal language models: perplexity, and how closely a (quantized) student's next-token
distributions follow its full-precision teacher's.

Every function takes token rows [n, T] with an optional 0/1 ``attention_mask`` (right padding), runs the
models in batches without gradients, and skips padded positions.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from fraqat_deploy.errors import ConfigError
from fraqat_deploy.models import LoadedModel, get_adapter
from fraqat_deploy.models.gemma import GemmaAdapter
from fraqat_deploy.models.tiny_gemma import heldout_rows

#: rows per forward pass: a [16, 128, 260] float32 logit block is 2 MB, quick on a CPU core
BATCH_SIZE = 16
#: held-out rows ``evaluate_text`` scores by default (8k tokens of tiny-gemma's 128-token rows)
EVAL_ROWS = 64


@contextmanager
def _evaluating(*modules: nn.Module) -> Iterator[None]:
    """Evaluation mode without gradients, restoring each module's own mode after (a student may be training)."""
    modes = [m.training for m in modules]
    try:
        for m in modules:
            m.eval()
        with torch.no_grad():
            yield
    finally:
        for m, mode in zip(modules, modes, strict=True):
            m.train(mode)


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def _logits(module: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    out = module(input_ids=input_ids.to(_device(module)), attention_mask=attention_mask.to(_device(module)),
                 use_cache=False)
    # float32 on the CPU, so fp16/bf16 students on a GPU are compared at the same precision as the teacher
    return out.logits.float().cpu()


def _checked_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [rows, tokens], got shape {tuple(input_ids.shape)}")
    if attention_mask is None:
        return torch.ones_like(input_ids)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask {tuple(attention_mask.shape)} does not match input_ids {tuple(input_ids.shape)}"
        )
    return attention_mask.long()


def _batches(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for i in range(0, input_ids.shape[0], batch_size):
        yield input_ids[i : i + batch_size], attention_mask[i : i + batch_size]


def _nll_sum(logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor) -> tuple[float, int]:
    """Summed next-token negative log-likelihood and the number of predicted tokens: position t predicts
    token t + 1 when both are real tokens (a padded input predicts nothing, a padded target is not scored)."""
    valid = (mask[:, :-1] * mask[:, 1:]).bool()
    nll = F.cross_entropy(logits[:, :-1].flatten(0, 1), input_ids[:, 1:].flatten().cpu(), reduction="none")
    return float(nll[valid.flatten().cpu()].double().sum()), int(valid.sum())


def _agreement_sums(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> tuple[float, int, int]:
    """Summed KL(teacher || student) and argmax agreements over the real positions, and their count."""
    valid = mask.bool().cpu()
    log_s = F.log_softmax(student[valid], dim=-1)
    log_t = F.log_softmax(teacher[valid], dim=-1)
    kl = F.kl_div(log_s, log_t, log_target=True, reduction="none").sum(-1)
    agree = (student[valid].argmax(-1) == teacher[valid].argmax(-1)).sum()
    return float(kl.double().sum()), int(agree), int(valid.sum())


def perplexity(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    batch_size: int = BATCH_SIZE,
) -> float:
    """Token-level perplexity of a causal LM (a ``Gemma2ForCausalLM`` or its quantized copy) on ``input_ids``:
    exp of the mean next-token negative log-likelihood over all real (unpadded) predicted tokens."""
    mask = _checked_mask(input_ids, attention_mask)
    total, count = 0.0, 0
    with _evaluating(model):
        for ids, m in _batches(input_ids, mask, batch_size):
            nll, n = _nll_sum(_logits(model, ids, m), ids, m)
            total, count = total + nll, count + n
    if count == 0:
        raise ValueError("no token to predict: every row has fewer than two real tokens")
    return math.exp(total / count)


def logit_agreement(
    student: nn.Module,
    teacher: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    batch_size: int = BATCH_SIZE,
) -> dict[str, float]:
    """How close ``student``'s next-token distributions stay to ``teacher``'s at every real position:
    ``kl`` the mean KL(teacher || student) in nats per token, ``top1`` the fraction of positions whose most
    likely next token is the same."""
    mask = _checked_mask(input_ids, attention_mask)
    kl, agree, count = 0.0, 0, 0
    with _evaluating(student, teacher):
        for ids, m in _batches(input_ids, mask, batch_size):
            k, a, n = _agreement_sums(_logits(student, ids, m), _logits(teacher, ids, m), m)
            kl, agree, count = kl + k, agree + a, count + n
    if count == 0:
        raise ValueError("no real position to compare: the attention mask is all zeros")
    return {"kl": kl / count, "top1": agree / count}


def evaluate_text(
    model: LoadedModel,
    student: nn.Module | None = None,
    *,
    n_rows: int = EVAL_ROWS,
    seed: int = 0,
    batch_size: int = BATCH_SIZE,
) -> dict[str, float]:
    """Perplexity of ``student`` (None: the full-precision ``model.student`` itself) on a seeded choice of
    ``n_rows`` rows of the held-out stdlib files, and its ``kl``/``top1`` agreement with ``model.student``
    (0 and 1 for the model itself). Also ``rows`` and ``tokens``: how much was scored."""
    if not isinstance(get_adapter(model.adapter), GemmaAdapter):
        raise ConfigError(
            f"text metrics need a causal language model, not a '{model.adapter}' model",
            "evaluate a Gemma-2 model (e.g. tiny-gemma)",
        )
    teacher = model.student
    ids = heldout_rows(model, n_rows, seed=seed)
    mask = torch.ones_like(ids)
    total, predicted, kl, agree, positions = 0.0, 0, 0.0, 0, 0
    models = (teacher,) if student is None else (student, teacher)
    with _evaluating(*models):
        for b_ids, b_mask in _batches(ids, mask, batch_size):
            t_logits = _logits(teacher, b_ids, b_mask)
            # one pass is enough for the model against itself: identical logits give exactly kl 0, top1 1
            s_logits = t_logits if student is None else _logits(student, b_ids, b_mask)
            nll, n = _nll_sum(s_logits, b_ids, b_mask)
            k, a, p = _agreement_sums(s_logits, t_logits, b_mask)
            total, predicted, kl, agree, positions = total + nll, predicted + n, kl + k, agree + a, positions + p
    return {
        "perplexity": math.exp(total / predicted),
        "kl": kl / positions,
        "top1": agree / positions,
        "rows": float(ids.shape[0]),
        "tokens": float(predicted),
    }
