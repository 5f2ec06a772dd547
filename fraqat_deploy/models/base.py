"""The model adapter interface and registry.

One small class per model family, registered by name; nothing outside ``models/`` branches on a
model's name. Training, export and compile only talk to a ``ModelAdapter``.
"""

from __future__ import annotations

import copy
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from fraqat_deploy.errors import ConfigError, InputError


@dataclass
class LoadedModel:
    """A model family's modules, as loaded.

    ``student`` is the module FraQAT quantizes and trains (Sana: the transformer; Gemma: the causal LM).
    ``parts`` holds the rest (text encoder, tokenizer, VAE, scheduler settings...), frozen.
    ``spec`` is JSON-serialisable and enough for ``adapter.load_from_spec`` to rebuild the same model with
    the same full-precision weights: a tiny model records its config and seed and is re-initialised
    deterministically; a pretrained one records its source (hub id or absolute folder) and is reloaded.
    """

    adapter: str
    student: nn.Module
    parts: dict[str, Any] = field(default_factory=dict)
    spec: dict[str, Any] = field(default_factory=dict)


@dataclass
class DistillData:
    """Inputs of the student, stacked along dim 0 (one row per example); split into train and validation."""

    train: dict[str, torch.Tensor]
    val: dict[str, torch.Tensor]
    description: str = ""

    @staticmethod
    def rows(tensors: dict[str, torch.Tensor]) -> int:
        return next(iter(tensors.values())).shape[0]


@dataclass
class Component:
    """One graph of a model as it runs on the device: static shapes, named inputs and outputs.

    ``module(*inputs)`` returns one tensor or a tuple, in ``output_names`` order. ``calibration`` holds input
    tuples (the first is the sample) that export uses for encodings the training did not set.
    ``holds_student`` marks the component built around the trained, quantized student. ``info`` is what the host
    needs to know to drive the graph beyond its names and shapes (JSON-able; written to the export manifest).
    ``files``: host-side files the graph needs beside it (name -> a writer into the export folder that returns the
    file's manifest record); components that share a file give the same name.
    """

    name: str
    module: nn.Module
    input_names: list[str]
    output_names: list[str]
    calibration: list[tuple[torch.Tensor, ...]]
    holds_student: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    files: dict[str, Callable[[Path], dict[str, Any]]] = field(default_factory=dict)

    @property
    def sample(self) -> tuple[torch.Tensor, ...]:
        return self.calibration[0]


