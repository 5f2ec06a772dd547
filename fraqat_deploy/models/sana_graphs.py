"""Sana as deployed: three static-shape graphs (text encoder, transformer, VAE decoder) and their inputs."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fraqat_deploy.errors import ConfigError
from fraqat_deploy.models.base import Component, LoadedModel
from fraqat_deploy.models.sampler import (
    NUM_TRAIN_TIMESTEPS,
    PromptEmbeds,
    SampleResult,
    encode_prompts,
    euler_sample,
    sampling_noise,
)
from fraqat_deploy.ui import task

#: the additive bias of masked prompt tokens. diffusers uses -10000, which stretches the attention scores'
#: range so far that 16 bits no longer resolve them; exp(-64) ~ 1.6e-28 gives the masked tokens the same zero weight
MASK_BIAS = 64.0
#: prompts sampled together while making calibration inputs (x2 with the guidance batch): at 1024 px one prompt's
#: activations through the real Sana 600M transformer are hundreds of MB, so the export samples a few at a time
CALIBRATION_BATCH = 2


class TextEncoderGraph(nn.Module):
    """token ids, attention mask -> prompt embeddings (Gemma-2 last hidden state).

    The causal-and-padding mask is built here as an additive 4-D bias (the same attention as Gemma-2's own mask,
    which exports through GatherND, an operator the HTP does not run), and small enough for 16 bits: the logits
    are soft-capped to +-softcap, so a bias of 2 softcap + 64 gives masked keys the same zero weight.
    """

    def __init__(self, text_encoder: nn.Module) -> None:
        super().__init__()
        self.text_encoder = text_encoder
        softcap = getattr(text_encoder.config, "attn_logit_softcapping", None) or 0.0
        self.mask_bias = 2.0 * float(softcap) + MASK_BIAS

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        length = input_ids.shape[1]
        # made by numpy, the causal mask is a constant of the exported graph: torch.tril would export as Trilu, which
        # the exporter folds only for small masks (the HTP does not run Trilu; Sana's 300 tokens kept it)
        causal = torch.from_numpy(np.tril(np.ones((length, length), dtype=np.float32))).to(input_ids.device)
        allowed = causal[None, None] * attention_mask[:, None, None, :].float()
        return self.text_encoder(input_ids, attention_mask=(1 - allowed) * -self.mask_bias)[0]




class _Passthrough(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class TransformerGraph(nn.Module):
    """latent, timestep features, prompt embeddings, prompt mask -> velocity (the guidance batch).

    The sinusoidal timestep projection (arguments up to 1000 radians, which 16 bits cannot resolve) runs on
    the host: ``timestep_features(t)`` is the transformer's own ``time_proj``; the graph starts after it.
    Takes ownership of ``transformer`` (its ``time_proj`` is replaced by a pass-through).
    """

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        emb = transformer.time_embed.emb
        self.time_proj = emb.time_proj
        emb.time_proj = _Passthrough()
        self.transformer = transformer

    @torch.no_grad()
    def timestep_features(self, timestep: torch.Tensor) -> torch.Tensor:
        return self.time_proj(timestep.float()).float()

    def forward(self, latent: torch.Tensor, timestep_features: torch.Tensor, prompt_embeds: torch.Tensor,
                prompt_mask: torch.Tensor) -> torch.Tensor:
        bias = ((1 - prompt_mask.to(latent.dtype)) * -MASK_BIAS).unsqueeze(1)
        return self.transformer(hidden_states=latent, encoder_hidden_states=prompt_embeds, timestep=timestep_features,
                                encoder_attention_mask=bias, return_dict=False)[0]


class VaeDecoderGraph(nn.Module):
    """scaled latent -> image in [0, 1]; the VAE's scaling factor and the output mapping are folded in."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae
        self.scale = 1.0 / float(getattr(vae.config, "scaling_factor", 1.0))

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        image = self.vae.decode(latent * self.scale, return_dict=False)[0]
        return (image / 2 + 0.5).clamp(0, 1)


