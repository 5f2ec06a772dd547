"""One typed configuration for a FraQAT training run; user strings become typed values here, once."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fraqat_deploy.errors import ConfigError
from fraqat_deploy.quant import BitSchedule, QuantPolicy, parse_schedule
from fraqat_deploy.quant.activation import CALIBRATIONS, DEFAULT_CALIBRATION

LOSSES = ("mse", "kl")
OPTIMIZERS = ("adam", "adamw")
TRAINABLE = ("all", "blocks", "ff", "attn")


@dataclass
class TrainConfig:
    model: str
    out: Path
    source: str | None = None  # hub id or local path; None with tiny=True
    tiny: bool = False
    data: Path | None = None
    schedule: str = "fractional"
    steps: int | None = None  # total step budget; None: the schedule's epochs over the data
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-4
    optimizer: str = "adam"
    weight_decay: float = 0.0
    loss: str | None = None  # None: the adapter's default
    seed: int = 0
    n_train: int = 256
    n_val: int = 256  # held-out validation rows (see train/heldout.py)
    calib_samples: int = 100  # the paper's calibration sample count
    checkpoint_every: int = 25
    keep_checkpoints: int = 2
    eval_every: int = 0  # 0: validate only at stage boundaries
    trainable: str = "all"
    granularity: str = "tensor"
    weight_range: str = "narrow"
    calibration: str = DEFAULT_CALIBRATION
    recalibrate_each_stage: bool = False
    act_bits: int = 8  # 16: weights-only quantization (W4A16), a reference
    val_at_stages: bool = True  # False: validate only before the first step and at the end (benchmarks)
    exclude: tuple[str, ...] = ()
    last_layer_a16: bool = True
    resume: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.data = Path(self.data) if self.data is not None else None
        for value, allowed, what in (
            (self.optimizer, OPTIMIZERS, "optimizer"),
            (self.trainable, TRAINABLE, "--trainable"),
        ):
            if value not in allowed:
                raise ConfigError(f"unknown {what} '{value}'", f"use one of: {', '.join(allowed)}")
        if self.loss is not None and self.loss not in LOSSES:
            raise ConfigError(f"unknown loss '{self.loss}'", f"use one of: {', '.join(LOSSES)}")
        for name in ("batch_size", "grad_accum", "n_train", "calib_samples", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
        if self.steps is not None and self.steps < 1:
            raise ConfigError("--steps must be at least 1")
        # everything that can be checked before minutes of data generation is checked here
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"--lr must be a positive number, not {self.lr:g}", "use e.g. --lr 1e-4")
        if self.weight_decay < 0:
            raise ConfigError(f"--weight-decay must be >= 0, not {self.weight_decay:g}", "use e.g. --weight-decay 0")
        for name in ("n_val", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
        if self.eval_every < 0:
            raise ConfigError("--eval-every must be >= 0 (0: validate at stage boundaries only)")
        if self.calibration not in CALIBRATIONS:
            raise ConfigError(f"unknown calibration '{self.calibration}'", f"use one of: {', '.join(CALIBRATIONS)}")
        if self.act_bits not in (8, 16):
            raise ConfigError(f"activation bits must be 8 or 16, not {self.act_bits}")
        schedule = self.bit_schedule  # validate now, not at the first step
        if self.steps is not None and schedule.trains and self.steps < len(schedule.stages):
            raise ConfigError(
                f"schedule '{schedule.name}' has {len(schedule.stages)} stages, more than --steps {self.steps}",
                f"give --steps {len(schedule.stages)} or more, or a schedule with fewer stages")

    def final_bits_note(self) -> str | None:
        """What a schedule ending at other than 4 bits produces (the toolkit's target is W4A8), else None."""
        return final_bits_note(self.bit_schedule.final_bits, self.weight_range)

    @property
    def bit_schedule(self) -> BitSchedule:
        try:
            return parse_schedule(self.schedule)
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def policy(self, targets: tuple[str, ...], last_layer: tuple[str, ...]) -> QuantPolicy:
        try:
            return QuantPolicy(
                targets=targets,
                exclude=self.exclude,
                weight_range=self.weight_range,  # type: ignore[arg-type]
                granularity=self.granularity,  # type: ignore[arg-type]
                act16=last_layer if self.last_layer_a16 else (),
                calibration=self.calibration,  # type: ignore[arg-type]
                act_bits=self.act_bits,
                start_bits=self.bit_schedule.stages[0].bits,
            )
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out"] = str(self.out)
        d["data"] = str(self.data) if self.data else None
        d["exclude"] = list(self.exclude)
        return d


def final_bits_note(bits: float, weight_range: str = "narrow") -> str | None:
    """A schedule's last bit-width decides the deployed weights: say what they are when they are not W4A8."""
    if bits == 4:
        return None
    from fraqat_deploy.quant.grid import fractional_grid

    qmin, qmax = fractional_grid(bits, weight_range)  # type: ignore[arg-type]
    if -8 <= qmin and qmax <= 7:
        return (f"the schedule ends at {bits:g} bits, not 4: the result is W{bits:g}A8 ({qmax - qmin + 1} weight "
                f"levels in INT4 storage); the HTP runs it as INT4 weights, at W4A8 cost and below W4A8 accuracy")
    kind = "INT8" if -128 <= qmin and qmax <= 127 else "INT16"
    factor = 2 if kind == "INT8" else 4
    return (f"the schedule ends at {bits:g} bits, not 4: the result is not W4A8 but {kind} weights "
            f"({qmax - qmin + 1} levels); the HTP runs {kind} weights, {factor}x the weight bytes of W4A8")
