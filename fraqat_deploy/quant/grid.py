"""Fractional-bit weight quantization (FraQAT, arXiv 2510.14823, eqs. for the narrow and wide range).

A bit-width ``b`` is any real number in [2, 16]; it enters the paper's formulas unchanged:

* narrow (symmetric): ``S = max|W| / (2^(b-1) - 1)``, ``Q = clamp(round(W / S))`` onto the integers of
  ``[-2^(b-1), 2^(b-1) - 1]``, ``W_b = S * Q``;
* wide (asymmetric):  ``S = (w_max - w_min) / 2^b``,  ``Q = clamp(round((W - w_min) / S))`` onto the integers of
  ``[0, 2^b - 1]``, ``W_b = S * Q + w_min``.

So b = 5.5 gives the grid [-22, 21], b = 4.75 gives [-13, 12] and b = 4 the usual int4 [-8, 7].
Rounding is ``torch.round`` (half to even), the same rule as ONNX QuantizeLinear, so export can reproduce it.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

Range = Literal["narrow", "wide"]
Granularity = Literal["tensor", "channel"]

MIN_BITS = 2.0
MAX_BITS = 16.0


def check_bits(bits: float) -> float:
    bits = float(bits)
    if not (MIN_BITS <= bits <= MAX_BITS) or math.isnan(bits):
        raise ValueError(f"bit-width {bits} is outside [{MIN_BITS:g}, {MAX_BITS:g}]")
    return bits


def fractional_grid(bits: float, range_: Range = "narrow") -> tuple[int, int]:
    """The integer grid ``(qmin, qmax)`` of a (possibly fractional) bit-width."""
    bits = check_bits(bits)
    if range_ == "narrow":
        return math.ceil(-(2.0 ** (bits - 1))), math.floor(2.0 ** (bits - 1) - 1)
    if range_ == "wide":
        return 0, math.floor(2.0**bits - 1)
    raise ValueError(f"unknown range '{range_}': use 'narrow' or 'wide'")


def code_dtype(qmin: int, qmax: int) -> torch.dtype:
    """The smallest integer dtype that holds every code of the grid ``[qmin, qmax]``."""
    for dtype in (torch.int8, torch.uint8, torch.int16, torch.int32):
        info = torch.iinfo(dtype)
        if info.min <= qmin and qmax <= info.max:
            return dtype
    raise ValueError(f"no integer dtype holds the grid [{qmin}, {qmax}]")


def _reduce_dims(w: torch.Tensor, granularity: Granularity) -> tuple[int, ...] | None:
    if granularity == "tensor":
        return None
    if granularity == "channel":
        return tuple(range(1, w.dim()))  # dim 0 is the output channel of Linear and Conv weights
    raise ValueError(f"unknown granularity '{granularity}': use 'tensor' or 'channel'")


def _amax(w: torch.Tensor, dims: tuple[int, ...] | None) -> torch.Tensor:
    return w.abs().amax() if dims is None else w.abs().amax(dim=dims, keepdim=True)


def weight_qparams(
    w: torch.Tensor, bits: float, range_: Range = "narrow", granularity: Granularity = "tensor"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and offset (``w_min`` for the wide range, zeros for the narrow) of ``w`` at ``bits``.

    Both are computed from the detached weight: the scale follows the weights, it is not learned.
    """
    bits = check_bits(bits)
    w = w.detach()
    dims = _reduce_dims(w, granularity)
    tiny = torch.finfo(w.dtype).tiny
    if range_ == "narrow":
        scale = _amax(w, dims) / (2.0 ** (bits - 1) - 1)
        offset = torch.zeros_like(scale)
    elif range_ == "wide":
        if dims is None:
            w_min, w_max = w.amin(), w.amax()
        else:
            w_min, w_max = w.amin(dim=dims, keepdim=True), w.amax(dim=dims, keepdim=True)
        scale = (w_max - w_min) / 2.0**bits
        offset = w_min
    else:
        raise ValueError(f"unknown range '{range_}': use 'narrow' or 'wide'")
    return scale.clamp_min(tiny), offset


def quantize_weight(
    w: torch.Tensor, bits: float, range_: Range = "narrow", granularity: Granularity = "tensor"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Integer codes ``Q`` (as float), scale ``S`` and offset, with ``W_b = S * Q + offset``."""
    scale, offset = weight_qparams(w, bits, range_, granularity)
    qmin, qmax = fractional_grid(bits, range_)
    q = torch.clamp(torch.round((w.detach() - offset) / scale), qmin, qmax)
    return q, scale, offset


class _WeightSTE(torch.autograd.Function):
    """Forward: the quantized weight. Backward: identity (straight-through).

    The weight's own max sets the scale, so no weight is ever "outside" the range; at fractional widths the
    largest weight can round one step past ``qmax`` and be clamped, and a clipped estimator would then freeze
    exactly the weights that set the scale. Hence a plain identity gradient.
    """

    @staticmethod
    def forward(ctx, w, bits, range_, granularity):  # type: ignore[override]
        q, scale, offset = quantize_weight(w, bits, range_, granularity)
        return q * scale + offset

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return grad, None, None, None


def fake_quant_weight(
    w: torch.Tensor, bits: float, range_: Range = "narrow", granularity: Granularity = "tensor"
) -> torch.Tensor:
    """``W_b`` with a straight-through gradient."""
    return _WeightSTE.apply(w, float(bits), range_, granularity)
