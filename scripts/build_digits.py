"""Build digits-Sana, the embedded default text-to-image model, and its digit classifier.

    python scripts/build_digits.py                     # full build into fraqat_deploy/assets/digits-sana/
    python scripts/build_digits.py --quick --out /tmp/d # a smoke run (< 1 minute), same files

Everything comes from scikit-learn's handwritten digits (shipped with the package, no download); the held-out
fifth (``quality.digits.real_digits("test")``) is never trained on. Steps, each seeded from ``--seed``:
1. a small CNN digit classifier (prompt accuracy and digits-FD use it);
2. the ``AutoencoderDC`` (reconstruction), then ``scaling_factor`` so scaled latents have unit std;
3. the Gemma-2 text encoder stays random-initialised and frozen: a fixed feature extractor is enough to tell
   ten digit names apart, and the transformer's cross-attention learns to read it;
4. the ``SanaTransformer2DModel`` by flow matching on the scaled latents (EMA weights are kept), with ~10%
   empty prompts for classifier-free guidance;
5. the shipped sampler's prompt accuracy over 200 images, then the folder and ``build.json``.
Bit-exact reproduction needs the same torch version, CPU kind and ``--threads``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fraqat_deploy.models.digits import ASSET_DIR, DIGITS_CONFIG, DigitsAdapter, weights_sha256
from fraqat_deploy.models.sampler import NUM_TRAIN_TIMESTEPS, encode_images, encode_prompts
from fraqat_deploy.models.tokenizers import NUMBER_WORDS
from fraqat_deploy.quality.digits import (
    ClassifierConfig,
    DigitClassifier,
    evaluate_digits,
    fd_between,
    real_digits,
    save_classifier,
)

# The prompts the transformer learns. The first four are the Sana adapter's distillation templates, so the
# default distillation prompts are in distribution; "{w}" is the digit's word, "{n}" its numeral.
TEMPLATES: tuple[str, ...] = (
    "a handwritten digit {w}",
    "a handwritten number {w}",
    "the digit {w}, written with a pen",
    "a small drawing of the number {w}",
    "the digit {n}",
    "a handwritten digit {n}",
    "the number {w}",
    "a drawing of the digit {n}",
    "a digit {w}",
    "a sketch of the numeral {n}",
    "handwritten {n}",
    "{w}",
    "{n}",
)
EMPTY_PROMPT_RATE = 0.1


@dataclass(frozen=True)
class Plan:
    classifier_steps: int
    vae_steps: int
    transformer_steps: int
    classifier_batch: int = 128
    vae_batch: int = 64
    transformer_batch: int = 128
    classifier_lr: float = 2e-3
    vae_lr: float = 1e-3
    transformer_lr: float = 2e-3
    #: decoder trained on latents with this much relative noise, so it stays smooth off the encoder's outputs
    latent_noise: float = 0.1
    ema_decay: float = 0.999
    #: images generated per digit for the reported prompt accuracy
    eval_per_digit: int = 20


FULL = Plan(classifier_steps=500, vae_steps=400, transformer_steps=1800)
QUICK = Plan(
    classifier_steps=40,
    vae_steps=20,
    transformer_steps=30,
    classifier_batch=32,
    vae_batch=16,
    transformer_batch=32,
    eval_per_digit=2,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ASSET_DIR, help="folder to write (replaced if it exists)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a few steps of each stage: a smoke run")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (results depend on it)")
    args = parser.parse_args(argv)
    out = args.out
    # only ever replace an earlier build (or nothing): --out pointing at the wrong folder must not wipe it
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "build.json").is_file())):
        parser.error(f"--out {out} exists and is not an earlier digits build; pass a new or empty folder")
    torch.set_num_threads(args.threads)
    plan = QUICK if args.quick else FULL
    started = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        timings[name] = round(time.perf_counter() - since, 1)
        print(f"{name}: {timings[name]} s", flush=True)
        return time.perf_counter()

    train_images, train_labels = real_digits("train")
    test_images, test_labels = real_digits("test")
    tick = time.perf_counter()
    classifier, classifier_info = train_classifier(
        train_images, train_labels, test_images, test_labels, plan, args.seed
    )
    tick = lap("classifier", tick)

    adapter = DigitsAdapter()
    model = adapter.load(None, tiny=True, seed=args.seed)
    vae_info = train_vae(model.parts["vae"], train_images, plan, args.seed + 10)
    latents = encode_images(model.parts["vae"], train_images)
    tick = lap("vae", tick)

    prompts, table = prompt_table(model.parts)
    transformer_info = train_transformer(model.student, latents, train_labels, table, plan, args.seed + 20)
    tick = lap("transformer", tick)

    result = evaluate_digits(model, per_digit=plan.eval_per_digit, seed=0, classifier=classifier)
    real_train = train_images[torch.randperm(len(train_images), generator=torch.Generator().manual_seed(0))[:400]]
    tick = lap("evaluation", tick)
    print(f"FP prompt accuracy {result['prompt_accuracy']:.3f}, digits-FD to real {result['fd_real']:.2f}")

    if out.exists():
        shutil.rmtree(out)
    adapter.save_pretrained(model, out)
    save_classifier(classifier, out, {"held_out_accuracy": classifier_info["held_out_accuracy"]})
    build = {
        "seed": args.seed,
        "quick": args.quick,
        "threads": args.threads,
        "plan": asdict(plan),
        "config": DIGITS_CONFIG,
        "templates": list(TEMPLATES),
        "training_prompts": len(prompts),
        "empty_prompt_rate": EMPTY_PROMPT_RATE,
        "text_encoder": {"params": _params(model.parts["text_encoder"]), "training": "none (random init, frozen)"},
        "classifier": classifier_info,
        "vae": vae_info,
        "transformer": transformer_info,
        "evaluation": {
            "sampler": {k: model.parts[k] for k in ("steps", "guidance", "flow_shift")},
            "images": len(result["digits"]),
            "seed": 0,
            "prompt_accuracy": result["prompt_accuracy"],
            "per_digit_accuracy": result["per_digit_accuracy"],
            "fd_real": result["fd_real"],
            # the same distance between two sets of real digits: the floor fd_real can reach
            "fd_real_train_vs_test": fd_between(real_train, test_images, classifier),
        },
        "seconds": {**timings, "total": round(time.perf_counter() - started, 1)},
        "versions": _versions(),
        "weights_sha256": weights_sha256(out),
    }
    (out / "build.json").write_text(json.dumps(build, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out} in {build['seconds']['total']} s")
    return 0


# -- 1. classifier ------------------------------------------------------------------------------------------


def train_classifier(
    images: torch.Tensor,
    labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    plan: Plan,
    seed: int,
) -> tuple[DigitClassifier, dict[str, Any]]:
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = DigitClassifier(ClassifierConfig())
    opt = torch.optim.AdamW(net.parameters(), lr=plan.classifier_lr, weight_decay=1e-4)
    net.train()
    losses = []
    for step in range(plan.classifier_steps):
        _set_lr(opt, plan.classifier_lr, step, plan.classifier_steps)
        idx = torch.randint(len(images), (plan.classifier_batch,), generator=gen)
        # small shifts, rotations and scalings: the generated digits are not centred exactly like the real ones
        x = _jitter(images[idx], gen)
        loss = F.cross_entropy(net(x), labels[idx], label_smoothing=0.05)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    net.eval().requires_grad_(False)
    with torch.no_grad():
        accuracy = float((net(test_images).argmax(1) == test_labels).float().mean())
    print(f"classifier held-out accuracy {accuracy:.4f}")
    return net, {
        "params": _params(net),
        "held_out_accuracy": accuracy,
        "held_out_images": len(test_labels),
        "final_loss": _tail_mean(losses),
    }


def _jitter(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    n = len(x)
    angle = (torch.rand(n, generator=gen) - 0.5) * math.radians(20)
    scale = 1 + (torch.rand(n, generator=gen) - 0.5) * 0.2
    shift = (torch.rand(n, 2, generator=gen) - 0.5) * 0.25  # up to 2 pixels of 32 each way
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")


# -- 2. VAE -------------------------------------------------------------------------------------------------


def train_vae(vae: nn.Module, images: torch.Tensor, plan: Plan, seed: int) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    vae.train().requires_grad_(True)
    opt = torch.optim.AdamW(vae.parameters(), lr=plan.vae_lr, weight_decay=0.0)
    losses = []
    for step in range(plan.vae_steps):
        _set_lr(opt, plan.vae_lr, step, plan.vae_steps)
        x = images[torch.randint(len(images), (plan.vae_batch,), generator=gen)] * 2 - 1
        z = vae.encode(x, return_dict=False)[0]
        # relative to the latents' own scale, so the encoder cannot escape the noise by growing
        z = z + plan.latent_noise * z.detach().std() * torch.randn(z.shape, generator=gen)
        loss = F.mse_loss(vae.decode(z, return_dict=False)[0], x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        latents = torch.cat(
            [vae.encode(images[i : i + 256] * 2 - 1, return_dict=False)[0] for i in range(0, len(images), 256)]
        )
        recon = torch.cat([vae.decode(latents[i : i + 256], return_dict=False)[0] for i in range(0, len(latents), 256)])
    std = float(latents.std())
    vae.register_to_config(scaling_factor=1.0 / std)
    mse = float(F.mse_loss((recon / 2 + 0.5).clamp(0, 1), images))
    print(f"vae reconstruction MSE {mse:.5f}, latent std {std:.3f}")
    return {
        "params": _params(vae),
        "final_loss": _tail_mean(losses),
        "reconstruction_mse": mse,
        "latent_std": std,
        "scaling_factor": 1.0 / std,
    }


# -- 3. prompts ---------------------------------------------------------------------------------------------


def prompt_table(parts: dict[str, Any]) -> tuple[list[str], dict[str, torch.Tensor]]:
    """Every training prompt (template x digit) and the empty prompt, encoded once by the frozen text encoder:
    ``embeds`` [10, T, L, D] and ``mask`` [10, T, L], plus the empty prompt's ``empty_*`` [L, D] and [L]."""
    prompts = [t.format(w=NUMBER_WORDS[d], n=d) for d in range(10) for t in TEMPLATES]
    out = encode_prompts(parts["text_encoder"], parts["tokenizer"], prompts + [""], parts["max_tokens"])
    shape = (10, len(TEMPLATES))
    return prompts, {
        "embeds": out.embeds[:-1].reshape(*shape, *out.embeds.shape[1:]),
        "mask": out.mask[:-1].reshape(*shape, -1),
        "empty_embeds": out.embeds[-1],
        "empty_mask": out.mask[-1],
    }


