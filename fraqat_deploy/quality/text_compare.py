"""``compare`` for causal language models (Gemma-2, tiny-Gemma).

PyTorch students (this run's and the baselines'): perplexity, KL(FP || student) per token and top-1 agreement on
held-out rows (``text.evaluate_text``), and their greedy continuations of a few prompts. Every continuation — the
students', the exported graphs' on ONNX Runtime's CPU provider, each device's — is paired with the FP model's greedy
continuation of the same prompt: ``token_agreement`` is the share of positions holding the same token, over the
longer of the two continuations; ``matching_prefix`` how many tokens agree before the first difference.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fraqat_deploy.errors import ConfigError
from fraqat_deploy.models.tiny_gemma import heldout_rows
from fraqat_deploy.quality.sources import (
    DeviceResult,
    device_results,
    exported_components,
    method_label,
    onnx_cpu_outputs,
    schedule_name,
    slug,
)
from fraqat_deploy.quality.text import evaluate_text
from fraqat_deploy.train.load import TrainedModel, load_trained

#: default prompts: the first tokens of a few held-out rows
PROMPT_TOKENS = 12
DEFAULT_PROMPTS = 4


def token_agreement(tokens: Sequence[int], reference: Sequence[int]) -> dict[str, float | int]:
    """Same-position agreement over the longer sequence (1 for two empty ones) and the common prefix length."""
    longest = max(len(tokens), len(reference))
    same = sum(int(a == b) for a, b in zip(tokens, reference, strict=False))
    prefix = 0
    while prefix < min(len(tokens), len(reference)) and tokens[prefix] == reference[prefix]:
        prefix += 1
    return {"token_agreement": same / longest if longest else 1.0, "matching_prefix": prefix}


@torch.no_grad()
def greedy_tokens(lm: nn.Module, tokenizer: Any, prompt: str, max_new_tokens: int) -> list[int]:
    """New token ids of the greedy continuation (stops before <eos> or at the model's last position), as
    ``GemmaAdapter.generate`` decodes and the device pipeline does."""
    lm.eval()
    ids = torch.tensor([tokenizer(prompt)["input_ids"]], device=next(lm.parameters()).device)
    limit = int(getattr(getattr(lm, "config", None), "max_position_embeddings", 1 << 30))
    eos = getattr(tokenizer, "eos_token_id", None)
    new: list[int] = []
    for _ in range(max_new_tokens):
        if ids.shape[1] >= limit:
            break
        nxt = int(lm(input_ids=ids, use_cache=False).logits[0, -1].argmax())
        if eos is not None and nxt == eos:
            break
        new.append(nxt)
        ids = torch.cat([ids, torch.tensor([[nxt]], device=ids.device)], dim=1)
    return new


def default_text_prompts(trained: TrainedModel, n: int = DEFAULT_PROMPTS, seed: int = 0) -> list[str]:
    tokenizer = trained.fp.parts["tokenizer"]
    rows = heldout_rows(trained.fp, n, seed=seed)
    return [tokenizer.decode(row[:PROMPT_TOKENS].tolist(), skip_special_tokens=True) for row in rows]


def _device_budget(device: DeviceResult) -> int | None:
    """``max_new_tokens`` of the bench's request, when it is there (a shorter output then stopped early)."""
    request = device.path / "request.json" if device.path else None
    if request is None or not request.is_file():
        return None
    try:
        return int(json.loads(request.read_text())["pipeline"]["max_new_tokens"])
    except (ValueError, KeyError, TypeError):
        return None


class _Greedy:
    """Greedy continuations of one model, computed once per prompt at the longest budget asked for."""

    def __init__(self, lm: nn.Module, tokenizer: Any) -> None:
        self.lm, self.tokenizer = lm, tokenizer
        self.cache: dict[str, list[int]] = {}
        self.budget: dict[str, int] = {}

    def __call__(self, prompt: str, budget: int) -> list[int]:
        if prompt not in self.cache or self.budget[prompt] < budget:
            self.cache[prompt] = greedy_tokens(self.lm, self.tokenizer, prompt, budget)
            self.budget[prompt] = budget
        return self.cache[prompt][:budget]


def compare_texts(trained: TrainedModel, baselines: list[Path], *, prompts: list[str] | None, text_rows: int,
                  max_new_tokens: int, onnx_cpu: bool, event: Callable[[str, dict[str, Any]], None]
                  ) -> dict[str, Any]:
    tokenizer = trained.fp.parts["tokenizer"]
    prompts = prompts or default_text_prompts(trained)
    fp_greedy = _Greedy(trained.fp.student, tokenizer)
    quant_greedy = _Greedy(trained.student, tokenizer)
    decode = lambda tokens: tokenizer.decode(tokens, skip_special_tokens=True)  # noqa: E731

    def continuation(prompt: str, tokens: list[int], budget: int, extra: dict[str, Any] | None = None
                     ) -> dict[str, Any]:
        reference = fp_greedy(prompt, budget)
        entry = {"prompt": prompt, "seed": 0, "text": prompt + decode(tokens), "tokens": tokens,
                 "reference_tokens": reference, **token_agreement(tokens, reference)}
        return entry | (extra or {})

    def summarise(outputs: list[dict[str, Any]], scores: dict[str, float] | None = None) -> dict[str, Any]:
        summary: dict[str, Any] = {"n": len(outputs)}
        if scores:
            summary |= {k: scores[k] for k in ("perplexity", "kl", "top1") if k in scores}
        if outputs:
            summary["token_agreement"] = sum(o["token_agreement"] for o in outputs) / len(outputs)
        return summary

    event("source", {"key": "fp", "label": "FP PyTorch"})
    fp_scores = evaluate_text(trained.fp, None, n_rows=text_rows)
    fp_outputs = [continuation(p, fp_greedy(p, max_new_tokens), max_new_tokens) for p in prompts]
    sources = [{"key": "fp", "label": "FP PyTorch", "kind": "fp", "outputs": fp_outputs,
                "summary": summarise(fp_outputs, fp_scores)}]
    used = {"fp"}
    for b in baselines:
        baseline = load_trained(b)
        key = f"baseline-{slug(b.name)}"
        key = key if key not in used else f"{key}-{len(used)}"
        used.add(key)
        event("source", {"key": key})
        scores = evaluate_text(trained.fp, baseline.student, n_rows=text_rows)
        greedy = _Greedy(baseline.student, tokenizer)
        outputs = [continuation(p, greedy(p, max_new_tokens), max_new_tokens) for p in prompts]
        sources.append({"key": key, "label": f"{method_label(schedule_name(b))} (fake-quant)", "kind": "baseline",
                        "run": str(b.resolve()), "schedule": schedule_name(b), "outputs": outputs,
                        "summary": summarise(outputs, scores)})
    event("source", {"key": "fake_quant"})
    scores = evaluate_text(trained.fp, trained.student, n_rows=text_rows)
    outputs = [continuation(p, quant_greedy(p, max_new_tokens), max_new_tokens) for p in prompts]
    name = schedule_name(trained.run)
    sources.append({"key": "fake_quant", "label": f"{method_label(name)} (fake-quant)", "kind": "fake_quant",
                    "schedule": name, "outputs": outputs, "summary": summarise(outputs, scores)})

    skipped = []
    components = exported_components(trained.run)
    tokens = None
    if onnx_cpu and components:
        event("source", {"key": "onnx_cpu"})
        try:
            tokens = onnx_cpu_outputs(trained, components, [(p, 0) for p in prompts], max_new_tokens=max_new_tokens)
        except ConfigError as e:
            skipped.append({"source": "onnx_cpu", "reason": e.message})
    else:
        skipped.append({"source": "onnx_cpu", "reason": "not exported" if onnx_cpu else "turned off"})
    if tokens is not None:
        outputs = [continuation(p, [int(t) for t in toks], max_new_tokens,
                                {"vs_fake_quant": token_agreement(toks, quant_greedy(p, max_new_tokens))})
                   for p, toks in zip(prompts, tokens, strict=True)]
        sources.append({"key": "onnx_cpu", "label": "ONNX Runtime CPU (Q/DQ)", "kind": "onnx_cpu",
                        "outputs": outputs, "summary": summarise(outputs)})

    for device in device_results(trained.run):
        if device.skipped:
            skipped.append({"source": device.folder, "reason": device.skipped})
            continue
        budget = _device_budget(device)
        outputs = []
        for o in device.result.get("outputs", []):
            if "tokens" not in o:
                continue
            toks = [int(t) for t in o["tokens"]]
            n = budget or len(toks)
            outputs.append(continuation(o["prompt"], toks, n, {
                "seed": int(o.get("seed", 0)), "vs_fake_quant": token_agreement(toks, quant_greedy(o["prompt"], n)),
                **({"tokens_per_second": o["tokens_per_second"]} if "tokens_per_second" in o else {})}))
        if not outputs:
            skipped.append({"source": device.folder, "reason": f"bench {device.bench_id} has no token output"})
            continue
        key = slug(device.folder)
        used.add(key)
        event("source", {"key": key, "label": device.label})
        d = device.result.get("device", {})
        sources.append({"key": key, "label": device.label, "kind": device.kind, "device": d,
                        "bench_id": device.bench_id, "folder": device.folder, "runtime": d.get("runtime"),
                        "outputs": outputs, "summary": summarise(outputs)})
    return {"kind": "text", "reference": "fp", "prompts": prompts, "max_new_tokens": max_new_tokens,
            "heldout": {"rows": fp_scores["rows"], "tokens": fp_scores["tokens"]},
            "sources": sources, "skipped": skipped}
