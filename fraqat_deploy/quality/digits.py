"""Scores for the digits world: does a generated image show the digit its prompt asked for (prompt accuracy),
and how far are a set of images from another set (a Fréchet distance in a digit classifier's feature space,
"digits-FD", the small-scale stand-in for FID).

The classifier is a plain CNN trained by ``scripts/build_digits.py`` on scikit-learn's handwritten digits and
shipped beside the digits-Sana model (``classifier.safetensors`` + ``classifier.json``).
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from scipy import linalg
from torch import nn

from fraqat_deploy.errors import InputError
from fraqat_deploy.models.digits import ASSET_DIR
from fraqat_deploy.models.tokenizers import NUMBER_WORDS

if TYPE_CHECKING:
    from fraqat_deploy.models.base import LoadedModel

CLASSIFIER_WEIGHTS = "classifier.safetensors"
CLASSIFIER_CONFIG = "classifier.json"
#: side of the images the VAE makes and the classifier reads (the 8x8 digits upsampled 4x)
IMAGE_SIZE = 32
#: every HELD_OUT_EVERY-th image of each digit is held out: never trained on by any part of the world
HELD_OUT_EVERY = 5
DIGIT_WORDS: tuple[str, ...] = NUMBER_WORDS[:10]
#: the prompt ``evaluate_digits`` asks for each digit
EVAL_TEMPLATE = "a handwritten digit {}"

Split = Literal["train", "test", "all"]


# -- the real digits ----------------------------------------------------------------------------------------


def real_digits(split: Split = "all") -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1797 handwritten digits as images [N, 3, 32, 32] in [0, 1] (grey in all three channels,
    8x8 upsampled bilinearly) and labels [N]. ``split``: "test" is the held-out fifth, "train" the rest."""
    images, labels = _digits_8x8()
    # rank of each image among the images of its digit: every digit is held out in the same proportion (the
    # dataset cycles 0..9 in runs, so a plain index % 5 would hold out mostly fours and nines)
    rank = torch.zeros_like(labels)
    for digit in range(10):
        mine = labels == digit
        rank[mine] = torch.arange(int(mine.sum()))
    keep = {"all": torch.ones_like(labels, dtype=torch.bool), "test": rank % HELD_OUT_EVERY == HELD_OUT_EVERY - 1}
    keep["train"] = ~keep["test"]
    if split not in keep:
        raise ValueError(f"split must be one of {sorted(keep)}, got {split!r}")
    chosen = keep[split]
    return upsample_digits(images[chosen]), labels[chosen].clone()


@lru_cache(maxsize=1)
def _digits_8x8() -> tuple[torch.Tensor, torch.Tensor]:
    # imported here: scikit-learn is slow to import and only the digits world needs it
    from sklearn.datasets import load_digits

    data = load_digits()
    return torch.tensor(data.images, dtype=torch.float32) / 16.0, torch.tensor(data.target, dtype=torch.long)


