"""What the app does with the compiled components, in numpy: the port the Kotlin core mirrors line by line.

Sana: tokens -> text encoder (prompt and "" prompt) -> ``steps`` flow-matching Euler steps of the transformer on
the classifier-free-guidance batch -> VAE decoder -> image. The maths is ``models/sampler.py``'s (tested equal);
the timestep projection is diffusers' sinusoidal embedding (``get_timestep_embedding``), run here because the
transformer graph starts after it (``models/sana_graphs.py``).

Gemma: prefill the prompt, then greedy decode one token at a time with the KV cache kept on the host side.

Every component call goes through ``run(component, feed) -> outputs``, timed by the caller: the same loop serves
the HTP simulator, ONNX Runtime on CPU and (in Kotlin) the phone.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fraqat_deploy.errors import InputError

Run = Callable[[str, Mapping[str, np.ndarray]], list[np.ndarray]]

NUM_TRAIN_TIMESTEPS = 1000


def flow_sigmas(steps: int, shift: float) -> np.ndarray:
    """``steps + 1`` shifted sigmas from 1 down to 0, float32 (``sampler.flow_sigmas``)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    t = np.linspace(1.0, 0.0, steps + 1, dtype=np.float32)
    return (np.float32(shift) * t / (np.float32(1) + np.float32(shift - 1) * t)).astype(np.float32)


def timestep_features(timesteps: np.ndarray, proj: Mapping[str, Any]) -> np.ndarray:
    """diffusers' sinusoidal timestep embedding [N, channels], float32."""
    channels = int(proj["channels"])
    half = channels // 2
    exponent = -math.log(float(proj["max_period"])) * np.arange(half, dtype=np.float32)
    exponent = exponent / np.float32(half - float(proj["downscale_freq_shift"]))
    freqs = np.exp(exponent).astype(np.float32)
    args = np.asarray(timesteps, dtype=np.float32)[:, None] * freqs[None, :]
    args = np.float32(proj["scale"]) * args
    emb = np.concatenate([np.sin(args), np.cos(args)], axis=-1)
    if proj["flip_sin_to_cos"]:
        emb = np.concatenate([emb[:, half:], emb[:, :half]], axis=-1)
    if channels % 2 == 1:
        emb = np.pad(emb, ((0, 0), (0, 1)))
    return emb.astype(np.float32)