def _tokens(model: LoadedModel, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    tokenizer = model.parts["tokenizer"]
    tokenizer.padding_side = "right"
    t = tokenizer([p.lower().strip() for p in prompts], padding="max_length", max_length=model.parts["max_tokens"],
                  truncation=True, add_special_tokens=True, return_tensors="pt")
    return t["input_ids"], t["attention_mask"]


def _sample_in_batches(model: LoadedModel, noise: torch.Tensor, cond: PromptEmbeds, uncond: PromptEmbeds,
                       batch: int) -> SampleResult:
    """The FP model's sampling runs from ``noise`` (one per prompt of ``cond``), ``batch`` prompts at a time; the
    same trajectories as one batch, with a fraction of its activation memory."""
    parts = model.parts
    runs = []
    with task("calibration inputs (FP sampling runs)", noise.shape[0]) as tick:
        for start in range(0, noise.shape[0], batch):
            part = slice(start, start + batch)
            n = noise[part].shape[0]
            runs.append(euler_sample(
                model.student, noise[part], PromptEmbeds(cond.embeds[part], cond.mask[part]),
                PromptEmbeds(uncond.embeds.expand(n, -1, -1), uncond.mask.expand(n, -1)),
                steps=parts["steps"], guidance=parts["guidance"], shift=parts["flow_shift"],
                timestep_scale=parts.get("timestep_scale", 1.0), return_trajectory=True,
            ))
            tick(n)
    trajectory = [(torch.cat([r.trajectory[i][0] for r in runs]), torch.cat([r.trajectory[i][1] for r in runs]))
                  for i in range(len(runs[0].trajectory))]
    return SampleResult(torch.cat([r.latents for r in runs]), trajectory)


@torch.no_grad()
def sana_components(model: LoadedModel, student: nn.Module, prompts: list[str], *, n_calibration: int,
                    seed: int, guidance_batch: int = 2) -> list[Component]:
    """The three graphs, calibrated on the FP model's own sampling runs of ``prompts``. The transformer graph
    takes ownership of ``student`` (no copy: a real one is GBs).

    ``guidance_batch``: rows of one transformer call. 2: the guidance batch (unconditional, conditional) in one
    call; 1: one call each — the same compute per step, but the HTP context binary holds per-op data that grows
    with the activation size (the real Sana 600M transformer: 0.705 -> 0.573 bytes per weight, compile 1100 ->
    440 s; the README's real-size table). The device pipelines split the guidance batch to the graph's rows."""
    if guidance_batch not in (1, 2):
        raise ConfigError(f"--guidance-batch must be 1 or 2, not {guidance_batch}",
                          "use 2 (one transformer call per step) or 1 (two smaller calls)")
    parts = model.parts
    generator = torch.Generator().manual_seed(seed)
    chosen = [prompts[i % len(prompts)] for i in torch.randperm(len(prompts), generator=generator).tolist()]
    chosen = (chosen * (1 + n_calibration // max(len(chosen), 1)))[:n_calibration]
    ids, mask = _tokens(model, chosen)
    empty_ids, empty_mask = _tokens(model, [""])
    cond = encode_prompts(parts["text_encoder"], parts["tokenizer"], chosen, parts["max_tokens"])
    uncond = encode_prompts(parts["text_encoder"], parts["tokenizer"], [""], parts["max_tokens"])
    noise = sampling_noise(len(chosen), parts["latent_shape"], generator)
    result = _sample_in_batches(model, noise, cond, uncond, CALIBRATION_BATCH)
    graph = TransformerGraph(student)
    # one calibration example per prompt, at a step spread along the trajectory
    transformer_inputs = []
    for i in range(len(chosen)):
        x_t, timestep = result.trajectory[(i * 7) % len(result.trajectory)]
        x, t = x_t[i : i + 1], timestep.reshape(-1)[:1].float()
        embeds, m = cond.embeds[i : i + 1], cond.mask[i : i + 1]
        if guidance_batch == 2:  # unconditional first, as the sampler batches it
            x, t = torch.cat([x, x]), torch.cat([t, t])
            embeds, m = torch.cat([uncond.embeds, embeds]), torch.cat([uncond.mask, m])
            transformer_inputs.append((x, graph.timestep_features(t), embeds, m))
        else:  # both halves of the guidance batch, as separate calls (the sample is the unconditional one)
            features = graph.timestep_features(t)
            transformer_inputs += [(x, features, uncond.embeds, uncond.mask), (x, features, embeds, m)]
    text_inputs = [(empty_ids, empty_mask)] + [(ids[i : i + 1], mask[i : i + 1]) for i in range(len(chosen))]
    latents = [(result.latents[i : i + 1],) for i in range(len(chosen))]
    return [
        Component("text_encoder", TextEncoderGraph(parts["text_encoder"]), ["input_ids", "attention_mask"],
                  ["prompt_embeds"], text_inputs[:n_calibration]),
        Component("transformer", graph, ["latent", "timestep_features", "prompt_embeds", "prompt_mask"],
                  ["velocity"], transformer_inputs, holds_student=True),
        Component("vae_decoder", VaeDecoderGraph(parts["vae"]), ["latent"], ["image"], latents),
    ]


@torch.no_grad()
def sana_bench_inputs(model: LoadedModel, prompts: list[str], *, seed: int, steps: int | None = None
                      ) -> tuple[dict, list[dict[str, np.ndarray]]]:
    """What the app needs to draw ``prompts`` with the compiled graphs: the pipeline settings (``device/pipeline.py``)
    and, per prompt, its tokens, the "" prompt's tokens and the initial noise of ``seed`` — the same noise
    ``generate(model, [prompt], seed=seed)`` starts from, so phone and PyTorch images pair up."""
    parts = model.parts
    proj = model.student.time_embed.emb.time_proj if not isinstance(model.student, TransformerGraph) \
        else model.student.time_proj
    pipeline = {
        "kind": "sana", "steps": int(steps or parts["steps"]), "guidance": float(parts["guidance"]),
        "flow_shift": float(parts["flow_shift"]), "timestep_scale": float(parts.get("timestep_scale", 1.0)),
        "num_train_timesteps": NUM_TRAIN_TIMESTEPS,
        "time_proj": {"channels": int(proj.num_channels), "flip_sin_to_cos": bool(proj.flip_sin_to_cos),
                      "downscale_freq_shift": float(proj.downscale_freq_shift), "max_period": 10000.0,
                      "scale": float(proj.scale)},
        "latent_shape": [int(s) for s in parts["latent_shape"]],
    }
    empty_ids, empty_mask = _tokens(model, [""])
    rows = []
    for prompt in prompts:
        ids, mask = _tokens(model, [prompt])
        noise = sampling_noise(1, parts["latent_shape"], torch.Generator().manual_seed(seed))
        rows.append({"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "uncond_input_ids": empty_ids.numpy(),
                     "uncond_attention_mask": empty_mask.numpy(), "noise": noise.numpy()})
    return pipeline, rows
