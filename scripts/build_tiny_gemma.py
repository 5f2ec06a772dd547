"""Build tiny-Gemma, the embedded default language model, from scratch.

Trains ``TINY_GEMMA_CONFIG`` (a small ``Gemma2ForCausalLM``, byte-level tokenizer) on the training split of
the Python standard library's source, scores it on the held-out split and writes the model folder plus
``build.json`` (settings, loss curve, held-out perplexity, timings, corpus). The same seed, Python, torch
and thread count give the same weights.

    python scripts/build_tiny_gemma.py                    # the committed model (~7 minutes on one core)
    python scripts/build_tiny_gemma.py --quick --out tmp  # smoke run, well under a minute
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import transformers

from fraqat_deploy.models.tiny_gemma import (
    ASSET_DIR,
    BUILD_FILE,
    HELDOUT_PERCENT,
    STDLIB_FILE_CHARS,
    TINY_GEMMA_CONFIG,
    TinyGemmaAdapter,
    corpus_rows,
    weights_sha256,
)
from fraqat_deploy.quality.text import perplexity

# Full build: ~3.9M training tokens, a little over one pass of the training split; fits the 10-minute budget
# on one core of a shared 2-core machine with room to spare.
STEPS, BATCH_SIZE, LR = 950, 32, 3e-3
WARMUP_FRACTION, FINAL_LR_FRACTION, WEIGHT_DECAY, CLIP = 0.05, 0.1, 0.01, 1.0
#: training-loss curve points kept in build.json
CURVE_POINTS = 20
#: held-out rows scored during training (the final score uses every held-out row)
PROBE_ROWS = 64
QUICK = {"steps": 12, "batch_size": 8, "train_rows": 256, "heldout_rows": 16}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="initialisation and data order")
    parser.add_argument("--out", type=Path, default=ASSET_DIR, help=f"model folder to write (default {ASSET_DIR})")
    parser.add_argument("--quick", action="store_true", help="a few steps on a little data: a smoke run")
    parser.add_argument("--steps", type=int, help=f"optimizer steps (default {STEPS}, --quick {QUICK['steps']})")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (results depend on it)")
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be at least 1")
    return args


def learning_rate(step: int, steps: int) -> float:
    """Linear warm-up, then cosine decay to ``FINAL_LR_FRACTION`` of the peak."""
    warmup = max(1, int(WARMUP_FRACTION * steps))
    if step < warmup:
        return LR * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return LR * (FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * progress)))


def unigram_perplexity(train: torch.Tensor, heldout: torch.Tensor, vocab: int) -> float:
    """Perplexity on ``heldout`` of add-one-smoothed token frequencies of ``train``: the bar a model that
    learns nothing about context would reach. Scored on the same next tokens as ``perplexity``."""
    counts = torch.bincount(train.flatten(), minlength=vocab).double() + 1
    log_p = (counts / counts.sum()).log()
    return math.exp(-float(log_p[heldout[:, 1:].flatten()].mean()))


def curve_summary(losses: list[float]) -> list[dict[str, float]]:
    """Mean training loss over ``CURVE_POINTS`` equal windows of steps."""
    size = max(1, math.ceil(len(losses) / CURVE_POINTS))
    return [
        {"steps": f"{i + 1}-{min(i + size, len(losses))}", "loss": round(sum(w) / len(w), 4)}
        for i in range(0, len(losses), size)
        for w in [losses[i : i + size]]
    ]


def check_replaceable(out: Path) -> None:
    """Only an empty folder or one this script wrote may be replaced (checked before minutes of training)."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / BUILD_FILE).is_file())):
        raise SystemExit(f"refusing to replace {out}: it exists and was not written by this script")