# -- 4. transformer -----------------------------------------------------------------------------------------


def train_transformer(
    transformer: nn.Module,
    latents: torch.Tensor,
    labels: torch.Tensor,
    table: dict[str, torch.Tensor],
    plan: Plan,
    seed: int,
) -> dict[str, Any]:
    """Rectified flow: ``x_t = (1 - s) x0 + s noise``, target ``noise - x0``, model timestep ``1000 s``."""
    gen = torch.Generator().manual_seed(seed)
    shift = float(DIGITS_CONFIG["sampler"]["flow_shift"])
    ema = copy.deepcopy(transformer).eval().requires_grad_(False)
    transformer.train().requires_grad_(True)
    opt = torch.optim.AdamW(transformer.parameters(), lr=plan.transformer_lr, weight_decay=0.0)
    n_templates, batch = table["embeds"].shape[1], plan.transformer_batch
    losses = []
    for step in range(plan.transformer_steps):
        _set_lr(opt, plan.transformer_lr, step, plan.transformer_steps)
        idx = torch.randint(len(latents), (batch,), generator=gen)
        x0, digit = latents[idx], labels[idx]
        template = torch.randint(n_templates, (batch,), generator=gen)
        embeds, mask = table["embeds"][digit, template], table["mask"][digit, template]
        empty = torch.rand(batch, generator=gen) < EMPTY_PROMPT_RATE
        embeds = torch.where(empty[:, None, None], table["empty_embeds"], embeds)
        mask = torch.where(empty[:, None], table["empty_mask"], mask)
        # logit-normal time, then the sampler's shift: training sees noise levels where sampling spends steps
        t = torch.sigmoid(torch.randn(batch, generator=gen))
        s = (shift * t / (1 + (shift - 1) * t))[:, None, None, None]
        noise = torch.randn(x0.shape, generator=gen)
        x_t = (1 - s) * x0 + s * noise
        v = transformer(
            hidden_states=x_t,
            encoder_hidden_states=embeds,
            timestep=s.flatten() * NUM_TRAIN_TIMESTEPS,
            encoder_attention_mask=mask,
            return_dict=False,
        )[0]
        loss = F.mse_loss(v, noise - x0)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        opt.step()
        _ema_update(ema, transformer, min(plan.ema_decay, (1 + step) / (10 + step)))
        losses.append(loss.item())
        if step % 250 == 0 or step == plan.transformer_steps - 1:
            print(f"transformer step {step}: loss {_tail_mean(losses, 100):.4f}", flush=True)
    transformer.load_state_dict(ema.state_dict())
    transformer.eval().requires_grad_(False)
    return {
        "params": _params(transformer),
        "final_loss": _tail_mean(losses),
        "loss_curve": [round(_tail_mean(losses[: i + 1], 100), 4) for i in range(99, len(losses), 100)],
    }


@torch.no_grad()
def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p, 1 - decay)


# -- helpers ------------------------------------------------------------------------------------------------


def _set_lr(opt: torch.optim.Optimizer, peak: float, step: int, total: int) -> None:
    """Linear warm-up over 5% of the steps, then cosine decay to a tenth of the peak."""
    warm = max(1, total // 20)
    if step < warm:
        lr = peak * (step + 1) / warm
    else:
        progress = (step - warm) / max(1, total - warm)
        lr = peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
    for group in opt.param_groups:
        group["lr"] = lr


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _tail_mean(values: list[float], n: int = 50) -> float:
    tail = values[-n:]
    return sum(tail) / len(tail) if tail else float("nan")


def _versions() -> dict[str, str]:
    import diffusers
    import sklearn
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "scikit-learn": sklearn.__version__,
    }


if __name__ == "__main__":
    sys.exit(main())
