"""Static activation fake quantization: per-tensor, asymmetric, unsigned (uint8 by default, uint16 on request).

Encodings are calibrated once from a few samples and then frozen. They are stored exactly as ONNX
QuantizeLinear / DequantizeLinear take them (a float32 scale and an integer zero point), and the fake quant
applies the same arithmetic: ``q = clamp(round(x / scale) + zp, 0, 2^bits - 1)``, ``x' = (q - zp) * scale``,
so export reproduces every trained activation bit for bit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch

Calibration = Literal["meanstd", "minmax"]
CALIBRATIONS: tuple[str, ...] = ("meanstd", "minmax")


@dataclass(frozen=True)
class ActivationEncoding:
    """An unsigned asymmetric encoding, exactly as ONNX Q/DQ nodes carry it."""

    bits: int
    scale: float  # a float32 value, kept exactly
    zero_point: int

    @property
    def qmax(self) -> int:
        return 2**self.bits - 1

    @property
    def range(self) -> tuple[float, float]:
        return (-self.zero_point * self.scale, (self.qmax - self.zero_point) * self.scale)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ActivationEncoding:
        return cls(bits=int(d["bits"]), scale=float(d["scale"]), zero_point=int(d["zero_point"]))

    @classmethod
    def from_range(cls, lo: float, hi: float, bits: int = 8) -> ActivationEncoding:
        """Encoding covering [lo, hi], widened to hold 0 exactly (padding, ReLU zeros, the HTP's rule)."""
        if bits not in (8, 16):
            raise ValueError(f"activation bits must be 8 or 16, not {bits}")
        lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
        qmax = 2**bits - 1
        if hi - lo <= 0.0:
            hi = lo + 1e-8
        scale = float(torch.tensor((hi - lo) / qmax, dtype=torch.float32))
        zero_point = int(min(max(round(-lo / scale), 0), qmax))
        return cls(bits=bits, scale=scale, zero_point=zero_point)


class _ActivationSTE(torch.autograd.Function):
    """Clipped straight-through estimator: gradient 1 inside the encoding's range, 0 where clamped."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmax):  # type: ignore[override]
        q = torch.round(x / scale) + zero_point
        inside = (q >= 0) & (q <= qmax)
        ctx.save_for_backward(inside)
        return (torch.clamp(q, 0, qmax) - zero_point) * scale

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None


def fake_quant_activation(x: torch.Tensor, enc: ActivationEncoding) -> torch.Tensor:
    # float32 arithmetic whatever the autocast dtype, so that the values match ONNX Q/DQ
    scale = torch.tensor(enc.scale, dtype=torch.float32, device=x.device)
    y = _ActivationSTE.apply(x.float(), scale, float(enc.zero_point), float(enc.qmax))
    return y.to(x.dtype)


class RangeObserver:
    """Collects the statistics of one activation tensor over calibration samples."""

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.total_sq = 0.0
        self.min = float("inf")
        self.max = float("-inf")

    def observe(self, x: torch.Tensor) -> None:
        x = x.detach().double()
        self.count += x.numel()
        self.total += float(x.sum())
        self.total_sq += float((x * x).sum())
        self.min = min(self.min, float(x.min()))
        self.max = max(self.max, float(x.max()))

    def range(self, method: Calibration) -> tuple[float, float]:
        if self.count == 0:
            raise ValueError("no calibration samples were observed")
        if method == "minmax":
            return self.min, self.max
        if method == "meanstd":
            # the paper: mean +- 3 std of the layer's activations; never wider than what was observed
            mean = self.total / self.count
            std = max(self.total_sq / self.count - mean * mean, 0.0) ** 0.5
            return max(mean - 3 * std, self.min), min(mean + 3 * std, self.max)
        raise ValueError(f"unknown calibration '{method}': use one of {', '.join(CALIBRATIONS)}")

    def encoding(self, method: Calibration, bits: int) -> ActivationEncoding:
        return ActivationEncoding.from_range(*self.range(method), bits=bits)
