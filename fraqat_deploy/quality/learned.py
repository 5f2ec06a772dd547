"""Image metrics that need pretrained networks: LPIPS, FID (Inception), CLIP-FID and CLIP score.

None of them runs unless the user points to local weights (no download, and never a random backbone): without
them each metric is recorded as ``{"available": false, "reason": ..., "option": ...}``. With a path, the weights
must load completely or the command stops with a one-line error.

- ``--lpips-weights``: LPIPS with the AlexNet backbone (Zhang et al. 2018, v0.1) computed here in plain PyTorch.
  Give either one file with the whole LPIPS state (``torch.save(lpips.LPIPS(net="alex").state_dict(), path)``) or
  a folder holding torchvision's ``alexnet-owt-7be5be79.pth`` and the lpips package's ``weights/v0.1/alex.pth``.
  Every backbone and linear-head tensor must be present.
- ``--inception-weights``: the TorchScript Inception-v3 used by StyleGAN2-ADA and clean-fid
  (``inception-2015-12-05.pt``), called as ``model(images_0_255, return_features=True)`` -> [N, 2048].
- ``--clip-weights``: a local Hugging Face CLIP folder (``CLIPModel.save_pretrained`` layout with its tokenizer and
  ``preprocessor_config.json``). CLIP score is ``100 * max(cos(image, prompt), 0)`` (as torchmetrics);
  CLIP-FID the Fréchet distance of CLIP image embeddings (as clean-fid's CLIP-FID).
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fraqat_deploy.errors import ConfigError, InputError

#: metric -> (the option that enables it, what it needs)
OPTIONS: dict[str, tuple[str, str]] = {
    "lpips": ("--lpips-weights", "LPIPS (AlexNet) weights"),
    "fid": ("--inception-weights", "the TorchScript Inception-v3 of clean-fid / StyleGAN2-ADA"),
    "clip_fid": ("--clip-weights", "a local CLIP model folder"),
    "clip_score": ("--clip-weights", "a local CLIP model folder"),
}


@dataclass(frozen=True)
class LearnedWeights:
    """Local weights for the learned metrics; None leaves a metric unavailable."""

    lpips: Path | None = None
    inception: Path | None = None
    clip: Path | None = None

    def path_of(self, metric: str) -> Path | None:
        return {"lpips": self.lpips, "fid": self.inception, "clip_fid": self.clip, "clip_score": self.clip}[metric]


def unavailable(metric: str) -> dict[str, Any]:
    option, needs = OPTIONS[metric]
    return {"available": False, "reason": f"needs {needs}; none given (metrics never use a random backbone)",
            "option": option}


# -- LPIPS (AlexNet, v0.1) ---------------------------------------------------------------------------------

# torchvision's AlexNet ``features``: (index, in, out, kernel, stride, padding) of each convolution; LPIPS taps the
# ReLU after each, in the five slices the lpips package names net.slice1..5 (keeping torchvision's indices)
_ALEX_CONVS = ((0, 3, 64, 11, 4, 2), (3, 64, 192, 5, 1, 2), (6, 192, 384, 3, 1, 1), (8, 384, 256, 3, 1, 1),
               (10, 256, 256, 3, 1, 1))
_ALEX_SLICE = {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}
_LPIPS_SHIFT = (-0.030, -0.088, -0.188)
_LPIPS_SCALE = (0.458, 0.448, 0.450)


class Lpips(nn.Module):
    """LPIPS distance with the AlexNet backbone; ``forward(a, b)`` on images [N, 3, H, W] in [0, 1] -> [N]."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(i, o, k, s, p) for _, i, o, k, s, p in _ALEX_CONVS)
        self.lins = nn.ModuleList(nn.Conv2d(o, 1, 1, bias=False) for _, _, o, _, _, _ in _ALEX_CONVS)
        self.register_buffer("shift", torch.tensor(_LPIPS_SHIFT)[None, :, None, None])
        self.register_buffer("scale", torch.tensor(_LPIPS_SCALE)[None, :, None, None])

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = ((x * 2 - 1) - self.shift) / self.scale
        out = []
        for i, conv in enumerate(self.convs):
            if i in (1, 2):  # max pools before conv2 and conv3
                x = F.max_pool2d(x, 3, 2)
            x = F.relu(conv(x))
            out.append(x)
        return out

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(a.shape[0])
        for lin, fa, fb in zip(self.lins, self.taps(a), self.taps(b), strict=True):
            na = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            nb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + lin((na - nb) ** 2).mean((1, 2, 3))
        return total


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (pickle, zip and format errors alike)
        raise InputError(f"cannot read {path} as PyTorch weights: {e}".splitlines()[0],
                         "pass a .pth/.pt/.safetensors state dict") from None
    if isinstance(data, dict) and "state_dict" in data and isinstance(data["state_dict"], dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise InputError(f"{path} holds no state dict", "pass a .pth/.pt/.safetensors state dict")
    return {str(k): v for k, v in data.items() if isinstance(v, torch.Tensor)}


def load_lpips(path: Path) -> Lpips:
    """LPIPS-AlexNet from local weights (see the module docstring); every tensor must be found."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"LPIPS weights not found: {path}", "pass an existing file or folder to --lpips-weights")
    files = sorted(p for p in path.iterdir() if p.suffix in (".pth", ".pt", ".safetensors")) if path.is_dir() \
        else [path]
    found: dict[str, torch.Tensor] = {}
    for f in files:
        for key, value in _read_tensors(f).items():
            key = key.removeprefix("module.")
            if key.startswith("features."):  # torchvision's AlexNet -> the lpips package's names
                index = int(key.split(".")[1])
                if index in _ALEX_SLICE:
                    key = f"net.slice{_ALEX_SLICE[index]}.{key.split('.', 1)[1]}"
            found[key] = value
    model = Lpips()
    state = {}
    for n, (index, *_rest) in enumerate(_ALEX_CONVS):
        for part in ("weight", "bias"):
            state[f"convs.{n}.{part}"] = f"net.slice{_ALEX_SLICE[index]}.{index}.{part}"
        state[f"lins.{n}.weight"] = f"lin{n}.model.1.weight"
    missing = [source for source in state.values() if source not in found]
    if missing:
        raise InputError(
            f"{path} lacks {len(missing)} LPIPS tensor(s), e.g. {', '.join(missing[:3])}",
            "save the whole model: torch.save(lpips.LPIPS(net='alex').state_dict(), 'lpips_alex.pth'), or put "
            "torchvision's alexnet-owt-7be5be79.pth and lpips' weights/v0.1/alex.pth in one folder")
    try:
        model.load_state_dict({k: found[v] for k, v in state.items()} | {"shift": model.shift, "scale": model.scale})
    except RuntimeError as e:
        raise InputError(f"{path} does not fit LPIPS-AlexNet: {str(e).splitlines()[0]}",
                         "pass LPIPS weights for net='alex' (v0.1)") from None
    return model.eval().requires_grad_(False)


# -- Inception (FID) ---------------------------------------------------------------------------------------


def load_inception(path: Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"Inception weights not found: {path}",
                         "pass the TorchScript file inception-2015-12-05.pt to --inception-weights")
    try:
        with warnings.catch_warnings():
            # torch marks TorchScript deprecated; the reference FID network is still distributed as TorchScript
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as e:  # noqa: BLE001  (TorchScript raises several kinds on a wrong file)
        raise InputError(f"{path} is not a TorchScript module: {str(e).splitlines()[0] if str(e) else e}",
                         "--inception-weights takes the TorchScript Inception-v3 of clean-fid / StyleGAN2-ADA "
                         "(inception-2015-12-05.pt)") from None


# -- CLIP ----------------------------------------------------------------------------------------------------

_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class Clip:
    model: nn.Module
    tokenizer: Any
    size: int
    crop: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def pixels(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP's preprocessing: shortest side to ``size`` (bicubic), centre crop ``crop``, normalise."""
        h, w = images.shape[-2:]
        scale = self.size / min(h, w)
        x = F.interpolate(images.float(), size=(max(self.crop, round(h * scale)), max(self.crop, round(w * scale))),
                          mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        top, left = (x.shape[-2] - self.crop) // 2, (x.shape[-1] - self.crop) // 2
        x = x[..., top : top + self.crop, left : left + self.crop]
        return (x - torch.tensor(self.mean)[:, None, None]) / torch.tensor(self.std)[:, None, None]

    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        return _pooled(self.model.get_image_features(pixel_values=self.pixels(images)))

    @torch.no_grad()
    def text_features(self, prompts: list[str]) -> torch.Tensor:
        limit = int(self.model.config.text_config.max_position_embeddings)
        tokens = self.tokenizer(prompts, padding=True, truncation=True, max_length=limit, return_tensors="pt")
        return _pooled(self.model.get_text_features(input_ids=tokens["input_ids"],
                                                    attention_mask=tokens["attention_mask"]))

    def score(self, images: torch.Tensor, prompts: list[str]) -> list[float]:
        a = F.normalize(self.image_features(images), dim=-1)
        b = F.normalize(self.text_features(prompts), dim=-1)
        return [float(v) for v in (100 * (a * b).sum(-1)).clamp(min=0)]


def _pooled(out: Any) -> torch.Tensor:
    # transformers 5 returns a model output whose pooler_output is the projected embedding; 4.x the tensor itself
    return (out.pooler_output if hasattr(out, "pooler_output") else out).float()


def load_clip(path: Path) -> Clip:
    path = Path(path)
    if not (path / "config.json").is_file():
        raise InputError(f"no CLIP model folder at {path} (config.json missing)",
                         "pass a folder written by CLIPModel.save_pretrained, with its tokenizer")
    if importlib.util.find_spec("transformers") is None:
        raise ConfigError("CLIP metrics need the package transformers", "pip install transformers")
    from transformers import AutoTokenizer, CLIPModel

    try:
        model = CLIPModel.from_pretrained(str(path), local_files_only=True).eval().requires_grad_(False)
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"cannot load the CLIP model in {path}: {str(e).splitlines()[0]}",
                         "pass a complete CLIP folder (weights, config.json, tokenizer)") from None
    image_size = int(model.config.vision_config.image_size)
    settings: dict[str, Any] = {}
    if (path / "preprocessor_config.json").is_file():
        settings = json.loads((path / "preprocessor_config.json").read_text())
    size, crop = settings.get("size", image_size), settings.get("crop_size", image_size)
    size = size.get("shortest_edge", image_size) if isinstance(size, dict) else size
    crop = crop.get("height", image_size) if isinstance(crop, dict) else crop
    return Clip(model, tokenizer, int(size), int(crop), tuple(settings.get("image_mean", _CLIP_MEAN)),
                tuple(settings.get("image_std", _CLIP_STD)))


# -- all of them -------------------------------------------------------------------------------------------


class LearnedMetrics:
    """The learned metrics whose weights were given, loaded once."""

    def __init__(self, weights: LearnedWeights | None = None) -> None:
        self.weights = weights or LearnedWeights()
        self.lpips = load_lpips(self.weights.lpips) if self.weights.lpips else None
        self.inception = load_inception(self.weights.inception) if self.weights.inception else None
        self.clip = load_clip(self.weights.clip) if self.weights.clip else None

    def status(self) -> dict[str, dict[str, Any]]:
        out = {}
        for metric in OPTIONS:
            path = self.weights.path_of(metric)
            out[metric] = {"available": True, "weights": str(Path(path).resolve())} if path else unavailable(metric)
        return out

    @torch.no_grad()
    def paired(self, images: torch.Tensor, references: torch.Tensor) -> dict[str, list[float]]:
        """Per-image metrics of ``images`` against ``references`` (both [N, 3, H, W] in [0, 1])."""
        return {"lpips": [float(v) for v in self.lpips(images, references)]} if self.lpips is not None else {}

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> dict[str, np.ndarray]:
        """Set features for the Fréchet distances: "fid" (Inception pool, 2048) and "clip_fid" (CLIP image)."""
        out = {}
        if self.inception is not None:
            out["fid"] = self.inception(images.float() * 255, return_features=True).reshape(len(images), -1) \
                .double().numpy()
        if self.clip is not None:
            out["clip_fid"] = self.clip.image_features(images).double().numpy()
        return out

    def clip_scores(self, images: torch.Tensor, prompts: list[str]) -> list[float] | None:
        return self.clip.score(images, prompts) if self.clip is not None else None
