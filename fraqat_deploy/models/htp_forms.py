"""Mathematically equivalent forms of a few layers that quantize well on the Hexagon HTP.

Found by comparing the simulated HTP with the CPU Q/DQ run tensor by tensor (see docs/htp-notes.md):

* RMSNorm exported as ``Sqrt -> Reciprocal -> Mul`` departs on the HTP; ``x / sqrt(mean(x^2) + eps) * w``
  (``Sqrt -> Div``) does not.
* Sana's linear attention pads V with a row of ones, so numerator and normaliser share one tensor whose rows
  have very different ranges (one 16-bit encoding cannot serve both), then divides with epsilon 1e-15.
  Computing the numerator ``(V K^T) Q`` and the normaliser ``(sum K) Q`` separately, with a safe epsilon,
  is the same maths.

* Gemma-2's grouped-query attention repeats each key/value head (``Transpose -> Unsqueeze -> Expand ->
  Reshape``); the HTP reorders that repeat wrongly (82% off on the digits text encoder, invisible on the ""
  prompt whose tokens are all alike). Grouping the query heads by their key/value head instead
  (``[B, H, T, d] -> [B, kv_heads, (H / kv_heads) T, d]``) needs no repeat and is the same attention.

``htp_forms(module)`` switches every such layer of a module in place; the result is used both for the ONNX
export and for the PyTorch reference it is checked against.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn

#: the normaliser's epsilon: 1e-15 vanishes in 16-bit; ReLU features make the normaliser >= 0, and it is 0
#: only where the numerator is 0 as well
LINEAR_ATTENTION_EPS = 1e-6


class HtpLinearAttnProcessor:
    """diffusers' ``SanaLinearAttnProcessor2_0`` with numerator and normaliser computed apart."""

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        query = attn.to_q(hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        query = F.relu(query.transpose(1, 2).unflatten(1, (attn.heads, -1)))  # B, H, d, N
        key = F.relu(key.transpose(1, 2).unflatten(1, (attn.heads, -1)).transpose(2, 3))  # B, H, N, d
        value = value.transpose(1, 2).unflatten(1, (attn.heads, -1))  # B, H, d, N
        numerator = torch.matmul(torch.matmul(value, key), query)  # B, H, d, N
        normaliser = torch.matmul(key.sum(dim=2, keepdim=True), query)  # B, H, 1, N
        out = (numerator / (normaliser + LINEAR_ATTENTION_EPS)).flatten(1, 2).transpose(1, 2)
        out = attn.to_out[0](out)
        return attn.to_out[1](out)


def _rmsnorm_div(self, hidden_states: torch.Tensor) -> torch.Tensor:
    """diffusers ``RMSNorm`` with a division instead of rsqrt."""
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    out = hidden_states / torch.sqrt(variance + self.eps)
    if self.weight is not None:
        out = out * self.weight
        if getattr(self, "bias", None) is not None:
            out = out + self.bias
    return out


def _gemma_rmsnorm_div(self, x: torch.Tensor) -> torch.Tensor:
    """transformers ``Gemma2RMSNorm`` (scale ``1 + w``) with a division instead of rsqrt."""
    out = x.float() / torch.sqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
    return (out * (1.0 + self.weight.float())).type_as(x)


HTP_ATTENTION = "fraqat_htp_gqa"


def grouped_query_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                            softcap: float | None = None, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' eager Gemma-2 attention with the query heads grouped by key/value head (no repeat_kv).

    query [B, H, T, d], key / value [B, G, S, d] -> output [B, T, H, d] and weights [B, H, T, S]."""
    if scaling is None:
        scaling = module.head_dim ** -0.5
    batch, heads, length, dim = query.shape
    groups = key.shape[1]
    rep = heads // groups
    q = query.reshape(batch, groups, rep * length, dim)  # head h = g * rep + r: rows (r, t) of group g
    weights = torch.matmul(q, key.transpose(2, 3)) * scaling
    if softcap is not None:
        weights = torch.tanh(weights / softcap) * softcap
    if attention_mask is not None:
        mask = attention_mask[:, :, :, : key.shape[-2]]
        if mask.dtype == torch.bool:  # transformers' mask for attention functions other than eager: True = attend
            mask = torch.zeros(mask.shape, dtype=weights.dtype).masked_fill(~mask, torch.finfo(weights.dtype).min)
        weights = weights + (torch.cat([mask] * rep, dim=2) if rep > 1 else mask)
    weights = F.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    out = torch.matmul(weights, value).reshape(batch, heads, length, dim)
    return out.transpose(1, 2).contiguous(), weights.reshape(batch, heads, length, -1)


def _use_grouped_attention(model: nn.Module) -> bool:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) not in ("eager", None, HTP_ATTENTION):
        return False
    AttentionInterface.register(HTP_ATTENTION, grouped_query_attention)
    AttentionMaskInterface.register(HTP_ATTENTION, eager_mask)  # the additive masks eager attention gets
    config._attn_implementation = HTP_ATTENTION
    return True


def htp_forms(module: nn.Module) -> int:
    """Switch the layers above to their HTP forms, in place. Returns how many were switched."""
    from diffusers.models.attention_processor import SanaLinearAttnProcessor2_0
    from diffusers.models.normalization import RMSNorm

    count = 0
    for m in module.modules():
        processor = getattr(m, "processor", None)
        if isinstance(processor, SanaLinearAttnProcessor2_0):
            m.processor = HtpLinearAttnProcessor()
            count += 1
        elif isinstance(m, RMSNorm):
            m.forward = types.MethodType(_rmsnorm_div, m)
            count += 1
        elif type(m).__name__ == "Gemma2RMSNorm":
            m.forward = types.MethodType(_gemma_rmsnorm_div, m)
            count += 1
        elif type(m).__name__ == "Gemma2Attention" and m.num_key_value_groups > 1 and _use_grouped_attention(m):
            count += 1
    return count
