"""Mathematically equivalent forms of a few layers that quantize well on the Hexagon HTP.

Found by comparing the simulated HTP with the CPU Q/DQ run tensor by tensor (see ../shared/REFERENCE.md):

* RMSNorm exported as ``Sqrt -> Reciprocal -> Mul`` departs on the HTP; ``x / sqrt(mean(x^2) + eps) * w``
  (``Sqrt -> Div``) does not.
* Sana's linear attention pads V with a row of ones, so numerator and normaliser share one tensor whose rows
  have very different ranges (one 16-bit encoding cannot serve both), then divides with epsilon 1e-15.
  Computing the numerator ``(V K^T) Q`` and the normaliser ``(sum K) Q`` separately, with a safe epsilon,
  is the same maths.

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
    return count
