"""Sampling a model from the command line: images to PNG files, text to the console."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fraqat_deploy.errors import ConfigError
from fraqat_deploy.models import get_adapter
from fraqat_deploy.train.load import load_trained
from fraqat_deploy.ui import prompt_cut_notes, shown_prompt


def save_image(image: torch.Tensor, path: Path) -> None:
    """One [3, H, W] image in [0, 1] as an 8-bit PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    array = (image.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    Image.fromarray(array).save(path)


def generate(model: str, prompts: list[str], *, out: Path | None, run: Path | None = None,
             source: str | None = None, tiny: bool = False, seed: int = 0, steps: int | None = None,
             guidance: float | None = None) -> list[str]:
    """Generate and write the outputs; returns what to tell the user, one line each."""
    if out is not None:
        out = out if out.suffix else out.with_suffix(".png")
        Image.init()
        if out.suffix.lower() not in Image.registered_extensions():
            raise ConfigError(f"cannot write images as {out.suffix!r} ({out}): give --out a .png (or .jpg, .webp) file")
    if run is not None:
        trained = load_trained(run, model)
        adapter, fp, student, label = trained.adapter, trained.fp, trained.student, f"W4A8 student of {run}"
    else:
        adapter = get_adapter(model)
        fp, student, label = adapter.load(source, tiny=tiny), None, "full-precision model"
    notes = prompt_cut_notes(fp.parts, list(prompts))
    options = {k: v for k, v in (("steps", steps), ("guidance", guidance)) if v is not None}
    with torch.no_grad():
        result = adapter.generate(fp, list(prompts), seed=seed, student=student, **options)
    if isinstance(result, list):
        return notes + [f"[{label}] {text}" for text in result]
    if out is None:
        raise ConfigError("an image model needs --out <file.png>")
    lines = list(notes)
    for i, (image, prompt) in enumerate(zip(result, prompts, strict=True)):
        path = out if len(prompts) == 1 else out.with_name(f"{out.stem}-{i}{out.suffix}")
        save_image(image, path)
        lines.append(f"{path}  '{shown_prompt(prompt)}'  seed {seed}  ({label})")
    return lines