def upsample_digits(images: torch.Tensor) -> torch.Tensor:
    """[N, 8, 8] grey digits in [0, 1] -> [N, 3, 32, 32] RGB images in [0, 1]."""
    big = F.interpolate(images[:, None], size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    return big.clamp(0, 1).expand(-1, 3, -1, -1).contiguous()


# -- prompts ------------------------------------------------------------------------------------------------

_TOKEN = re.compile(r"[a-z]+|\d+")


def digit_of_prompt(prompt: str) -> int | None:
    """The one digit a prompt names, as a word ("seven") or a numeral ("7"); None when it names none, several
    different ones, or a larger number ("10", "ten")."""
    found: set[int] = set()
    for token in _TOKEN.findall(prompt.lower()):
        if token.isdigit():
            if len(token) > 1:
                return None
            found.add(int(token))
        elif token in DIGIT_WORDS:
            found.add(DIGIT_WORDS.index(token))
        elif token in ("ten", "eleven", "twelve", "hundred", "thousand"):
            return None
    return found.pop() if len(found) == 1 else None


# -- the classifier -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassifierConfig:
    channels: tuple[int, int, int] = (16, 32, 64)
    features: int = 64
    dropout: float = 0.3


class DigitClassifier(nn.Module):
    """A small CNN over 32x32 grey digits; its penultimate layer's activations are the digits-FD features."""

    def __init__(self, config: ClassifierConfig | None = None) -> None:
        super().__init__()
        self.config = config or ClassifierConfig()
        c1, c2, c3 = self.config.channels
        self.conv = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c1, c1, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 16x16
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8
            nn.Conv2d(c2, c3, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 4x4
        )
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(c3 * 16, self.config.features), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(self.config.dropout), nn.Linear(self.config.features, 10))

    @staticmethod
    def prepare(images: torch.Tensor) -> torch.Tensor:
        """Images [N, C, H, W] in [0, 1] (C = 1 or 3) -> the network's grey 32x32 input, centred on 0."""
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected images [N, 1 or 3, H, W], got {tuple(images.shape)}")
        grey = images.float().mean(1, keepdim=True)
        if grey.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
            grey = F.interpolate(grey, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
        return grey * 2 - 1

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed(self.conv(self.prepare(images)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def save_classifier(classifier: DigitClassifier, folder: Path, extra: dict[str, Any] | None = None) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in classifier.state_dict().items()}, str(folder / CLASSIFIER_WEIGHTS))
    info = {"config": asdict(classifier.config), **(extra or {})}
    (folder / CLASSIFIER_CONFIG).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def load_classifier(folder: str | Path | None = None) -> DigitClassifier:
    """The digit classifier saved in ``folder`` (default: the committed digits world), frozen in eval mode.
    Loaded once per folder and shared, so do not train or modify the returned module."""
    return _load_classifier(str(Path(folder or ASSET_DIR).resolve()))


@lru_cache(maxsize=4)
def _load_classifier(folder: str) -> DigitClassifier:
    weights, config = Path(folder) / CLASSIFIER_WEIGHTS, Path(folder) / CLASSIFIER_CONFIG
    if not weights.is_file() or not config.is_file():
        raise InputError(
            f"no digit classifier in '{folder}' ({CLASSIFIER_WEIGHTS} and {CLASSIFIER_CONFIG})",
            "pass a folder written by scripts/build_digits.py, or rebuild the digits world with it",
        )
    raw = json.loads(config.read_text(encoding="utf-8"))["config"]
    classifier = DigitClassifier(ClassifierConfig(**{**raw, "channels": tuple(raw["channels"])}))
    classifier.load_state_dict(load_file(str(weights)))
    classifier.eval().requires_grad_(False)
    return classifier


@torch.no_grad()
def _batched(fn: Any, images: torch.Tensor, batch: int = 512) -> torch.Tensor:
    return torch.cat([fn(images[i : i + batch]) for i in range(0, len(images), batch)])


def classify(images: torch.Tensor, classifier: DigitClassifier | None = None) -> torch.Tensor:
    """The digit [N] (int64) the classifier sees in each image [N, C, H, W] in [0, 1]."""
    net = classifier or load_classifier()
    return _batched(lambda x: net(x).argmax(1), images.cpu())


def features(images: torch.Tensor, classifier: DigitClassifier | None = None) -> torch.Tensor:
    """The classifier's penultimate activations [N, F] (float64, for the Fréchet distance)."""
    net = classifier or load_classifier()
    return _batched(net.features, images.cpu()).double()


def prompt_accuracy(
    images: torch.Tensor, digits: torch.Tensor | Sequence[int], classifier: DigitClassifier | None = None
) -> float:
    """Share of images the classifier reads as the digit asked for."""
    wanted = torch.as_tensor(digits, dtype=torch.long)
    if len(wanted) != len(images) or len(images) == 0:
        raise ValueError(f"need one digit per image, got {len(wanted)} digits for {len(images)} images")
    return float((classify(images, classifier) == wanted).float().mean())


# -- Fréchet distance ---------------------------------------------------------------------------------------


def frechet_distance(feats_a: torch.Tensor | np.ndarray, feats_b: torch.Tensor | np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [N, F] (as FID computes it).

    With fewer samples than features the covariances are singular and ``sqrtm`` of their product can come out
    complex or inaccurate; like pytorch-fid we then add a small multiple of the identity to both."""
    a, b = np.asarray(feats_a, dtype=np.float64), np.asarray(feats_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need two [N, F] feature sets of the same F, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError("need at least two samples in each set to estimate a covariance")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    covmean = _sqrtm_product(cov_a, cov_b)
    distance = float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean))
    # a rounding error can make the distance of near-identical sets slightly negative
    return max(distance, 0.0)


def _sqrtm_product(cov_a: np.ndarray, cov_b: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        # scipy warns on singular products; we check the root ourselves and retry with an offset
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(cov_a @ cov_b)
        if not np.isfinite(covmean).all() or _relative_error(covmean, cov_a @ cov_b) > 1e-3:
            offset = np.eye(len(cov_a)) * 1e-6 * max(np.trace(cov_a), np.trace(cov_b), 1e-12) / len(cov_a)
            covmean = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    if np.iscomplexobj(covmean):
        # tiny imaginary parts are numerical noise of a (near) singular product
        covmean = covmean.real
    return covmean


def _relative_error(root: np.ndarray, square: np.ndarray) -> float:
    return float(np.abs(root @ root - square).max() / max(np.abs(square).max(), 1e-12))


def fd_between(images_a: torch.Tensor, images_b: torch.Tensor, classifier: DigitClassifier | None = None) -> float:
    """digits-FD between two image sets [N, C, H, W] in [0, 1], e.g. a quantized model's against its FP model's."""
    return frechet_distance(features(images_a, classifier), features(images_b, classifier))


# -- scoring a model ----------------------------------------------------------------------------------------


def digit_prompts(per_digit: int, template: str = EVAL_TEMPLATE) -> tuple[list[str], torch.Tensor]:
    """``per_digit`` prompts for each digit 0..9 (digit-major order) and the digits they ask for."""
    digits = torch.arange(10).repeat_interleave(per_digit)
    return [template.format(DIGIT_WORDS[d]) for d in digits.tolist()], digits


def evaluate_digits(
    model: LoadedModel,
    transformer: nn.Module | None = None,
    per_digit: int = 20,
    seed: int = 0,
    steps: int | None = None,
    *,
    guidance: float | None = None,
    classifier: DigitClassifier | None = None,
) -> dict[str, Any]:
    """Generate ``per_digit`` images of every digit with the model's own sampler (``transformer`` replaces
    its student, e.g. with a quantized one) and score them.

    Returns ``prompt_accuracy``, ``per_digit_accuracy`` (10 floats), ``fd_real`` (digits-FD against the
    held-out real digits), and ``images``, ``digits``, ``predictions``, ``features`` so a caller can compare
    two models, e.g. ``fd_between(student_result["images"], fp_result["images"])`` for the same ``seed``."""
    from fraqat_deploy.models.sampler import generate

    net = classifier or load_classifier()
    prompts, digits = digit_prompts(per_digit)
    images = generate(model, prompts, seed=seed, steps=steps, guidance=guidance, transformer=transformer).cpu()
    predictions = classify(images, net)
    feats = features(images, net)
    hits = (predictions == digits).float()
    return {
        "prompt_accuracy": float(hits.mean()),
        "per_digit_accuracy": [float(hits[digits == d].mean()) for d in range(10)],
        "fd_real": frechet_distance(feats, _real_features(net)),
        "images": images,
        "digits": digits,
        "predictions": predictions,
        "features": feats,
        "prompts": prompts,
    }


def _real_features(classifier: DigitClassifier) -> torch.Tensor:
    images, _ = real_digits("test")
    return features(images, classifier)
