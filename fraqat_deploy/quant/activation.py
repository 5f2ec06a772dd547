"""Static activation fake quantization: per-tensor, asymmetric, unsigned (uint8 by default, uint16 on request).

Encodings are calibrated from a few samples (by one of ``CALIBRATIONS``, see ``RangeObserver.range``) and then
frozen, or learned during QAT (``LearnedEncoding``, LSQ+-style). They are stored exactly as ONNX
QuantizeLinear / DequantizeLinear take them (a float32 scale and an integer zero point), and the fake quant
applies the same arithmetic: ``q = clamp(round(x / scale) + zp, 0, 2^bits - 1)``, ``x' = (q - zp) * scale``,
so export reproduces every trained activation bit for bit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch

Calibration = Literal["mse", "minmax", "percentile", "meanstd", "learned"]
#: range-setting methods; "learned" starts from the "mse" ranges and trains them (see ``LearnedEncoding``)
CALIBRATIONS: tuple[str, ...] = ("mse", "minmax", "percentile", "meanstd", "learned")
#: chosen by measurement (README, "Activation ranges"): after training as good as "mse" within noise (one seed);
#: every calibration keeps export parity (the export aligns the uint16 grids that feed trained 8-bit inputs)
DEFAULT_CALIBRATION: Calibration = "minmax"
#: the percentile method keeps this share of the observed values inside the range (both tails together)
PERCENTILE = 99.99
#: values of each tensor kept (a seeded uniform subsample) for the percentile and MSE searches
SAMPLE_SIZE = 1 << 15


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


def quantization_mse(x: torch.Tensor, enc: ActivationEncoding) -> float:
    """Mean squared error that ``enc`` adds to the values ``x`` (clipping and rounding together)."""
    q = torch.clamp(torch.round(x / enc.scale) + enc.zero_point, 0, enc.qmax)
    return float(((q - enc.zero_point) * enc.scale - x).square().mean())


class RangeObserver:
    """Collects the statistics of one activation tensor over calibration samples: exact count, sum, sum of
    squares, min and max, plus a seeded uniform subsample of ``SAMPLE_SIZE`` values for the percentile and
    MSE range searches (reservoir sampling over every observed value, so each is equally likely to be kept)."""

    def __init__(self, sample_size: int = SAMPLE_SIZE, seed: int = 0) -> None:
        self.count = 0
        self.total = 0.0
        self.total_sq = 0.0
        self.min = float("inf")
        self.max = float("-inf")
        self.sample_size = sample_size
        self.sample = torch.empty(0)
        self._keys = torch.empty(0)  # reservoir keys: keep the values with the smallest random keys
        self._gen = torch.Generator().manual_seed(seed)

    def observe(self, x: torch.Tensor) -> None:
        x = x.detach().flatten().float().cpu()
        xd = x.double()
        self.count += x.numel()
        self.total += float(xd.sum())
        self.total_sq += float((xd * xd).sum())
        self.min = min(self.min, float(x.min()))
        self.max = max(self.max, float(x.max()))
        keys = torch.rand(x.numel(), generator=self._gen)
        if x.numel() > self.sample_size:
            keys, idx = torch.topk(keys, self.sample_size, largest=False)
            x = x[idx]
        keys, values = torch.cat([self._keys, keys]), torch.cat([self.sample, x])
        if values.numel() > self.sample_size:
            keys, idx = torch.topk(keys, self.sample_size, largest=False)
            values = values[idx]
        self._keys, self.sample = keys, values

    def range(self, method: Calibration, bits: int = 8) -> tuple[float, float]:
        if self.count == 0:
            raise ValueError("no calibration samples were observed")
        if method == "minmax":
            return self.min, self.max
        if method == "meanstd":
            # the paper: mean +- 3 std of the layer's activations; never wider than what was observed
            mean = self.total / self.count
            std = max(self.total_sq / self.count - mean * mean, 0.0) ** 0.5
            return max(mean - 3 * std, self.min), min(mean + 3 * std, self.max)
        if method == "percentile":
            tail = (100.0 - PERCENTILE) / 200.0
            lo, hi = torch.quantile(self.sample.double(), torch.tensor([tail, 1.0 - tail], dtype=torch.float64))
            return float(lo), float(hi)
        if method in ("mse", "learned"):
            return self._mse_range(bits)
        raise ValueError(f"unknown calibration '{method}': use one of {', '.join(CALIBRATIONS)}")

    def _mse_range(self, bits: int) -> tuple[float, float]:
        """The range of least expected quantization MSE over the sampled values (the idea AIMET calls
        TF-enhanced): every pair of ends ``(a * min, b * max)`` for a, b on a 1/200 grid in (0, 1], scored as
        the exact clipping error of the values outside (prefix sums over the sorted sample) plus the uniform
        rounding error ``scale^2 / 12`` of the values inside."""
        x = torch.sort(self.sample.double()).values
        n = x.numel()
        s1 = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(x, 0)])
        s2 = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(x * x, 0)])
        lo0, hi0 = min(self.min, 0.0), max(self.max, 0.0)
        grid = torch.arange(1, 201, dtype=torch.float64) / 200
        lo, hi = (lo0 * grid)[:, None], (hi0 * grid)[None, :]  # every (lo, hi) pair
        k = torch.searchsorted(x, lo.flatten()).reshape(lo.shape)  # values below lo: x[:k]
        j = torch.searchsorted(x, hi.flatten(), right=True).reshape(hi.shape)  # values above hi: x[j:]
        below = s2[k] - 2 * lo * s1[k] + k * lo * lo
        above = (s2[n] - s2[j]) - 2 * hi * (s1[n] - s1[j]) + (n - j) * hi * hi
        scale = (hi - lo).clamp_min(1e-30) / (2**bits - 1)
        err = below + above + (j - k).clamp_min(0) * scale * scale / 12
        best = int(torch.argmin(err))
        a, b = divmod(best, grid.numel())
        return lo0 * float(grid[a]), hi0 * float(grid[b])

    def encoding(self, method: Calibration, bits: int) -> ActivationEncoding:
        return ActivationEncoding.from_range(*self.range(method, bits), bits=bits)


class _LearnedSTE(torch.autograd.Function):
    """The Q/DQ arithmetic of ``fake_quant_activation`` at the rounded zero point, with LSQ+ gradients."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmax):  # type: ignore[override]
        zp = torch.clamp(torch.round(zero_point), 0, qmax)
        v = x / scale
        q = torch.round(v) + zp
        below, above = q < 0, q > qmax
        ctx.save_for_backward(v, zp, scale, below, above)
        ctx.qmax = qmax
        return (torch.clamp(q, 0, qmax) - zp) * scale

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        v, zp, scale, below, above = ctx.saved_tensors
        inside = ~(below | above)
        grad_x = grad * inside
        # d y / d s: the rounding residual inside the range, the clip level outside it
        dy_ds = torch.where(inside, torch.round(v) - v, torch.where(below, -zp, ctx.qmax - zp))
        grad_s = (grad * dy_ds).sum().reshape(scale.shape)
        # d y / d z (straight through the rounding of z): -s where clipped, 0 inside
        grad_z = (grad * (~inside) * -scale).sum().reshape(zp.shape)
        return grad_x, grad_s, grad_z, None


