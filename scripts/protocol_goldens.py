"""Write the numbers both sides of the phone protocol must agree on: statistics, the Sana sampler, the tokenizers,
the sampling noise, a whole toy Sana generation and toy Gemma greedy decoding.

``fraqat_deploy/device/schemas/examples/{stats,scheduler,tokenizer,noise,pipeline,gemma}.json`` are produced by the
Python implementation and read by the Kotlin core's tests (android_app/core). ``tests/test_bench.py`` regenerates
them and fails if the committed files differ, so neither side can drift alone. Run after changing either
implementation:

    python scripts/protocol_goldens.py
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from fraqat_deploy.device import pipeline as pipe
from fraqat_deploy.device.protocol import EXAMPLES_DIR, summarize

ROOT = Path(__file__).resolve().parent.parent
STATS_CASES = [[5.0], [3.0, 1.0, 2.0], [10.5, 11.25, 9.75, 30.0, 10.0], [float(v) for v in range(1, 21)]]
TIME_PROJ = {"channels": 8, "flip_sin_to_cos": True, "downscale_freq_shift": 0.0, "max_period": 10000.0, "scale": 1.0}

#: the digits-Sana tokenizer as the model loads it (repository-relative, read by the Kotlin tests too)
CAPTION_TOKENIZER = "fraqat_deploy/assets/digits-sana/tokenizer/tokenizer.json"
BYTE_TOKENIZER = "fraqat_deploy/assets/tiny-gemma/tokenizer.json"
MAX_TOKENS = 16
CAPTION_PROMPTS = [
    "a handwritten digit seven", "", "  A Handwritten DIGIT Four  ", "a handwritten digit 7.", "it's a zebra!",
    "ａ ｈａｎｄｗｒｉｔｔｅｎ digit two",
    "a small bold digit nine, drawn with a pen on white paper in black ink today",
    "café digit\tthree\nplease", "(one) two-three / four & five?",
]
BYTE_PROMPTS = ["def main():", "", "héllo wörld ✓", "  spaces\tand\ttabs\n"]
NOISE_CASES = [((1, 4, 8, 8), 0), ((1, 4, 8, 8), 3), ((1, 4, 2, 2), 7), ((20,), 5), ((16,), 1), ((1, 32, 32, 32), 42)]

#: the toy components of the ``pipeline`` golden (the Kotlin tests implement the same three functions)
TOY_DEFINITION = (
    "text_encoder: prompt_embeds[0,t,d] = (input_ids[0,t] * 0.01 + d * 0.1) * attention_mask[0,t], D = 4; "
    "transformer: velocity[b] = 0.5 * latent[b] - mean(timestep_features[b]) + 0.01 * sum(prompt_embeds[b] * "
    "prompt_mask[b,:,None]); vae_decoder: image[0,c] = 0.5 + 0.25 * latent[0,c] for c < 3"
)


def _caption_cases() -> dict:
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file=str(ROOT / CAPTION_TOKENIZER))
    tok.padding_side = "right"
    cases = []
    for prompt in CAPTION_PROMPTS:
        # as models/sana_graphs.py ``_tokens`` tokenizes a prompt for the text encoder
        t = tok([prompt.lower().strip()], padding="max_length", max_length=MAX_TOKENS, truncation=True,
                add_special_tokens=True)
        cases.append({"text": prompt, "input_ids": t["input_ids"][0], "attention_mask": t["attention_mask"][0]})
    return {"tokenizer": CAPTION_TOKENIZER, "max_length": MAX_TOKENS, "cases": cases}


def _byte_cases() -> dict:
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file=str(ROOT / BYTE_TOKENIZER))
    cases = [{"text": p, "input_ids": tok(p, add_special_tokens=True)["input_ids"]} for p in BYTE_PROMPTS]
    ids = cases[2]["input_ids"]
    return {"tokenizer": BYTE_TOKENIZER, "cases": cases,
            "decode": {"ids": ids, "text": tok.decode(ids, skip_special_tokens=True)}}


def _noise(shape: tuple[int, ...], seed: int) -> np.ndarray:
    import torch

    from fraqat_deploy.models.sampler import sampling_noise

    return sampling_noise(shape[0], shape[1:], torch.Generator().manual_seed(seed)).numpy()


def _toy_run(component: str, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    f32 = np.float32
    if component == "text_encoder":
        ids, mask = feed["input_ids"].astype(f32), feed["attention_mask"].astype(f32)
        d = np.arange(4, dtype=f32)
        return [((ids[..., None] * f32(0.01) + d * f32(0.1)) * mask[..., None]).astype(f32)]
    if component == "transformer":
        latent, features = feed["latent"], feed["timestep_features"]
        embeds, mask = feed["prompt_embeds"], feed["prompt_mask"].astype(f32)
        text = (embeds * mask[..., None]).reshape(len(latent), -1).sum(axis=1, dtype=f32)
        shift = features.mean(axis=1, dtype=f32) - f32(0.01) * text
        return [(f32(0.5) * latent - shift[:, None, None, None]).astype(f32)]
    if component == "vae_decoder":
        return [(f32(0.5) + f32(0.25) * feed["latent"][:, :3]).astype(f32)]
    raise KeyError(component)


def _toy_pipeline(caption: dict) -> dict:
    case = caption["cases"][0]
    empty = next(c for c in caption["cases"] if c["text"] == "")
    pipeline = {"kind": "sana", "steps": 4, "guidance": 2.0, "flow_shift": 1.5, "timestep_scale": 1.0,
                "num_train_timesteps": 1000, "time_proj": TIME_PROJ, "latent_shape": [4, 2, 2]}
    seed = 7
    tensors = {"input_ids": np.array([case["input_ids"]], np.int64),
               "attention_mask": np.array([case["attention_mask"]], np.int64),
               "uncond_input_ids": np.array([empty["input_ids"]], np.int64),
               "uncond_attention_mask": np.array([empty["attention_mask"]], np.int64),
               "noise": _noise((1, 4, 2, 2), seed)}
    timed = pipe.Timed()
    image = pipe.sana_generate(_toy_run, pipeline, tensors, timed)
    return {"definition": TOY_DEFINITION, "pipeline": pipeline, "prompt": case["text"], "seed": seed,
            "calls": {k: len(v) for k, v in timed.calls.items()}, "image_shape": list(image.shape),
            "image": image.ravel().tolist()}



GEMMA_DEFINITION = (
    "prefill/decode logits[0,t,v] = -|next_t - v| with next_t = (3 * input_ids[0,t] + 1 + s) % vocab, s = 0 in "
    "prefill and, in decode, the sum over cache slots j of attention_mask[0,j] * past_key_0[0,0,j,0] + "
    "2 * sum(sliding_mask); key_i[0,0,t] = [input_ids[0,t] + i, position_ids[0,t]], value_i[0,0,t] = "
    "[0.5 * input_ids[0,t], i]"
)
GEMMA_CASES = [([2, 5], 6, None), ([2, 5], 20, 12), ([1, 2, 3, 4, 5, 6], 20, None), ([7], 3, None)]


def _toy_gemma(spec) -> Callable[[str, Mapping[str, np.ndarray]], dict[str, np.ndarray]]:
    f32 = np.float32

    def run(component: str, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids, positions = feed["input_ids"][0], feed["position_ids"][0]
        s = 0
        if component == "decode":
            s = int(round(float((feed["attention_mask"][0] * feed["past_key_0"][0, 0, :, 0]).sum())))
            s += 2 * int(feed["sliding_mask"][0].sum()) if "sliding_mask" in feed else 0
        nxt = (3 * ids + 1 + s) % spec.vocab
        logits = -np.abs(nxt[:, None] - np.arange(spec.vocab)[None, :]).astype(f32)
        out = {"logits": logits[None]}
        for i in range(spec.layers):
            out[f"key_{i}"] = np.stack([ids + i, positions], axis=-1).astype(f32)[None, None]
            out[f"value_{i}"] = np.stack([f32(0.5) * ids, np.full(len(ids), i)], axis=-1).astype(f32)[None, None]
        return out

    return run


def _gemma() -> dict:
    from fraqat_deploy.models.gemma_graphs import GemmaGraphSpec, greedy_decode

    spec = GemmaGraphSpec(context=10, prompt_length=4, layers=2, kv_heads=1, head_dim=2, vocab=16, sliding_window=3,
                          sliding_layers=(0,), pad_id=0)
    run = _toy_gemma(spec)
    cases = [{"prompt": prompt, "max_new_tokens": n, "eos_token_id": eos,
              "tokens": greedy_decode(run, spec, prompt, max_new_tokens=n, eos_id=eos)}
             for prompt, n, eos in GEMMA_CASES]
    return {"definition": GEMMA_DEFINITION, "spec": spec.to_dict(), "cases": cases}


def goldens() -> dict[str, dict]:
    stats = {"definition": "p50/p90: linear interpolation at rank q/100*(n-1) of the sorted values; std: population",
             "cases": [{"values": v, "summary": summarize(v)} for v in STATS_CASES]}
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 2, 2, 2)).astype(np.float32)
    v = rng.standard_normal((2, 2, 2, 2)).astype(np.float32)
    sigmas = pipe.flow_sigmas(4, 1.5)
    guided = pipe.guided(v, 2.0)
    stepped = x + (sigmas[1] - sigmas[0]) * guided
    timesteps = np.array([1000.0, 562.5, 3.25], np.float32)
    scheduler = {
        "flow_sigmas": [{"steps": s, "shift": sh, "sigmas": pipe.flow_sigmas(s, sh).tolist()}
                        for s, sh in ((1, 1.0), (4, 1.5), (8, 1.5), (20, 3.0))],
        "timestep_features": {"time_proj": TIME_PROJ, "timesteps": timesteps.tolist(),
                              "features": pipe.timestep_features(timesteps, TIME_PROJ).tolist()},
        "euler_cfg": {"x": x.ravel().tolist(), "v": v.ravel().tolist(), "shape": list(x.shape), "guidance": 2.0,
                      "sigma": float(sigmas[0]), "sigma_next": float(sigmas[1]),
                      "guided": guided.ravel().tolist(), "x_next": stepped.ravel().tolist()},
    }
    caption = _caption_cases()
    tokenizer = {"caption": caption, "byte": _byte_cases()}
    noise = {"definition": "torch.randn(shape, generator=torch.Generator().manual_seed(seed)) on the CPU, float32 "
                           "(models/sampler.py sampling_noise); only the first and last 8 values are kept",
             "cases": []}
    for shape, seed in NOISE_CASES:
        values = _noise(shape, seed).ravel()
        noise["cases"].append({"shape": list(shape), "seed": seed, "head": values[:8].tolist(),
                               "tail": values[-8:].tolist(), "sum": float(values.astype(np.float64).sum())})
    return {"stats": stats, "scheduler": scheduler, "tokenizer": tokenizer, "noise": noise,
            "pipeline": _toy_pipeline(caption), "gemma": _gemma()}


def main() -> int:
    for name, data in goldens().items():
        path = Path(EXAMPLES_DIR) / f"{name}.json"
        path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