def replace_folder(built: Path, out: Path) -> None:
    """Move the finished folder into place, so an interrupted build never leaves a half-written model."""
    check_replaceable(out)
    if out.exists():
        shutil.rmtree(out)
    built.rename(out)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    check_replaceable(args.out)
    torch.set_num_threads(args.threads)
    transformers.utils.logging.disable_progress_bar()  # one tiny shard: the bar is only noise in the log
    started = time.perf_counter()
    steps = args.steps or (QUICK["steps"] if args.quick else STEPS)
    batch_size = QUICK["batch_size"] if args.quick else BATCH_SIZE

    # the adapter's random-initialised model: the real class, the byte tokenizer and the special-token ids
    # the rest of the project expects, seeded without touching the global random stream
    model = TinyGemmaAdapter().load(tiny=True, seed=args.seed)
    lm, tokenizer, seq_len = model.student, model.parts["tokenizer"], int(model.parts["seq_len"])
    train_rows, n_train_files = corpus_rows(tokenizer, "train", seq_len, QUICK["train_rows"] if args.quick else None)
    heldout, n_heldout_files = corpus_rows(tokenizer, "heldout", seq_len, QUICK["heldout_rows"] if args.quick else None)
    if args.quick:
        train_rows, heldout = train_rows[: QUICK["train_rows"]], heldout[: QUICK["heldout_rows"]]
    probe = heldout[:PROBE_ROWS]
    data_seconds = time.perf_counter() - started
    print(f"corpus: {train_rows.shape[0]} training rows from {n_train_files} files, "
          f"{heldout.shape[0]} held-out rows from {n_heldout_files} files ({data_seconds:.1f} s)", flush=True)

    generator = torch.Generator().manual_seed(args.seed)
    optimizer = torch.optim.AdamW(lm.parameters(), lr=LR, betas=(0.9, 0.95), weight_decay=WEIGHT_DECAY)
    losses: list[float] = []
    probes: list[dict[str, float]] = []
    order = torch.empty(0, dtype=torch.long)
    train_start = time.perf_counter()
    lm.train()
    for step in range(steps):
        if order.numel() < batch_size:  # a fresh shuffle each pass over the rows
            order = torch.cat([order, torch.randperm(train_rows.shape[0], generator=generator)])
        batch, order = train_rows[order[:batch_size]], order[batch_size:]
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, steps)
        loss = lm(input_ids=batch, labels=batch, use_cache=False).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), CLIP)
        optimizer.step()
        losses.append(float(loss.detach()))
        if (step + 1) % max(1, steps // 5) == 0 or step + 1 == steps:
            probe_ppl = perplexity(lm, probe)  # switches to eval mode and back
            probes.append({"step": step + 1, "heldout_perplexity": round(probe_ppl, 4)})
            print(f"step {step + 1}/{steps}: train loss {sum(losses[-50:]) / len(losses[-50:]):.3f}, "
                  f"held-out perplexity ({probe.shape[0]} rows) {probe_ppl:.3f} "
                  f"[{time.perf_counter() - train_start:.0f} s]", flush=True)
    train_seconds = time.perf_counter() - train_start

    lm.eval()
    eval_start = time.perf_counter()
    heldout_ppl = perplexity(lm, heldout)
    eval_seconds = time.perf_counter() - eval_start

    built = args.out.with_name(args.out.name + ".building")
    if built.exists():
        shutil.rmtree(built)
    built.mkdir(parents=True)
    TinyGemmaAdapter().save_pretrained(model, built)
    report: dict[str, Any] = {
        "model": "tiny-gemma",
        "quick": args.quick,
        "seed": args.seed,
        "config": TINY_GEMMA_CONFIG,
        "parameters": sum(p.numel() for p in lm.parameters()),
        "weights_sha256": weights_sha256(built),
        "training": {
            "steps": steps,
            "batch_size": batch_size,
            "tokens_seen": steps * batch_size * seq_len,
            "optimizer": f"AdamW betas (0.9, 0.95), weight decay {WEIGHT_DECAY}, grad-norm clip {CLIP}",
            "lr": f"peak {LR}, linear warm-up {WARMUP_FRACTION:.0%} of steps, cosine to {FINAL_LR_FRACTION:.0%}",
            "loss_first": round(losses[0], 4),
            "loss_last_50": round(sum(losses[-50:]) / len(losses[-50:]), 4),
            "loss_curve": curve_summary(losses),
            "heldout_probe": probes,
        },
        "heldout": {
            "perplexity": round(heldout_ppl, 4),
            "rows": heldout.shape[0],
            "tokens": heldout.shape[0] * (seq_len - 1),
            "unigram_perplexity": round(unigram_perplexity(train_rows, heldout, len(tokenizer)), 4),
            "uniform_perplexity": len(tokenizer),
        },
        "corpus": {
            "source": "Python standard library .py files (no tests, encodings or installed packages)",
            "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "split": f"by file: sha1 of the stdlib-relative path, {HELDOUT_PERCENT}% held out",
            "file_chars": STDLIB_FILE_CHARS,
            "files_train": n_train_files,
            "files_heldout": n_heldout_files,
            "rows_train": train_rows.shape[0],
            "rows_heldout": heldout.shape[0],
            "seq_len": seq_len,
        },
        "timing_seconds": {
            "data": round(data_seconds, 1),
            "train": round(train_seconds, 1),
            "heldout_eval": round(eval_seconds, 1),
            "total": round(time.perf_counter() - started, 1),
        },
        "environment": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "threads": args.threads,
            "platform": platform.platform(terse=True),
        },
    }
    (built / BUILD_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    replace_folder(built, args.out)
    print(f"held-out perplexity {heldout_ppl:.3f} (unigram {report['heldout']['unigram_perplexity']:.3f}); "
          f"wrote {args.out} in {report['timing_seconds']['total']:.0f} s", flush=True)
    return report


if __name__ == "__main__":
    main()