def guided(v: np.ndarray, guidance: float) -> np.ndarray:
    """The guidance batch's velocity [2B, ...] (unconditional first) -> the guided velocity [B, ...]."""
    if guidance <= 1.0:
        return v[v.shape[0] // 2:]
    v_uncond, v_cond = np.split(v, 2)
    return (v_uncond + np.float32(guidance) * (v_cond - v_uncond)).astype(np.float32)


def with_graph_rows(pipeline: Mapping[str, Any], export: Mapping[str, Any]) -> dict[str, Any]:
    """``pipeline`` with what the exported graphs fix: a Sana transformer's rows per call (``transformer_batch``,
    from its latent input's batch; 2 x the prompts when the guidance batch is one call); Gemma's graph spec as
    exported (``info``: static shapes and where the embedding lookup runs)."""
    out = dict(pipeline)
    components = export.get("components", {})
    shapes = components.get("transformer", {}).get("input_shapes", {})
    if out.get("kind") == "sana" and "latent" in shapes:
        out["transformer_batch"] = int(shapes["latent"][0])
    info = components.get("decode", {}).get("info")
    if out.get("kind") == "gemma" and info:
        out["spec"] = dict(info)
        out["context"] = int(info["context"])
    return out


def takes_embeds(pipeline: Mapping[str, Any]) -> bool:
    """Whether the pipeline's Gemma graphs take ``inputs_embeds`` (the host looks the table's rows up)."""
    return pipeline.get("kind") == "gemma" and pipeline.get("spec", {}).get("embedding", "graph") == "host"


def host_embedding(pipeline: Mapping[str, Any], export: Mapping[str, Any], export_dir: Path):
    """The export's embedding table (memory-mapped) when the pipeline's Gemma graphs take ``inputs_embeds``, else
    None."""
    from fraqat_deploy.models.gemma_graphs import TableFile

    if not takes_embeds(pipeline):
        return None
    record = export.get("files", {}).get("embedding")
    if record is None:
        raise InputError(f"the export in {export_dir} takes inputs_embeds but lists no embedding table",
                         "export the run again with --embedding host")
    return TableFile(Path(export_dir) / record["file"])


@dataclass
class Timed:
    """Component timings of one generation, in ms, in call order."""

    calls: dict[str, list[float]] = field(default_factory=dict)

    def call(self, run: Run, component: str, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        started = time.perf_counter()
        out = run(component, feed)
        self.calls.setdefault(component, []).append((time.perf_counter() - started) * 1000.0)
        return out


def sana_generate(run: Run, pipeline: Mapping[str, Any], tensors: Mapping[str, np.ndarray], timed: Timed
                  ) -> np.ndarray:
    """One image [3, H, W] in [0, 1] from a prompt's tensors: ``input_ids``, ``attention_mask`` (prompt),
    ``uncond_input_ids``, ``uncond_attention_mask`` ("" prompt), ``noise`` [1, C, h, w]."""
    cond = timed.call(run, "text_encoder", {"input_ids": tensors["input_ids"],
                                            "attention_mask": tensors["attention_mask"]})[0]
    uncond = timed.call(run, "text_encoder", {"input_ids": tensors["uncond_input_ids"],
                                              "attention_mask": tensors["uncond_attention_mask"]})[0]
    embeds = np.concatenate([uncond, cond]).astype(np.float32)
    mask = np.concatenate([tensors["uncond_attention_mask"], tensors["attention_mask"]])
    steps, guidance = int(pipeline["steps"]), float(pipeline["guidance"])
    sigmas = flow_sigmas(steps, float(pipeline["flow_shift"]))
    scale = np.float32(pipeline.get("num_train_timesteps", NUM_TRAIN_TIMESTEPS)) * np.float32(
        pipeline.get("timestep_scale", 1.0))
    x = np.asarray(tensors["noise"], dtype=np.float32)
    rows = int(pipeline.get("transformer_batch") or 2 * x.shape[0])  # the graph's rows per call
    if rows < 1 or (2 * x.shape[0]) % rows:
        raise ValueError(f"transformer_batch {rows} does not divide the guidance batch {2 * x.shape[0]}")
    for i in range(steps):
        t = np.full([2 * x.shape[0]], sigmas[i] * scale, dtype=np.float32)
        feed = {"latent": np.concatenate([x, x]), "timestep_features": timestep_features(t, pipeline["time_proj"]),
                "prompt_embeds": embeds, "prompt_mask": mask}
        v = np.concatenate([timed.call(run, "transformer", {k: a[s:s + rows] for k, a in feed.items()})[0]
                            for s in range(0, 2 * x.shape[0], rows)])
        x = (x + (sigmas[i + 1] - sigmas[i]) * guided(np.asarray(v, dtype=np.float32), guidance)).astype(np.float32)
    image = timed.call(run, "vae_decoder", {"latent": x})[0]
    return np.clip(np.asarray(image, dtype=np.float32)[0], 0.0, 1.0)


def image_to_png(image: np.ndarray, path) -> None:
    """[3, H, W] in [0, 1] -> 8-bit PNG (rounded as ``generate.save_image``)."""
    from PIL import Image

    array = (np.clip(image, 0, 1).transpose(1, 2, 0) * 255).round().astype(np.uint8)
    Image.fromarray(array).save(path)


def gemma_spec(pipeline: Mapping[str, Any]):
    """The pipeline's ``spec`` (``GemmaGraphSpec.to_dict()``) as a ``GemmaGraphSpec``."""
    from fraqat_deploy.models.gemma_graphs import GemmaGraphSpec

    fields = dict(pipeline["spec"])
    fields.pop("cache_layout", None)
    fields["sliding_layers"] = tuple(fields.get("sliding_layers", ()))
    return GemmaGraphSpec(**fields)


def gemma_generate(run: Run, pipeline: Mapping[str, Any], tensors: Mapping[str, np.ndarray], timed: Timed,
                   embedding=None) -> tuple[list[int], float]:
    """Greedy continuation of ``tensors["prompt_ids"]`` [1, L] through the prefill and decode graphs (the host
    keeps the KV cache: ``models/gemma_graphs.py``). Returns the new token ids and the seconds it took, prefill
    included (tokens per second = tokens / seconds, end to end). ``embedding``: the table (``host_embedding``) for
    graphs that take ``inputs_embeds``; its lookups are inside the timed loop."""
    from fraqat_deploy.models.gemma_graphs import greedy_decode

    spec = gemma_spec(pipeline)
    outputs = spec.outputs()

    def runner(component: str, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(outputs, timed.call(run, component, feed), strict=True))

    started = time.perf_counter()
    tokens = greedy_decode(runner, spec, [int(t) for t in np.asarray(tensors["prompt_ids"]).ravel()],
                           max_new_tokens=int(pipeline["max_new_tokens"]), eos_id=pipeline.get("eos_token_id"),
                           embedding=embedding)
    return tokens, time.perf_counter() - started