class LearnedEncoding(torch.nn.Module):
    """A trainable activation encoding (LSQ+, Bhalgat et al. 2020): scale and zero point learned by gradient
    descent with straight-through rounding, initialised from a calibrated encoding.

    The scale is learned in the log domain (``s = exp(log_scale)``, float32), so that one optimizer step changes
    it by a relative amount whatever its size (8-bit and 16-bit scales differ by 256x); the zero point is learned
    in quantization steps. The forward pass is the Q/DQ arithmetic at the *rounded* zero point,
    ``(clamp(round(x / s) + round(z), 0, qmax) - round(z)) * s`` in float32, the same operations as
    ``fake_quant_activation``, so ``encoding()`` (the float32 ``s`` and the integer ``round(z)``) reproduces it
    exactly in ONNX. Gradients: to ``x`` where it is inside the range (clipped STE), to ``s`` by the LSQ rule
    (the rounding residual inside, the clip level outside), to ``z`` straight through its rounding, where the
    input is clipped.
    """

    def __init__(self, enc: ActivationEncoding) -> None:
        super().__init__()
        self.bits = enc.bits
        self.qmax = enc.qmax
        self.log_scale = torch.nn.Parameter(torch.tensor(0.0))
        self.zero_point = torch.nn.Parameter(torch.tensor(0.0))
        self.reset(enc)

    @torch.no_grad()
    def reset(self, enc: ActivationEncoding) -> None:
        self.log_scale.fill_(float(torch.log(torch.tensor(enc.scale, dtype=torch.float64))))
        self.zero_point.fill_(float(enc.zero_point))

    @torch.no_grad()
    def clamp_(self) -> None:
        """Keep the zero point where an encoding has it: inside [0, qmax]."""
        self.zero_point.clamp_(0.0, float(self.qmax))

    def scale(self) -> torch.Tensor:
        return torch.exp(self.log_scale.float())

    def encoding(self) -> ActivationEncoding:
        zp = int(min(max(round(float(self.zero_point.detach())), 0), self.qmax))
        return ActivationEncoding(bits=self.bits, scale=float(self.scale().detach()), zero_point=zp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _LearnedSTE.apply(x.float(), self.scale(), self.zero_point, float(self.qmax)).to(x.dtype)