class ModelAdapter(ABC):
    """How to load one model family, what to quantize in it and how to feed it."""

    name: ClassVar[str]
    #: module kinds quantized by default (see ``quant.policy``): "linear", "conv1x1", "conv"
    quant_targets: ClassVar[tuple[str, ...]] = ("linear",)
    #: distillation loss by default: "mse" or "kl"
    default_loss: ClassVar[str] = "mse"
    #: name patterns of the feed-forward and attention modules, for selective training
    ff_patterns: ClassVar[tuple[str, ...]] = ()
    attn_patterns: ClassVar[tuple[str, ...]] = ()
    #: name patterns of whole transformer blocks, for selective training
    block_patterns: ClassVar[tuple[str, ...]] = ()
    #: name pattern of the model's last layer (kept at A16 by the paper's on-device recipe)
    last_layer_patterns: ClassVar[tuple[str, ...]] = ()

    #: what ``bench`` runs when no --prompt is given
    example_prompt: ClassVar[str] = "a photo of a cat"
    #: the random-initialised architecture ``load(tiny=True)`` builds (JSON-able: it goes into the spec)
    tiny_config: ClassVar[dict[str, Any]] = {}
    #: what ``load`` says when neither a source nor --tiny is given: (message, fix)
    missing_source: ClassVar[tuple[str, str]] = ("no model given", "pass a model folder or hub id, or --tiny")
    #: the fix when both a source and --tiny are given
    tiny_with_source_fix: ClassVar[str] = "drop the source to build the tiny model, or drop --tiny to load the source"

    def load(self, source: str | None = None, *, tiny: bool = False, seed: int = 0) -> LoadedModel:
        """Load from a hub id or local directory, or build the tiny random-initialised config."""
        if tiny:
            if source is not None:
                raise ConfigError(f"a tiny model is built from scratch, but a source was given ('{source}')",
                                  self.tiny_with_source_fix)
            return self._build_tiny(copy.deepcopy(self.tiny_config), seed)
        if not source:
            return self._default_model()
        return self._load_pretrained(source)

    def _default_model(self) -> LoadedModel:
        raise InputError(*self.missing_source)

    def load_from_spec(self, spec: dict[str, Any]) -> LoadedModel:
        """Rebuild the model recorded in ``LoadedModel.spec``, with the same weights ``load`` gave.

        The trainer uses it to rebuild the frozen full-precision teacher on resume; trained student weights
        are loaded from checkpoints afterwards.
        """
        if check_spec(spec, self.name) == "tiny":
            return self._build_tiny(copy.deepcopy(spec["config"]), int(spec["seed"]))
        return self._load_pretrained(str(spec["source"]))

    @abstractmethod
    def _build_tiny(self, config: dict[str, Any], seed: int) -> LoadedModel:
        """The architecture of ``config``, random-initialised from ``seed`` (the caller's RNG untouched)."""

    @abstractmethod
    def _load_pretrained(self, source: str) -> LoadedModel:
        """Real weights from a hub id or a local folder."""

    def save_pretrained(self, model: LoadedModel, folder: Path) -> None:
        """Write ``model`` as a folder that ``load(str(folder))`` reads back with the same weights and
        settings (the standard library layout plus ``SETTINGS_FILE``)."""
        raise NotImplementedError(f"the '{self.name}' adapter cannot save models")

    @abstractmethod
    def distill_data(
        self, model: LoadedModel, data: Path | None, *, n_train: int, n_val: int, seed: int
    ) -> DistillData:
        """Student inputs to distil on. ``data`` None means the adapter's offline default."""

    @abstractmethod
    def forward(self, student: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Run the student (or its frozen teacher copy) on a batch; the tensor the loss compares."""

    def components(self, model: LoadedModel, student: nn.Module | None = None, *, n_calibration: int = 8,
                   seed: int = 0) -> list[Component]:
        """The graphs deployed to the device, with ``student`` (default: ``model.student``) in place."""
        raise ConfigError(f"the '{self.name}' model cannot be exported yet",
                          "export is implemented for the Sana (sana, digits) and Gemma-2 (gemma, tiny-gemma) families")

    def generate(self, model: LoadedModel, prompts: list[str], *, seed: int = 0,
                 student: nn.Module | None = None, **options: Any) -> torch.Tensor | list[str]:
        """What the model makes of ``prompts``: images [B, 3, H, W] in [0, 1] or texts.

        ``student`` replaces ``model.student`` (a trained, quantized one)."""
        raise NotImplementedError(f"the '{self.name}' adapter cannot generate")


_REGISTRY: dict[str, type[ModelAdapter]] = {}


def register_model(name: str):
    def deco(cls: type[ModelAdapter]) -> type[ModelAdapter]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def registered_models() -> list[str]:
    from fraqat_deploy import models  # noqa: F401  (imports the adapters, which register)

    return sorted(_REGISTRY)


def get_adapter(name: str) -> ModelAdapter:
    names = registered_models()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model '{name}'", f"use one of: {', '.join(names)}")
    return _REGISTRY[name]()


# Helpers shared by the adapters.

#: our settings beside a saved model (sampler defaults, sequence length) that its library has no place for
SETTINGS_FILE = "fraqat_model.json"

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_source(source: str, example: str) -> tuple[str, bool]:
    """``(absolute folder, True)`` for an existing local folder, ``(source, False)`` for a hub id."""
    path = Path(source).expanduser()
    if path.is_dir():
        return str(path.resolve()), True
    if path.exists():
        raise InputError(
            f"'{source}' is a file, not a model folder", f"pass the model's folder, e.g. {example}"
        )
    if _HUB_ID.match(source):
        return source, False
    raise InputError(
        f"model folder '{source}' does not exist",
        f"check the path, or pass a Hugging Face hub id such as {example}",
    )


def check_spec(spec: dict[str, Any], adapter: str) -> str:
    """The spec's kind ("tiny" or "pretrained") after checking it belongs to ``adapter``."""
    kind = spec.get("kind")
    if spec.get("adapter") != adapter or kind not in ("tiny", "pretrained"):
        raise ConfigError(
            f"model spec {spec!r} was not written by the '{adapter}' adapter",
            "rebuild it with the adapter named in the spec, or re-run the stage that wrote it",
        )
    return str(kind)


def check_row_counts(n_train: int, n_val: int) -> None:
    if n_train < 1 or n_val < 0:
        raise ConfigError(
            f"need n_train >= 1 and n_val >= 0 distillation rows, got {n_train} and {n_val}",
            "pass positive row counts",
        )


def split_rows(
    rows: dict[str, torch.Tensor], n_train: int, n_val: int, seed: int, description: str
) -> DistillData:
    """A seeded random choice of ``n_train`` + ``n_val`` distinct rows, split into train and validation."""
    available = DistillData.rows(rows)
    if available < n_train + n_val:
        raise ValueError(f"only {available} rows for {n_train} + {n_val}")
    order = torch.randperm(available, generator=torch.Generator().manual_seed(seed))
    train, val = order[:n_train], order[n_train : n_train + n_val]
    return DistillData(
        train={k: v[train].contiguous() for k, v in rows.items()},
        val={k: v[val].contiguous() for k, v in rows.items()},
        description=description,
    )


def freeze(module: nn.Module) -> nn.Module:
    """Evaluation mode, no gradients: for the parts around the student."""
    module.eval()
    module.requires_grad_(False)
    return module


def read_settings(folder: str, local: bool, adapter: str) -> dict[str, Any]:
    """The ``SETTINGS_FILE`` of a local model folder written by ``adapter``; empty when absent."""
    path = Path(folder) / SETTINGS_FILE
    if not local or not path.is_file():
        return {}
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read '{path}': {err}", f"fix or delete {SETTINGS_FILE}") from err
    owner = settings.get("adapter") if isinstance(settings, dict) else None
    if owner != adapter:
        raise InputError(
            f"'{folder}' holds a '{owner}' model (says {SETTINGS_FILE}), not a '{adapter}' one",
            f"load it as model '{owner}', or pass a {adapter} model folder",
        )
    return settings


def write_settings(folder: Path, adapter: str, settings: dict[str, Any]) -> None:
    text = json.dumps({"adapter": adapter, **settings}, indent=2, sort_keys=True)
    (folder / SETTINGS_FILE).write_text(text + "\n", encoding="utf-8")
