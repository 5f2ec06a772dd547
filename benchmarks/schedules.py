"""The method's benchmark: FraQAT against its baselines at an equal step budget (the paper's Fig. 7 / Table 1,
at small scale), on the embedded digits-Sana and tiny-Gemma.

    python benchmarks/schedules.py            # full: 3 seeds, writes benchmarks/results/schedules.{json,md}
    python benchmarks/schedules.py --quick    # a few minutes: fewer steps, 2 seeds

Every method trains the same student from the same full-precision model on the same distillation data for the
same number of steps; only the bit schedule differs (PTQ trains none). Distillation loss: MSE on the velocity for
digits-Sana, KL on the logits for tiny-Gemma. Reported: mean +- std over seeds of the
final validation distillation loss; for digits-Sana the prompt accuracy and digits-FD against the FP model's own
images (same prompts, same seeds); for tiny-Gemma the held-out perplexity, KL divergence to the FP logits and
top-1 agreement.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from fraqat_deploy.runs import environment, write_json_atomic
from fraqat_deploy.train import TrainConfig, train
from fraqat_deploy.train.load import load_trained

METHODS = {  # label -> schedule
    "PTQ W4A8": "ptq",
    "vQAT W4A8": "constant:4",
    "integer": "integer",
    "simple": "simple",
    "FraQAT (fractional)": "fractional",
}


@dataclass
class Setting:
    steps: int
    seeds: int
    n_train: int
    n_val: int
    per_digit: int  # generated images per digit for the digits metrics
    text_rows: int  # held-out rows for the text metrics
    lr: float = 1e-4
    batch_size: int = 8


FULL = Setting(steps=200, seeds=3, n_train=256, n_val=64, per_digit=20, text_rows=256)
QUICK = Setting(steps=45, seeds=2, n_train=96, n_val=32, per_digit=5, text_rows=32)


def evaluate(model_name: str, run: Path, setting: Setting, seed: int, fp_cache: dict) -> dict[str, float]:
    trained = load_trained(run)
    if model_name == "digits":
        from fraqat_deploy.quality.digits import evaluate_digits, fd_between

        key = ("digits", seed)
        if key not in fp_cache:
            fp_cache[key] = evaluate_digits(trained.fp, per_digit=setting.per_digit, seed=seed)
        fp = fp_cache[key]
        q = evaluate_digits(trained.fp, transformer=trained.student, per_digit=setting.per_digit, seed=seed)
        return {"prompt_accuracy": q["prompt_accuracy"], "fd_fp": fd_between(q["images"], fp["images"]),
                "fp_prompt_accuracy": fp["prompt_accuracy"]}
    from fraqat_deploy.quality.text import evaluate_text

    key = ("text", seed)
    if key not in fp_cache:
        fp_cache[key] = evaluate_text(trained.fp, n_rows=setting.text_rows, seed=seed)
    q = evaluate_text(trained.fp, student=trained.student, n_rows=setting.text_rows, seed=seed)
    return {"perplexity": q["perplexity"], "kl": q["kl"], "top1": q["top1"],
            "fp_perplexity": fp_cache[key]["perplexity"]}


def run_one(model_name: str, schedule: str, seed: int, setting: Setting, workdir: Path, fp_cache: dict) -> dict:
    out = workdir / f"{model_name}-{schedule.replace(':', '')}-s{seed}"
    t0 = time.time()
    # language models distil on the logits' distribution (KL); the image model on the velocity (MSE)
    loss = "kl" if model_name == "tiny-gemma" else "mse"
    result = train(TrainConfig(model=model_name, out=out, schedule=schedule, steps=setting.steps, seed=seed,
                               n_train=setting.n_train, n_val=setting.n_val, lr=setting.lr, loss=loss,
                               batch_size=setting.batch_size, checkpoint_every=10**9), show_progress=False)
    metrics = {"val_loss": result.val_loss, **evaluate(model_name, out, setting, seed, fp_cache)}
    metrics["seconds"] = round(time.time() - t0, 1)
    return metrics


def summarize(rows: list[dict]) -> dict[str, dict[str, dict[str, float]]]:
    """model -> method -> metric -> mean / std / n."""
    out: dict = {}
    for row in rows:
        cell = out.setdefault(row["model"], {}).setdefault(row["method"], {})
        for k, v in row["metrics"].items():
            cell.setdefault(k, []).append(v)
    for methods in out.values():
        for method, metrics in methods.items():
            methods[method] = {k: {"mean": statistics.fmean(v), "std": statistics.pstdev(v), "n": len(v)}
                               for k, v in metrics.items()}
    return out


COLUMNS = {
    "digits": [("val_loss", "val distill loss", "{:.3g}", "lower"), ("prompt_accuracy", "prompt acc.", "{:.3f}",
               "higher"), ("fd_fp", "digits-FD vs FP", "{:.3g}", "lower")],
    "tiny-gemma": [("val_loss", "val distill loss", "{:.3g}", "lower"), ("perplexity", "perplexity", "{:.3f}",
                   "lower"), ("kl", "KL to FP", "{:.3g}", "lower"), ("top1", "top-1 agreement", "{:.3f}", "higher")],
}


def markdown(summary: dict, setting: Setting, command: str) -> str:
    lines = [f"Equal budget: {setting.steps} steps, batch {setting.batch_size}, lr {setting.lr:g}, "
             f"{setting.seeds} seeds (mean ± std). Reproduce: `{command}`.", ""]
    for model, methods in summary.items():
        cols = COLUMNS[model]
        fp_key = "fp_prompt_accuracy" if model == "digits" else "fp_perplexity"
        fp_value = next(iter(methods.values()))[fp_key]["mean"]
        lines.append(f"**{model}** (full-precision {fp_key.removeprefix('fp_').replace('_', ' ')}: {fp_value:.3f})")
        lines.append("")
        lines.append("| method | " + " | ".join(f"{label} ({better} is better)" for _, label, _, better in cols) + " |")
        lines.append("|---" * (len(cols) + 1) + "|")
        for method, m in methods.items():
            cells = [f"{fmt.format(m[k]['mean'])} ± {fmt.format(m[k]['std'])}" for k, _, fmt, _ in cols]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few minutes: fewer steps, 2 seeds")
    parser.add_argument("--seeds", type=int, help="override the number of seeds")
    parser.add_argument("--steps", type=int, help="override the step budget")
    parser.add_argument("--models", nargs="+", default=["digits", "tiny-gemma"], choices=["digits", "tiny-gemma"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS.values()), help="schedules to compare")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # tiny models: threads only add overhead, and runs stay reproducible
    setting = QUICK if args.quick else FULL
    if args.seeds:
        setting.seeds = args.seeds
    if args.steps:
        setting.steps = args.steps
    labels = {v: k for k, v in METHODS.items()}
    rows, fp_cache = [], {}
    name = "schedules-quick" if args.quick else "schedules"
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="fraqat-bench-") as tmp:
        for model in args.models:
            for seed in range(setting.seeds):
                for schedule in args.methods:
                    metrics = run_one(model, schedule, seed, setting, Path(tmp), fp_cache)
                    rows.append({"model": model, "method": labels.get(schedule, schedule), "schedule": schedule,
                                 "seed": seed, "metrics": metrics})
                    print(f"{model:10s} seed {seed} {schedule:12s} " +
                          " ".join(f"{k}={v:.4g}" for k, v in metrics.items()), file=sys.stderr, flush=True)
    summary = summarize(rows)
    command = "python benchmarks/schedules.py" + (" --quick" if args.quick else "")
    report = {"benchmark": name, "setting": setting.__dict__, "seconds": round(time.time() - t0, 1),
              "environment": environment(), "summary": summary, "runs": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / f"{name}.json", report)
    (args.out / f"{name}.md").write_text(markdown(summary, setting, command) + "\n")
    print(markdown(summary, setting, command))
    print(f"\nwrote {args.out / f'{name}.json'} and {args.out / f'{name}.md'} in {report['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
