"""``compare``: every output of a run, paired with the full-precision model's output for the same prompt and seed.

Sources, in report order: the FP PyTorch model (the reference), the baseline runs' fake-quant students (PTQ, vQAT,
other schedules), this run's fake-quant student, its exported Q/DQ graphs on ONNX Runtime's CPU provider, and the
latest bench of each device (HTP simulator, phones, AI Hub).

Images: PSNR and SSIM per image on the 8-bit images as saved; prompt accuracy and digits-FD when a digit classifier
ships beside the model (the digits world); LPIPS, FID, CLIP-FID and CLIP score only with local weights
(``learned.py``). Text: perplexity, KL to the FP logits and top-1 agreement on held-out rows, and greedy-token
agreement with the FP continuation for every device output (``text_compare.py``).

Writes ``<run>/compare/metrics.json`` and ``<run>/compare/images/<source>/<i>.png``. The layout of metrics.json::

    schema_version, run, model, seed, created, environment, seconds
    kind            "image" | "text"
    reference       "fp"
    prompts         the prompts every PyTorch/ONNX source drew (devices bring their own prompts and seeds)
    images only:    images_per_prompt: each prompt drawn with seeds seed .. seed + images_per_prompt - 1
    sources         [ {key, label, kind: fp|baseline|fake_quant|onnx_cpu|simulator|phone|ai_hub,
                       (run, schedule)            baselines and fake_quant
                       (device, bench_id, folder, runtime)   devices
                       outputs: [ {prompt, seed,
                                   image, reference, psnr, ssim, (digit, predicted), (lpips), (clip_score)}  images
                                   text, tokens, reference_tokens, token_agreement, matching_prefix,
                                   (vs_fake_quant), (tokens_per_second)}                                   text ],
                       summary: {n, psnr_mean, psnr_min, ssim_mean, ssim_min, prompt_accuracy, digit_prompts,
                                 digits_fd, lpips_mean, fid, clip_fid, clip_score_mean       (images, as available)
                                 perplexity, kl, top1, token_agreement}                      (text) } ]
    skipped         [ {source, reason} ]  sources present but left out (not exported, a bench that failed, ...)
    images only:    digits (bool), references [ {prompt, seed, image} ] (every FP image drawn),
                    learned_metrics {lpips|fid|clip_fid|clip_score: {available, reason, option} | {available, weights}}
    text only:      max_new_tokens, heldout {rows, tokens}

Paths of images are relative to ``compare/``.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fraqat_deploy.errors import ConfigError, InputError
from fraqat_deploy.models.gemma import GemmaAdapter
from fraqat_deploy.quality import digits as digits_metrics
from fraqat_deploy.quality.digits import CLASSIFIER_CONFIG, DigitClassifier, digit_of_prompt, digit_prompts
from fraqat_deploy.quality.images import load_png, psnr, save_png, ssim, to_uint8, unit
from fraqat_deploy.quality.intervals import bootstrap, wilson
from fraqat_deploy.quality.learned import LearnedMetrics, LearnedWeights
from fraqat_deploy.quality.sources import (
    DeviceResult,
    check_baseline,
    device_results,
    exported_components,
    method_label,
    onnx_cpu_outputs,
    schedule_name,
    slug,
    torch_images,
)
from fraqat_deploy.runs import RunDir, environment, write_json_atomic
from fraqat_deploy.train.load import TrainedModel, load_trained

SCHEMA_VERSION = 1
COMPARE_DIR = "compare"
METRICS_FILE = "metrics.json"

Event = Callable[[str, dict[str, Any]], None]


def default_image_prompts() -> list[str]:
    """One prompt per digit: "a handwritten digit zero" ... "nine"."""
    return digit_prompts(1)[0]


def compare_run(run: Path | str, baselines: Sequence[Path | str] = (), *, prompts: list[str] | None = None,
                seed: int = 0, lpips_weights: Path | None = None, inception_weights: Path | None = None,
                clip_weights: Path | None = None, onnx_cpu: bool = True, text_rows: int = 32,
                max_new_tokens: int = 16, images_per_prompt: int = 1,
                on_event: Event | None = None) -> dict[str, Any]:
    """Compare every output of ``run`` (and of each ``baselines`` run's student) with the FP model's; write and
    return ``run/compare/metrics.json``. ``onnx_cpu`` False skips the exported graphs on the CPU.
    ``images_per_prompt`` (image models): every prompt is drawn with that many noise seeds (``seed``, ``seed`` + 1,
    ...), so digits-FD and prompt accuracy are measured over prompts x images_per_prompt images."""
    run = Path(run)
    if images_per_prompt < 1:
        raise InputError(f"--images-per-prompt {images_per_prompt}: must be at least 1", "pass 1 or more")
    event = on_event or (lambda kind, data: None)
    trained = _load(run)
    if images_per_prompt != 1 and isinstance(trained.adapter, GemmaAdapter):
        raise InputError("--images-per-prompt is for image models; a text model is scored on held-out rows",
                         "leave --images-per-prompt out for a text model")
    baseline_runs = [Path(b) for b in baselines]
    for b in baseline_runs:
        if b.resolve() == run.resolve():
            raise InputError(f"the baseline {b} is the run itself", "pass other runs to --baseline")
        check_baseline(run, b)
    rd = RunDir(run)
    out = run / COMPARE_DIR
    rd.update_stage(COMPARE_DIR, "running")
    started = time.perf_counter()
    common = {"schema_version": SCHEMA_VERSION, "run": str(run.resolve()), "model": trained.adapter.name,
              "seed": seed, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "environment": environment()}
    try:
        if isinstance(trained.adapter, GemmaAdapter):
            from fraqat_deploy.quality.text_compare import compare_texts

            metrics = common | compare_texts(trained, baseline_runs, prompts=prompts, text_rows=text_rows,
                                             max_new_tokens=max_new_tokens, onnx_cpu=onnx_cpu, event=event)
        else:
            learned = LearnedMetrics(LearnedWeights(_path(lpips_weights), _path(inception_weights),
                                                    _path(clip_weights)))
            if (out / "images").exists():
                shutil.rmtree(out / "images")  # images of an earlier compare must not linger beside new ones
            metrics = common | ImageComparison(trained, out, seed, learned, event).run(
                baseline_runs, prompts or default_image_prompts(), onnx_cpu, images_per_prompt)
    except BaseException:
        rd.update_stage(COMPARE_DIR, "failed")
        raise
    metrics["seconds"] = round(time.perf_counter() - started, 2)
    write_json_atomic(out / METRICS_FILE, metrics)
    rd.update_stage(COMPARE_DIR, "done", baselines=[str(b) for b in baseline_runs],
                    sources=[s["key"] for s in metrics["sources"]])
    rd.record_outputs(COMPARE_DIR, [out / METRICS_FILE])
    return metrics


def _path(p: Path | str | None) -> Path | None:
    return Path(p).expanduser() if p else None


def _load(run: Path) -> TrainedModel:
    if not (run / "run.json").is_file():
        raise InputError(f"no run at {run} (no run.json)", f"train first: fraqat-deploy train <model> --out {run}")
    return load_trained(run)


def mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


# -- images ----------------------------------------------------------------------------------------------


class ImageComparison:
    """Generates and scores the image sources; the FP reference of each (prompt, seed) is drawn once."""

    def __init__(self, trained: TrainedModel, out: Path, seed: int, learned: LearnedMetrics, event: Event) -> None:
        self.trained, self.out, self.seed, self.learned, self.event = trained, out, seed, learned, event
        self.classifier = _classifier_for(trained)
        self.references: dict[tuple[str, int], int] = {}
        self.reference_images: list[np.ndarray] = []
        self.reference_entries: list[dict[str, Any]] = []

    def run(self, baselines: list[Path], prompts: list[str], onnx_cpu: bool, images_per_prompt: int = 1
            ) -> dict[str, Any]:
        # seed-major: the first len(prompts) pairs are those of one image per prompt
        pairs = [(p, self.seed + k) for k in range(images_per_prompt) for p in prompts]
        devices = device_results(self.trained.run)
        self.event("source", {"key": "fp", "label": "FP PyTorch"})
        self.reference(pairs + [(o["prompt"], int(o["seed"])) for d in devices if not d.skipped
                                for o in d.result.get("outputs", []) if o.get("image")])
        sources = []
        used: set[str] = {"fp"}
        for b in baselines:
            baseline = load_trained(b)
            name = schedule_name(b)
            key = _unique(f"baseline-{slug(b.name)}", used)
            sources.append(self._scored(key, f"{method_label(name)} (fake-quant)", "baseline", pairs,
                                        self._generate(key, baseline, pairs),
                                        {"run": str(b.resolve()), "schedule": name}))
        name = schedule_name(self.trained.run)
        sources.append(self._scored("fake_quant", f"{method_label(name)} (fake-quant)", "fake_quant", pairs,
                                    self._generate("fake_quant", self.trained, pairs), {"schedule": name}))
        skipped = []
        components = exported_components(self.trained.run)
        if onnx_cpu and components:
            self.event("source", {"key": "onnx_cpu", "label": "ONNX CPU (Q/DQ)"})
            try:
                images = [unit(to_uint8(i)) for i in onnx_cpu_outputs(self.trained, components, pairs)]
                sources.append(self._scored("onnx_cpu", "ONNX Runtime CPU (Q/DQ)", "onnx_cpu", pairs, images, {}))
            except ConfigError as e:  # a model family without a host pipeline
                skipped.append({"source": "onnx_cpu", "reason": e.message})
        else:
            skipped.append({"source": "onnx_cpu", "reason": "not exported" if onnx_cpu else "turned off"})
        for device in devices:
            if device.skipped:
                skipped.append({"source": device.folder, "reason": device.skipped})
                continue
            entry = self._device(device, used)
            if entry is None:
                skipped.append({"source": device.folder, "reason": f"bench {device.bench_id} has no image output"})
            else:
                sources.append(entry)
        fp = self._fp_source([self.references[p] for p in pairs])
        return {"kind": "image", "reference": "fp", "prompts": prompts, "images_per_prompt": images_per_prompt,
                "digits": self.classifier is not None,
                "learned_metrics": self.learned.status(), "references": self.reference_entries,
                "sources": [fp, *sources], "skipped": skipped}

    # -- generation

    def reference(self, pairs: list[tuple[str, int]]) -> None:
        todo = list(dict.fromkeys(p for p in pairs if p not in self.references))
        for (prompt, seed), image in zip(todo, torch_images(self.trained, None, todo), strict=True):
            index = len(self.reference_images)
            self.references[(prompt, seed)] = index
            rel = f"images/fp/{index}.png"
            self.reference_images.append(save_png(image, self.out / rel))
            self.reference_entries.append({"prompt": prompt, "seed": seed, "image": rel})

    def _generate(self, key: str, trained: TrainedModel, pairs: list[tuple[str, int]]) -> list[torch.Tensor]:
        self.event("source", {"key": key})
        return [unit(to_uint8(i)) for i in torch_images(self.trained, trained.student, pairs)]

    def _device(self, device: DeviceResult, used: set[str]) -> dict[str, Any] | None:
        pairs, images, errors = [], [], []
        for output in device.result.get("outputs", []):
            if not output.get("image"):
                continue
            path = device.path / output["image"]
            if not path.is_file():
                errors.append(f"{output['image']} missing")
                continue
            pairs.append((output["prompt"], int(output["seed"])))
            images.append(unit(load_png(path)))
        if not pairs:
            return None
        key = _unique(slug(device.folder), used)
        self.event("source", {"key": key, "label": device.label})
        d = device.result.get("device", {})
        extra = {"device": d, "bench_id": device.bench_id, "folder": device.folder, "runtime": d.get("runtime")}
        if errors:
            extra["errors"] = errors
        if device.where:
            extra["where"] = device.where
        return self._scored(key, device.label, device.kind, pairs, images, extra)

    # -- scoring

    def _fp_source(self, indices: list[int]) -> dict[str, Any]:
        images = torch.stack([unit(self.reference_images[i]) for i in indices]).float()
        entries = [dict(self.reference_entries[i]) for i in indices]
        summary: dict[str, Any] = {"n": len(entries)}
        summary |= self._digits(images, entries, None)
        summary |= self._clip_score(images, entries)
        for e in entries:
            e["reference"] = e["image"]
        return {"key": "fp", "label": "FP PyTorch", "kind": "fp", "outputs": entries, "summary": summary}

    def _scored(self, key: str, label: str, kind: str, pairs: list[tuple[str, int]], images: list[torch.Tensor],
                extra: dict[str, Any]) -> dict[str, Any]:
        refs = [self.references[p] for p in pairs]
        ref_images = torch.stack([unit(self.reference_images[i]) for i in refs])
        stacked = torch.stack(images)
        as_input = stacked.float()  # what the networks read
        outputs = []
        for i, ((prompt, seed), image, ref) in enumerate(zip(pairs, stacked, refs, strict=True)):
            rel = f"images/{key}/{i}.png"
            save_png(image, self.out / rel)
            outputs.append({"prompt": prompt, "seed": seed, "image": rel, "reference": f"images/fp/{ref}.png",
                            "psnr": psnr(image, ref_images[i]), "ssim": ssim(image, ref_images[i])})
        summary: dict[str, Any] = {
            "n": len(outputs),
            "psnr_mean": mean([o["psnr"] for o in outputs]), "psnr_min": min(o["psnr"] for o in outputs),
            "ssim_mean": mean([o["ssim"] for o in outputs]), "ssim_min": min(o["ssim"] for o in outputs),
        }
        summary |= self._digits(as_input, outputs, ref_images.float())
        for metric, values in self.learned.paired(as_input, ref_images.float()).items():
            for o, v in zip(outputs, values, strict=True):
                o[metric] = v
            summary[f"{metric}_mean"] = mean(values)
        summary |= self._set_distances(as_input, ref_images.float())
        summary |= self._clip_score(as_input, outputs)
        return {"key": key, "label": label, "kind": kind, **extra, "outputs": outputs, "summary": summary}

    def _digits(self, images: torch.Tensor, outputs: list[dict[str, Any]], refs: torch.Tensor | None
                ) -> dict[str, Any]:
        if self.classifier is None:
            return {}
        predicted = digits_metrics.classify(images, self.classifier).tolist()
        wanted = [digit_of_prompt(o["prompt"]) for o in outputs]
        for o, d, p in zip(outputs, wanted, predicted, strict=True):
            o["digit"], o["predicted"] = d, int(p)
        scored = [(d, p) for d, p in zip(wanted, predicted, strict=True) if d is not None]
        out: dict[str, Any] = {"prompt_accuracy": mean([float(d == p) for d, p in scored]),
                               "digit_prompts": len(scored)}
        if scored:  # 95% Wilson interval: with the quick start's few images it is wide, and says so
            w = wilson(sum(d == p for d, p in scored), len(scored))
            out["prompt_accuracy_interval"] = [w["lo"], w["hi"]]
        if refs is not None:
            out["digits_fd"] = digits_metrics.fd_between(images, refs, self.classifier) if len(images) >= 2 else None
            if len(images) >= 4:  # paired bootstrap over the images (same prompt and noise on both sides)
                fa = digits_metrics.features(images, self.classifier)
                fb = digits_metrics.features(refs, self.classifier)
                b = bootstrap(lambda idx: digits_metrics.frechet_distance(fa[idx], fb[idx]), len(images),
                              resamples=100)
                out["digits_fd_interval"] = [b["lo"], b["hi"]]
        return out

    def _set_distances(self, images: torch.Tensor, refs: torch.Tensor) -> dict[str, Any]:
        if len(images) < 2:
            return {}
        ours, theirs = self.learned.features(images), self.learned.features(refs)
        return {metric: digits_metrics.frechet_distance(ours[metric], theirs[metric]) for metric in ours}

    def _clip_score(self, images: torch.Tensor, outputs: list[dict[str, Any]]) -> dict[str, Any]:
        scores = self.learned.clip_scores(images, [o["prompt"] for o in outputs])
        if scores is None:
            return {}
        for o, s in zip(outputs, scores, strict=True):
            o["clip_score"] = s
        return {"clip_score_mean": mean(scores)}


def _unique(key: str, used: set[str]) -> str:
    candidate, n = key, 2
    while candidate in used:
        candidate, n = f"{key}-{n}", n + 1
    used.add(candidate)
    return candidate


def _classifier_for(trained: TrainedModel) -> DigitClassifier | None:
    """The digit classifier shipped beside the model (the digits world), else None."""
    source = trained.fp.spec.get("source")
    if source and (Path(source) / CLASSIFIER_CONFIG).is_file():
        return digits_metrics.load_classifier(source)
    return None


# -- for the CLI -----------------------------------------------------------------------------------------


SUMMARY_COLUMNS = (("psnr_mean", "PSNR dB", "{:.2f}"), ("ssim_mean", "SSIM", "{:.4f}"),
                   ("prompt_accuracy", "prompt acc.", "{:.0%}"), ("digits_fd", "digits-FD", "{:.3g}"),
                   ("lpips_mean", "LPIPS", "{:.4f}"), ("fid", "FID", "{:.3g}"), ("clip_fid", "CLIP-FID", "{:.3g}"),
                   ("clip_score_mean", "CLIP score", "{:.2f}"), ("perplexity", "perplexity", "{:.3f}"),
                   ("kl", "KL nats/token", "{:.4f}"), ("top1", "top-1", "{:.2%}"),
                   ("token_agreement", "greedy tokens", "{:.2%}"))


def summary_rows(metrics: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The header and rows of a summary table (one row per source, only the columns some source has)."""
    present = [c for c in SUMMARY_COLUMNS if any(s["summary"].get(c[0]) is not None for s in metrics["sources"])]
    header = ["source", "n", *[c[1] for c in present]]
    rows = []
    for s in metrics["sources"]:
        values = [s["summary"].get(key) for key, _, _ in present]
        rows.append([s["label"], str(s["summary"].get("n", "")),
                     *["-" if v is None else fmt.format(v) for v, (_, _, fmt) in zip(values, present, strict=True)]])
    return header, rows
