"""Quantized Linear and Conv2d: fractional-bit fake-quant weights (STE) and static fake-quant inputs.

They subclass the torch layers and share the original ``weight`` / ``bias`` parameters, so a prepared model's
``state_dict`` has the same keys as the full-precision one. The quantization settings are not in the
``state_dict``: ``quant_state()`` holds them (see ``policy.py``).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from fraqat_deploy.quant.activation import (
    ActivationEncoding,
    LearnedEncoding,
    RangeObserver,
    fake_quant_activation,
)
from fraqat_deploy.quant.grid import (
    Granularity,
    Range,
    check_bits,
    code_dtype,
    fake_quant_weight,
    fractional_grid,
    quantize_weight,
)

Mode = Literal["fp", "observe", "quant", "frozen", "export"]


class QuantMixin:
    """What a quantized layer adds to its torch base class."""

    weight: nn.Parameter
    weight_bits: float
    weight_range: Range
    granularity: Granularity
    act_bits: int
    act_encoding: ActivationEncoding | None  # the input's
    out_encoding: ActivationEncoding | None  # the output's: activations are quantized throughout (W4A8)
    mode: Mode

    def _init_quant(self, weight_bits: float, weight_range: Range, granularity: Granularity, act_bits: int) -> None:
        self.weight_bits = check_bits(weight_bits)
        self.weight_range = weight_range
        self.granularity = granularity
        self.act_bits = act_bits
        self.act_encoding = None
        self.out_encoding = None
        self.observer = RangeObserver()
        self.out_observer = RangeObserver()
        self.mode = "quant"
        self.frozen: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        # trainable encodings ("act" / "out") under --calibration learned; a plain dict, so that they stay out of
        # the state_dict (whose keys remain the full-precision model's); synced into act/out_encoding by
        # ``sync_encodings``
        self.learned: dict[str, LearnedEncoding] = {}

    def set_weight_bits(self, bits: float) -> None:
        if self.mode == "frozen":
            raise RuntimeError("a frozen layer's bits cannot change")
        self.weight_bits = check_bits(bits)

    def quantized_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "observe":
            self.observer.observe(x)
            return x
        if self.mode in ("fp", "export") or self.act_encoding is None:
            return x
        if "act" in self.learned:
            return self.learned["act"](x)
        return fake_quant_activation(x, self.act_encoding)

    def quantized_output(self, y: torch.Tensor) -> torch.Tensor:
        if self.mode == "observe":
            self.out_observer.observe(y)
            return y
        if self.mode in ("fp", "export") or self.out_encoding is None:
            return y
        if "out" in self.learned:
            return self.learned["out"](y)
        return fake_quant_activation(y, self.out_encoding)

    def sync_encodings(self) -> None:
        """Write the learned encodings' current (exported) form into ``act_encoding`` / ``out_encoding``."""
        if "act" in self.learned:
            self.act_encoding = self.learned["act"].encoding()
        if "out" in self.learned:
            self.out_encoding = self.learned["out"].encoding()

    def quantized_weight(self) -> torch.Tensor:
        if self.mode in ("fp", "export"):  # "export": the weight already holds W_b, see export_form()
            return self.weight
        if self.frozen is not None:
            q, scale, offset = self.frozen
            return (q * scale + offset).to(self.weight.dtype)
        return fake_quant_weight(self.weight, self.weight_bits, self.weight_range, self.granularity)

    def weight_codes(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Integer codes (as int32), scale and offset of the weight at the current bits: ``W_b = S * Q + offset``."""
        if self.frozen is not None:
            q, scale, offset = self.frozen
        else:
            q, scale, offset = quantize_weight(self.weight, self.weight_bits, self.weight_range, self.granularity)
        return q.to(torch.int32), scale, offset

    def freeze(self) -> None:
        """Fix the integer codes and scales of the weight as they are now; gradients stop."""
        q, scale, offset = quantize_weight(self.weight, self.weight_bits, self.weight_range, self.granularity)
        # the codes in the smallest integer type that holds the grid (int8 / uint8 up to 8 bits): a quarter of a
        # float copy of the weight, which matters at real size (export freezes every layer of a GB model)
        self.frozen = (q.to(code_dtype(*fractional_grid(self.weight_bits, self.weight_range))), scale, offset)
        self.weight.requires_grad_(False)
        self.mode = "frozen"


    def export_form(self) -> None:
        """Plain float ops for ONNX export: the weight becomes ``W_b`` and inputs pass through unquantized
        (export inserts the Q/DQ nodes with the same encodings)."""
        if self.frozen is None:
            self.freeze()
        self.sync_encodings()
        self.learned = {}
        q, scale, offset = self.frozen  # type: ignore[misc]
        self.weight = nn.Parameter((q * scale + offset).to(self.weight.dtype), requires_grad=False)
        self.mode = "export"


class QuantLinear(nn.Linear, QuantMixin):
    @classmethod
    def from_float(
        cls, m: nn.Linear, *, weight_bits: float, weight_range: Range, granularity: Granularity, act_bits: int
    ) -> QuantLinear:
        q = cls(m.in_features, m.out_features, bias=m.bias is not None, device="meta")
        q.weight = m.weight
        q.bias = m.bias
        q._init_quant(weight_bits, weight_range, granularity, act_bits)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "export":  # a 2-D Gemm, so that the bias is inside the op whose output is quantized
            y = F.linear(x.reshape(-1, self.in_features), self.weight, self.bias)
            return y.reshape(*x.shape[:-1], self.out_features)
        return self.quantized_output(F.linear(self.quantized_input(x), self.quantized_weight(), self.bias))


class QuantConv2d(nn.Conv2d, QuantMixin):
    @classmethod
    def from_float(
        cls, m: nn.Conv2d, *, weight_bits: float, weight_range: Range, granularity: Granularity, act_bits: int
    ) -> QuantConv2d:
        q = cls(
            m.in_channels,
            m.out_channels,
            m.kernel_size,
            stride=m.stride,
            padding=m.padding,
            dilation=m.dilation,
            groups=m.groups,
            bias=m.bias is not None,
            padding_mode=m.padding_mode,
            device="meta",
        )
        q.weight = m.weight
        q.bias = m.bias
        q._init_quant(weight_bits, weight_range, granularity, act_bits)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantized_output(self._conv_forward(self.quantized_input(x), self.quantized_weight(), self.bias))


QUANT_LAYERS: tuple[type, ...] = (QuantLinear, QuantConv2d)


def is_quant_layer(m: nn.Module) -> bool:
    return isinstance(m, QUANT_LAYERS)
