"""The FraQAT method in pure PyTorch: fractional-bit fake quantization, static activation encodings,
quantization policies and bit schedules. Imports nothing else of ``fraqat_deploy``."""

from fraqat_deploy.quant.activation import (
    CALIBRATIONS,
    DEFAULT_CALIBRATION,
    ActivationEncoding,
    LearnedEncoding,
    RangeObserver,
    fake_quant_activation,
)
from fraqat_deploy.quant.grid import fake_quant_weight, fractional_grid, quantize_weight, weight_qparams
from fraqat_deploy.quant.modules import QuantConv2d, QuantLinear, is_quant_layer
from fraqat_deploy.quant.policy import (
    QuantPolicy,
    calibrate,
    clamp_learned,
    freeze,
    learned_parameters,
    load_quant_state,
    prepare,
    quant_layers,
    quant_state,
    set_trainable,
    set_weight_bits,
    sync_encodings,
)
from fraqat_deploy.quant.schedule import BUILTIN, BitSchedule, ScheduleError, Stage, parse_schedule

__all__ = [
    "BUILTIN",
    "CALIBRATIONS",
    "DEFAULT_CALIBRATION",
    "LearnedEncoding",
    "clamp_learned",
    "learned_parameters",
    "sync_encodings",
    "ActivationEncoding",
    "BitSchedule",
    "QuantConv2d",
    "QuantLinear",
    "QuantPolicy",
    "RangeObserver",
    "ScheduleError",
    "Stage",
    "calibrate",
    "fake_quant_activation",
    "fake_quant_weight",
    "fractional_grid",
    "freeze",
    "is_quant_layer",
    "load_quant_state",
    "parse_schedule",
    "prepare",
    "quant_layers",
    "quant_state",
    "quantize_weight",
    "set_trainable",
    "set_weight_bits",
    "weight_qparams",
]
