"""Flow-matching Euler sampling for Sana, kept short and explicit so the phone app can port it line by line.

Conventions (Sana, rectified flow): ``x_t = (1 - sigma) * x0 + sigma * noise``; the transformer predicts the
velocity ``v = noise - x0`` at model timestep ``sigma * 1000``; an Euler step is
``x <- x + (sigma_next - sigma) * v``.

Sigmas: ``t_i = linspace(1, 0, steps + 1)``, shifted by ``shift * t / (1 + (shift - 1) * t)``. This equals
diffusers' ``FlowMatchEulerDiscreteScheduler(shift=shift).set_timesteps(sigmas=t[:-1])`` (and diffusers'
SanaPipeline with that scheduler and those ``sigmas`` gives the same images). Its *default*
``set_timesteps(steps)`` differs: it spaces ``steps`` timesteps from 1000 down to ``1000 * sigma_min``
inclusive (``sigma_min`` = shift(1/1000)) and shifts them again, so its last step runs from about 0.009 to 0
and wastes a model call; ours spends every step on an equal share of unshifted time. The Euler update is
the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from fraqat_deploy.models.base import LoadedModel

NUM_TRAIN_TIMESTEPS = 1000


@dataclass
class PromptEmbeds:
    """Text-encoder output for a batch of prompts, padded to a fixed token length."""

    embeds: torch.Tensor  # [B, L, D]
    mask: torch.Tensor  # [B, L], 1 = real token


@dataclass
class SampleResult:
    latents: torch.Tensor
    #: (x_t, model timestep) fed to the transformer at every step, when asked for
    trajectory: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)


def flow_sigmas(steps: int, shift: float) -> torch.Tensor:
    """``steps + 1`` shifted sigmas from 1 down to 0 (float32)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float32)
    return shift * t / (1 + (shift - 1) * t)


@torch.no_grad()
def encode_prompts(
    text_encoder: nn.Module, tokenizer, prompts: Sequence[str], max_tokens: int
) -> PromptEmbeds:
    """Gemma-2 last hidden states, right-padded to ``max_tokens``, as diffusers' SanaPipeline computes them
    (without its optional "complex human instruction" preamble)."""
    # SanaPipeline's caption preprocessing without clean_caption: lower-case and strip
    texts = [p.lower().strip() for p in prompts]
    tokenizer.padding_side = "right"
    tokens = tokenizer(
        texts,
        padding="max_length",
        max_length=max_tokens,
        truncation=True,
        add_special_tokens=True,
        return_tensors="pt",
    )
    device = next(text_encoder.parameters()).device
    mask = tokens["attention_mask"].to(device)
    embeds = text_encoder(tokens["input_ids"].to(device), attention_mask=mask)[0]
    return PromptEmbeds(embeds.float(), mask)


def guided_velocity(
    transformer: nn.Module,
    x: torch.Tensor,
    timestep: torch.Tensor,
    cond: PromptEmbeds,
    uncond: PromptEmbeds | None,
    guidance: float,
) -> torch.Tensor:
    """The transformer's velocity at ``x``, with classifier-free guidance when ``guidance > 1``."""
    if uncond is None or guidance <= 1.0:
        return transformer(
            hidden_states=x,
            encoder_hidden_states=cond.embeds,
            timestep=timestep,
            encoder_attention_mask=cond.mask,
            return_dict=False,
        )[0].float()
    # one batch of 2B, unconditional first, as SanaPipeline does
    v = transformer(
        hidden_states=torch.cat([x, x]),
        encoder_hidden_states=torch.cat([uncond.embeds, cond.embeds]),
        timestep=torch.cat([timestep, timestep]),
        encoder_attention_mask=torch.cat([uncond.mask, cond.mask]),
        return_dict=False,
    )[0].float()
    v_uncond, v_cond = v.chunk(2)
    return v_uncond + guidance * (v_cond - v_uncond)


def euler_step(
    x: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor
) -> torch.Tensor:
    return x + (sigma_next - sigma) * v


@torch.no_grad()
def euler_sample(
    transformer: nn.Module,
    noise: torch.Tensor,
    cond: PromptEmbeds,
    uncond: PromptEmbeds | None,
    *,
    steps: int,
    guidance: float,
    shift: float,
    timestep_scale: float = 1.0,
    return_trajectory: bool = False,
) -> SampleResult:
    """Integrate from pure noise (sigma 1) to sigma 0; ``uncond`` is the "" prompt's embeddings."""
    sigmas = flow_sigmas(steps, shift).to(noise.device)
    x = noise.float()
    trajectory: list[tuple[torch.Tensor, torch.Tensor]] = []
    for i in range(steps):
        timestep = (sigmas[i] * NUM_TRAIN_TIMESTEPS * timestep_scale).expand(x.shape[0])
        if return_trajectory:
            trajectory.append((x.clone(), timestep.clone()))
        v = guided_velocity(transformer, x, timestep, cond, uncond, guidance)
        x = euler_step(x, v, sigmas[i], sigmas[i + 1])
    return SampleResult(x, trajectory)


@torch.no_grad()
def decode(vae: nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """Latents (scaled as the transformer sees them) -> images [B, 3, H, W] in [0, 1]."""
    scaling = float(getattr(vae.config, "scaling_factor", 1.0))
    images = vae.decode(latents / scaling, return_dict=False)[0]
    return (images.float() / 2 + 0.5).clamp(0, 1)


@torch.no_grad()
def encode_images(vae: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Images [B, 3, H, W] in [0, 1] -> latents scaled for the transformer (``x0``)."""
    scaling = float(getattr(vae.config, "scaling_factor", 1.0))
    return vae.encode(images * 2 - 1, return_dict=False)[0].float() * scaling


def sampling_noise(n: int, latent_shape: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    """Initial latents, drawn on the CPU so a seed gives the same images on every device."""
    return torch.randn((n, *latent_shape), generator=generator, dtype=torch.float32)


@torch.no_grad()
def generate(
    model: LoadedModel,
    prompts: Sequence[str],
    *,
    seed: int = 0,
    steps: int | None = None,
    guidance: float | None = None,
    transformer: nn.Module | None = None,
) -> torch.Tensor:
    """Images [B, 3, H, W] in [0, 1] for ``prompts``; ``transformer`` replaces ``model.student`` (e.g. the
    quantized one). Sampler settings default to the adapter's (``model.parts``)."""
    parts = model.parts
    transformer = transformer if transformer is not None else model.student
    device = next(transformer.parameters()).device
    cond = encode_prompts(parts["text_encoder"], parts["tokenizer"], prompts, parts["max_tokens"])
    uncond = encode_prompts(
        parts["text_encoder"], parts["tokenizer"], [""] * len(prompts), parts["max_tokens"]
    )
    noise = sampling_noise(len(prompts), parts["latent_shape"], torch.Generator().manual_seed(seed))
    result = euler_sample(
        transformer,
        noise.to(device),
        PromptEmbeds(cond.embeds.to(device), cond.mask.to(device)),
        PromptEmbeds(uncond.embeds.to(device), uncond.mask.to(device)),
        steps=steps if steps is not None else parts["steps"],
        guidance=guidance if guidance is not None else parts["guidance"],
        shift=parts["flow_shift"],
        timestep_scale=parts.get("timestep_scale", 1.0),
    )
    vae = parts["vae"]
    return decode(vae, result.latents.to(next(vae.parameters()).device))
