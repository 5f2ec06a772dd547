"""What to quantize and how: ``prepare(model, QuantPolicy)`` -> calibrate -> train -> ``freeze``.

The quantization state of a prepared model (per-layer bits, weight scales, activation encodings) is a plain
JSON-able dict (``quant_state``), written next to the weights and read back by ``load_quant_state`` and export.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from fraqat_deploy.quant.activation import (
    CALIBRATIONS,
    DEFAULT_CALIBRATION,
    ActivationEncoding,
    Calibration,
    LearnedEncoding,
)
from fraqat_deploy.quant.grid import Granularity, Range, check_bits
from fraqat_deploy.quant.modules import QuantConv2d, QuantLinear, QuantMixin, is_quant_layer

TARGETS: dict[str, str] = {
    "linear": "every nn.Linear",
    "conv1x1": "every 1x1, ungrouped nn.Conv2d (a Linear over channels, like Sana's feed-forward)",
    "conv": "every nn.Conv2d",
}
TRAINABLE: tuple[str, ...] = ("all", "blocks", "ff", "attn")
STATE_FORMAT = 1


def _one_of(value: str, allowed: Iterable[str], what: str) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"unknown {what} '{value}': use one of {', '.join(allowed)}")


def matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


@dataclass
class QuantPolicy:
    """Which modules to quantize and how. Validated on construction; errors list the allowed values."""

    targets: tuple[str, ...] = ("linear",)
    exclude: tuple[str, ...] = ()  # fnmatch patterns of module names kept in full precision
    weight_range: Range = "narrow"
    granularity: Granularity = "tensor"  # the paper is per-tensor; "channel" is our extension
    act_bits: int = 8
    act16: tuple[str, ...] = ()  # patterns of layers whose input activations stay at 16 bits (the last layer)
    calibration: Calibration = DEFAULT_CALIBRATION
    start_bits: float = 8.0

    def __post_init__(self) -> None:
        self.targets = tuple(self.targets)
        self.exclude = tuple(self.exclude)
        self.act16 = tuple(self.act16)
        if not self.targets:
            raise ValueError(f"a policy needs at least one target: {', '.join(TARGETS)}")
        for t in self.targets:
            _one_of(t, TARGETS, "quantization target")
        _one_of(self.weight_range, ("narrow", "wide"), "weight range")
        _one_of(self.granularity, ("tensor", "channel"), "granularity")
        _one_of(str(self.act_bits), ("8", "16"), "activation bit-width")
        _one_of(self.calibration, CALIBRATIONS, "calibration")
        check_bits(self.start_bits)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("targets", "exclude", "act16"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QuantPolicy:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def selects(self, name: str, module: nn.Module) -> bool:
        if matches(name, self.exclude):
            return False
        if isinstance(module, nn.Linear):
            return "linear" in self.targets
        if isinstance(module, nn.Conv2d):
            pointwise = module.kernel_size == (1, 1) and module.groups == 1
            return "conv" in self.targets or ("conv1x1" in self.targets and pointwise)
        return False


@dataclass
class PreparedModel:
    """The names of the layers ``prepare`` quantized, in module order."""

    layers: list[str] = field(default_factory=list)


def quant_layers(model: nn.Module) -> dict[str, QuantMixin]:
    return {n: m for n, m in model.named_modules() if is_quant_layer(m)}  # type: ignore[misc]


def prepare(model: nn.Module, policy: QuantPolicy) -> PreparedModel:
    """Replace the selected layers of ``model`` in place by quantized ones at ``policy.start_bits``."""
    chosen = [(n, m) for n, m in model.named_modules() if n and not is_quant_layer(m) and policy.selects(n, m)]
    if not chosen:
        raise ValueError("the policy selects no layer of this model: check its targets and exclusions")
    for name, m in chosen:
        cls = QuantLinear if isinstance(m, nn.Linear) else QuantConv2d
        act_bits = 16 if matches(name, policy.act16) else policy.act_bits
        q = cls.from_float(m, weight_bits=policy.start_bits, weight_range=policy.weight_range,
                           granularity=policy.granularity, act_bits=act_bits)  # type: ignore[arg-type]
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, q)
    return PreparedModel([n for n, _ in chosen])


def set_weight_bits(model: nn.Module, bits: float) -> None:
    for m in quant_layers(model).values():
        m.set_weight_bits(bits)


def set_trainable(model: nn.Module, patterns: Iterable[str] | None) -> int:
    """Selective training: only parameters under modules matching ``patterns`` learn (None: all of them).

    Every quantized layer stays quantized whatever learns. Returns the number of trainable parameters.
    """
    patterns = tuple(patterns) if patterns is not None else None
    n = 0
    for name, p in model.named_parameters():
        module_name = name.rpartition(".")[0]
        learn = patterns is None or matches(module_name, patterns)
        p.requires_grad_(learn)
        n += p.numel() if learn else 0
    if n == 0:
        raise ValueError("selective training matched no parameter of this model")
    return n


@torch.no_grad()
def calibrate(
    model: nn.Module, run: Callable[[], None], method: Calibration | None = None, policy: QuantPolicy | None = None
) -> dict[str, ActivationEncoding]:
    """Calibrate every quantized layer's input and output encodings from what ``run()`` feeds the model; they
    stay frozen afterwards. Returns the input encodings.

    ``run`` performs the calibration forwards (for example over N samples); weights are fake-quantized at their
    current bits meanwhile, as in training.
    """
    method = method or (policy.calibration if policy else DEFAULT_CALIBRATION)
    layers = quant_layers(model)
    for m in layers.values():
        m.observer.__init__()  # type: ignore[misc]
        m.out_observer.__init__()  # type: ignore[misc]
        m.mode = "observe"
    try:
        run()
    finally:
        for m in layers.values():
            m.mode = "quant"
    encodings = {}
    for name, m in layers.items():
        if m.observer.count == 0:
            raise ValueError(f"layer '{name}' saw no calibration data: is it used by the forward pass?")
        m.act_encoding = m.observer.encoding(method, m.act_bits)
        m.out_encoding = m.out_observer.encoding(method, m.act_bits)
        if method == "learned":  # trained from here on, starting at the calibrated ranges
            for key, enc in (("act", m.act_encoding), ("out", m.out_encoding)):
                if key in m.learned:
                    m.learned[key].reset(enc)
                else:
                    m.learned[key] = LearnedEncoding(enc).to(m.weight.device)
        encodings[name] = m.act_encoding
        m.observer.__init__()  # type: ignore[misc]  # release the samples
        m.out_observer.__init__()  # type: ignore[misc]
    return encodings


def learned_parameters(model: nn.Module) -> list[torch.nn.Parameter]:
    """The trainable scales and zero points of learned activation encodings, in a fixed order."""
    return [p for m in quant_layers(model).values() for key in ("act", "out") if key in m.learned
            for p in (m.learned[key].log_scale, m.learned[key].zero_point)]


@torch.no_grad()
def clamp_learned(model: nn.Module) -> None:
    for m in quant_layers(model).values():
        for enc in m.learned.values():
            enc.clamp_()


def sync_encodings(model: nn.Module) -> None:
    """Learned encodings -> the static ``act_encoding`` / ``out_encoding`` that ``quant_state`` and export read."""
    for m in quant_layers(model).values():
        m.sync_encodings()


def freeze(model: nn.Module) -> None:
    for m in quant_layers(model).values():
        m.freeze()


def _floats(t: torch.Tensor) -> list[float]:
    return [float(v) for v in t.detach().flatten().float()]


def quant_state(model: nn.Module, policy: QuantPolicy | None = None) -> dict[str, Any]:
    """Per-layer bits, weight scales and offsets, activation encodings: everything export needs."""
    layers = {}
    for name, m in quant_layers(model).items():
        m.sync_encodings()
        _, scale, offset = m.weight_codes()
        layers[name] = {
            "kind": "linear" if isinstance(m, nn.Linear) else "conv2d",
            "weight_bits": m.weight_bits,
            "weight_range": m.weight_range,
            "granularity": m.granularity,
            "weight_scale": _floats(scale),
            "weight_offset": _floats(offset),
            "act": m.act_encoding.to_dict() if m.act_encoding else {"bits": m.act_bits, "scale": None},
            "out": m.out_encoding.to_dict() if m.out_encoding else {"bits": m.act_bits, "scale": None},
        }
        if m.learned:  # the trainable values themselves, so that --resume continues them exactly
            layers[name]["learned"] = {k: {"log_scale": float(e.log_scale), "zero_point": float(e.zero_point)}
                                       for k, e in m.learned.items()}
    return {"format": STATE_FORMAT, "policy": policy.to_dict() if policy else None, "layers": layers}


def load_quant_state(model: nn.Module, state: dict[str, Any]) -> None:
    """Restore bits and activation encodings saved by ``quant_state`` into a model prepared the same way."""
    if state.get("format") != STATE_FORMAT:
        raise ValueError(f"quant state format {state.get('format')} is not {STATE_FORMAT}")
    layers = quant_layers(model)
    missing = sorted(set(state["layers"]) ^ set(layers))
    if missing:
        raise ValueError(f"quant state and model disagree on layers: {', '.join(missing[:5])}")
    for name, entry in state["layers"].items():
        m = layers[name]
        m.set_weight_bits(entry["weight_bits"])
        act = entry["act"]
        m.act_encoding = ActivationEncoding.from_dict(act) if act.get("scale") is not None else None
        out = entry["out"]
        m.out_encoding = ActivationEncoding.from_dict(out) if out.get("scale") is not None else None
        m.learned = {}
        for key, values in entry.get("learned", {}).items():
            enc = LearnedEncoding(m.act_encoding if key == "act" else m.out_encoding)
            with torch.no_grad():
                enc.log_scale.fill_(values["log_scale"])
                enc.zero_point.fill_(values["zero_point"])
            m.learned[key] = enc.to(m.weight.device)
