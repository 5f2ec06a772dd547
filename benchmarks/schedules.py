"""The method's benchmark: FraQAT against its baselines at an equal step budget (the paper's Fig. 7 / Table 1,
at small scale), on the embedded digits-Sana and tiny-Gemma, over several seeds, with intervals.

    python benchmarks/schedules.py                       # the grid: see --help for its size
    python benchmarks/schedules.py --study calibration   # activation range methods (picks --calibration's default)

Every method trains the same student from the same full-precision model on the same distillation data (per seed)
for the same number of steps; only the bit schedule differs (PTQ trains none). References: the FraQAT schedule
with 16-bit activations (W4A16, weights-only quantization) and 8-bit weights with 8-bit activations (W8A8, vQAT at
8 bits). "FraQAT W4A8 recal." is FraQAT W4A8 with ``--recalibrate-each-stage`` (the activation encodings
recalibrated on the current student at every stage start). Distillation loss: MSE on the velocity (digits-Sana),
KL on the logits (tiny-Gemma).

Reported per model, budget and method over seeds: mean, sample std and the 95% t interval of
- the held-out validation loss (256 rows the training never sees: other prompts and noise seeds, or held-out
  text files), measured at the end of training;
- digits-Sana: prompt accuracy and digits-FD against the FP model's own images (same prompts, same noise; noise
  seeds no training run uses) over ``--per-digit`` x 10 images, each run also with its own Wilson / bootstrap
  interval; tiny-Gemma: held-out perplexity, KL to the FP logits and top-1 agreement;
and the paired difference of each method to vQAT (same seed) with its 95% interval, "resolved" when the interval
excludes 0. Results are written after every run (``--resume`` continues a cut grid); the tables show exactly
the runs that finished.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from fraqat_deploy.quality.intervals import bootstrap, paired_difference, summary, wilson
from fraqat_deploy.runs import environment, write_json_atomic
from fraqat_deploy.train import TrainConfig, train
from fraqat_deploy.train.load import load_trained

#: label -> (schedule, activation bits)
METHODS: dict[str, tuple[str, int]] = {
    "PTQ W4A8": ("ptq", 8),
    "vQAT W4A8": ("constant:4", 8),
    "integer W4A8": ("integer", 8),
    "simple W4A8": ("simple", 8),
    "FraQAT W4A8": ("fractional", 8),
    "FraQAT W4A16 (ref.)": ("fractional", 16),
    "vQAT W8A8 (ref.)": ("constant:8", 8),
    "FraQAT W4A8 recal.": ("fractional", 8),
}
#: methods that recalibrate the activation encodings at every schedule stage start (``--recalibrate-each-stage``)
RECALIBRATE = frozenset({"FraQAT W4A8 recal."})
BASELINE = "vQAT W4A8"
#: generation noise seeds for the end-task images: far from every training and held-out seed
EVAL_SEED = 7_000_001
CALIBRATIONS = ("mse", "minmax", "percentile", "meanstd", "learned")


@dataclass
class Setting:
    steps: int = 200  # the base budget; --budgets multiplies it
    n_train: int = 256
    n_val: int = 256
    per_digit: int = 50  # 500 images per digits-Sana run
    text_rows: int = 256
    lr: float = 1e-4
    batch_size: int = 8
    calibration: str = "minmax"
    calib_samples: int = 100


def _seed_data(model: str, seed: int, out: Path, cache: Path) -> None:
    """Reuse the (model, seed) distillation + held-out rows a previous run generated (identical by construction:
    the trainer checks its key file and regenerates when it does not match)."""
    src = cache / f"{model}-s{seed}"
    if src.is_dir():
        (out / "train").mkdir(parents=True, exist_ok=True)
        for f in src.iterdir():
            shutil.copy2(f, out / "train" / f.name)


def _keep_data(model: str, seed: int, out: Path, cache: Path) -> None:
    dst = cache / f"{model}-s{seed}"
    if not dst.is_dir():
        dst.mkdir(parents=True)
        for name in ("data.safetensors", "data.json", "data-description.txt"):
            if (out / "train" / name).is_file():
                shutil.copy2(out / "train" / name, dst / name)


def evaluate(model_name: str, run: Path, setting: Setting, seed: int, fp_cache: dict) -> dict[str, float]:
    trained = load_trained(run)
    if model_name == "digits":
        from fraqat_deploy.quality.digits import evaluate_digits, frechet_distance

        key = ("digits", seed)
        if key not in fp_cache:
            fp_cache[key] = evaluate_digits(trained.fp, per_digit=setting.per_digit, seed=EVAL_SEED + seed)
        fp = fp_cache[key]
        q = evaluate_digits(trained.fp, transformer=trained.student, per_digit=setting.per_digit,
                            seed=EVAL_SEED + seed)
        n = len(q["predictions"])
        acc = wilson(int((q["predictions"] == q["digits"]).sum()), n)
        fa, fb = q["features"], fp["features"]
        fd = bootstrap(lambda idx: frechet_distance(fa[idx], fb[idx]), n, resamples=100, seed=seed)
        return {"prompt_accuracy": acc["mean"], "prompt_accuracy_lo": acc["lo"], "prompt_accuracy_hi": acc["hi"],
                "fd_fp": fd["mean"], "fd_fp_lo": fd["lo"], "fd_fp_hi": fd["hi"], "images": float(n),
                "fp_prompt_accuracy": fp["prompt_accuracy"]}
    from fraqat_deploy.quality.text import evaluate_text

    key = ("text", seed)
    if key not in fp_cache:
        fp_cache[key] = evaluate_text(trained.fp, n_rows=setting.text_rows, seed=seed)
    q = evaluate_text(trained.fp, student=trained.student, n_rows=setting.text_rows, seed=seed)
    return {"perplexity": q["perplexity"], "kl": q["kl"], "top1": q["top1"], "tokens": q["tokens"],
            "fp_perplexity": fp_cache[key]["perplexity"]}


def run_one(model_name: str, method: str, steps: int, seed: int, setting: Setting, workdir: Path,
            fp_cache: dict, *, calibration: str | None = None, end_task: bool = True,
            data_cache: Path | None = None) -> dict:
    schedule, act_bits = METHODS[method]
    calibration = calibration or setting.calibration
    recal = "-recal" if method in RECALIBRATE else ""
    out = workdir / f"{model_name}-{schedule.replace(':', '')}-a{act_bits}{recal}-{calibration}-{steps}-s{seed}"
    if out.exists():
        shutil.rmtree(out)
    _seed_data(model_name, seed, out, data_cache or workdir / "data")
    t0 = time.time()
    # language models distil on the logits' distribution (KL); the image model on the velocity (MSE)
    loss = "kl" if model_name == "tiny-gemma" else "mse"
    result = train(TrainConfig(model=model_name, out=out, schedule=schedule, steps=steps, seed=seed,
                               n_train=setting.n_train, n_val=setting.n_val, lr=setting.lr, loss=loss,
                               batch_size=setting.batch_size, calibration=calibration, act_bits=act_bits,
                               calib_samples=setting.calib_samples, checkpoint_every=10**9,
                               recalibrate_each_stage=method in RECALIBRATE,
                               val_at_stages=False), show_progress=False)
    _keep_data(model_name, seed, out, data_cache or workdir / "data")
    metrics = {"val_loss": result.val_loss, "val_start": result.stage_val[0]["start"],
               "train_seconds": round(time.time() - t0, 1)}
    if end_task:
        metrics |= evaluate(model_name, out, setting, seed, fp_cache)
    metrics["seconds"] = round(time.time() - t0, 1)
    shutil.rmtree(out, ignore_errors=True)
    return metrics


# ---- summaries --------------------------------------------------------------------------------------------

SUMMARY_KEYS = ("val_loss", "val_start", "prompt_accuracy", "fd_fp", "perplexity", "kl", "top1", "seconds")


def summarize(rows: list[dict], group: str = "method") -> dict:
    """model -> budget (steps) -> method -> metric -> summary, and "vs_baseline": the paired differences
    (same seeds) to the baseline (vQAT; for the calibration study, mse)."""
    baseline = BASELINE if group == "method" else "mse"
    out: dict = {}
    for row in rows:
        out.setdefault(row["model"], {}).setdefault(str(row["steps"]), {}).setdefault(row[group], [])
    for model, budgets in out.items():
        for steps, methods in budgets.items():
            subset = [r for r in rows if r["model"] == model and str(r["steps"]) == steps]
            values = {name: {} for name in methods}  # name -> metric -> seed -> value
            for r in subset:
                for k, v in r["metrics"].items():
                    values[r[group]].setdefault(k, {})[r["seed"]] = v
            for name in methods:
                seeds = sorted({r["seed"] for r in subset if r[group] == name})
                cell: dict = {"seeds": seeds}
                for k in SUMMARY_KEYS:
                    if k in values[name]:
                        cell[k] = summary(list(values[name][k].values()))
                if name != baseline and baseline in values:
                    cell["vs_baseline"] = {}
                    for k in ("val_loss", "fd_fp", "prompt_accuracy", "kl", "perplexity", "top1"):
                        a, b = values[name].get(k, {}), values[baseline].get(k, {})
                        paired = sorted(set(a) & set(b))
                        if len(paired) >= 2:
                            cell["vs_baseline"][k] = paired_difference([a[s] for s in paired],
                                                                       [b[s] for s in paired])
                methods[name] = cell
    return out


COLUMNS = {
    "digits": [("val_loss", "held-out val loss", "{:.3g}"), ("prompt_accuracy", "prompt acc.", "{:.3f}"),
               ("fd_fp", "digits-FD vs FP", "{:.3g}")],
    "tiny-gemma": [("val_loss", "held-out val loss (KL)", "{:.3g}"), ("perplexity", "perplexity", "{:.3f}"),
                   ("kl", "KL to FP", "{:.3g}"), ("top1", "top-1 agreement", "{:.3f}")],
}
DIFF_KEY = {"digits": ("val_loss", "fd_fp"), "tiny-gemma": ("val_loss", "kl")}


def _cell(s: dict | None, spec: str) -> str:
    if not s:
        return "–"
    if s["n"] < 2:
        return spec.format(s["mean"])
    return f"{spec.format(s['mean'])} ± {spec.format(s['std'])} [{spec.format(s['lo'])}, {spec.format(s['hi'])}]"


def _diff(d: dict | None) -> str:
    if not d:
        return "–"
    rel = "" if math.isnan(d["relative"]) else f" ({d['relative']:+.1%})"
    return f"{d['mean']:+.3g} [{d['lo']:+.3g}, {d['hi']:+.3g}]{rel}, {d['verdict']}"


def markdown(summary_: dict, setting: Setting, command: str, group: str = "method") -> str:
    calibration = f"`{setting.calibration}`" if group == "method" else "as in each row"
    lines = [f"Base budget {setting.steps} steps (batch {setting.batch_size}, lr {setting.lr:g}, "
             f"{setting.n_train} training rows, calibration {calibration} over {setting.calib_samples} "
             f"rows); held-out validation on {setting.n_val} rows. Cells: mean ± std [95% t interval] over the seeds "
             f"that ran; Δ: paired difference to {BASELINE if group == 'method' else 'mse'} (same seeds) with its "
             f"95% interval. Reproduce: `{command}`.", ""]
    for model, budgets in summary_.items():
        cols = COLUMNS[model]
        for steps, methods in budgets.items():
            lines.append(f"**{model}, {steps} steps**")
            lines.append("")
            head = ["method" if group == "method" else "calibration", "seeds"] + [c[1] for c in cols]
            head += [f"Δ {k.replace('_', ' ')} vs {BASELINE if group == 'method' else 'mse'}"
                     for k in DIFF_KEY[model]]
            lines.append("| " + " | ".join(head) + " |")
            lines.append("|---" * len(head) + "|")
            for name, cell in methods.items():
                cells = [name, str(len(cell["seeds"]))] + [_cell(cell.get(k), fmt) for k, _, fmt in cols]
                cells += [_diff(cell.get("vs_baseline", {}).get(k)) for k in DIFF_KEY[model]]
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


def acceptance(summary_: dict) -> list[str]:
    """The issue's targets, stated from what ran."""
    lines = []
    for steps, methods in summary_.get("digits", {}).items():
        fq, a16 = methods.get("FraQAT W4A8"), methods.get("FraQAT W4A16 (ref.)")
        if fq and a16 and "val_loss" in fq and "val_loss" in a16:
            ratio = fq["val_loss"]["mean"] / a16["val_loss"]["mean"]
            lines.append(f"- digits-Sana, {steps} steps: FraQAT W4A8 held-out val loss / W4A16's = {ratio:.2f} "
                         f"(target ≤ 1.5: {'met' if ratio <= 1.5 else 'NOT met'}).")
        if fq and "fd_fp" in fq:
            fd = fq["fd_fp"]["mean"]
            lines.append(f"- digits-Sana, {steps} steps: FraQAT W4A8 digits-FD vs FP = {fd:.3g} (target ≤ 1.45, half "
                         f"of the earlier quick start's 2.9: {'met' if fd <= 1.45 else 'NOT met'}).")
    for model, budgets in summary_.items():
        for steps, methods in budgets.items():
            d = methods.get("FraQAT W4A8", {}).get("vs_baseline", {}).get("val_loss")
            if d:
                bound = max(abs(d["lo"]), abs(d["hi"]))
                words = "the difference is resolved" if d["verdict"] == "resolved" else f"bounded: |Δ| ≤ {bound:.3g}"
                lines.append(f"- {model}, {steps} steps: FraQAT − vQAT held-out val loss = {_diff(d)} ({words}).")
    return lines


# ---- the grid ---------------------------------------------------------------------------------------------


def plan(args: argparse.Namespace) -> list[dict]:
    """The runs in priority order: within a (model, budget), seed-major, so a cut grid still pairs methods."""
    runs = []
    if args.study == "calibration":
        for model in args.models:
            for seed in range(args.seeds):
                for cal in CALIBRATIONS:
                    runs.append({"model": model, "method": "vQAT W4A8", "steps": args.steps, "seed": seed,
                                 "calibration": cal})
        return runs
    for budget in args.budgets:
        for model in args.models:
            methods = args.methods if budget == args.budgets[0] else (args.methods_4x or args.methods)
            for seed in range(args.seeds):
                for method in methods:
                    runs.append({"model": model, "method": method, "steps": args.steps * budget, "seed": seed,
                                 "calibration": args.calibration})
    return runs


def _key(run: dict) -> tuple:
    return run["model"], run["method"], run["steps"], run["seed"], run["calibration"]


def merge(rows: list[dict], *later: list[dict]) -> list[dict]:
    """The runs of ``rows`` and then of each ``later`` list; a run of a later list replaces the same run (model,
    method, steps, seed, calibration) of an earlier one, in its place (e.g. a cell re-run with the current code)."""
    merged: dict[tuple, dict] = {_key(r): r for r in rows}
    for runs in later:
        merged |= {_key(r): r for r in runs}
    return list(merged.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", choices=["schedules", "calibration"], default="schedules")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=200, help="the base step budget")
    parser.add_argument("--budgets", type=int, nargs="+", default=[1, 4], help="multiples of --steps")
    parser.add_argument("--models", nargs="+", default=["digits", "tiny-gemma"], choices=["digits", "tiny-gemma"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--methods-4x", nargs="+", choices=list(METHODS), help="methods at the larger budgets")
    parser.add_argument("--calibration", default="minmax", choices=CALIBRATIONS)
    parser.add_argument("--per-digit", type=int, default=50, help="end-task images per digit (x10 per run)")
    parser.add_argument("--n-train", type=int, default=256, help="distillation rows per run")
    parser.add_argument("--n-val", type=int, default=256, help="held-out validation rows (and tiny-Gemma's text rows)")
    parser.add_argument("--no-end-task", action="store_true", help="held-out validation loss only")
    parser.add_argument("--resume", action="store_true", help="skip the runs already in the output JSON")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--name", help="output file stem (default: schedules / calibration)")
    parser.add_argument("--data-cache", type=Path, help="keep the generated distillation data here, per seed")
    parser.add_argument("--publish-only", action="store_true",
                        help="run nothing: write the tables from --resume / --include results as they are")
    parser.add_argument("--include", type=Path, nargs="+", default=[],
                        help="result JSON files of other workers whose runs join these tables (a run in a later "
                             "file replaces the same run of the output JSON or an earlier file)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # tiny models: threads only add overhead, and runs stay reproducible
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    setting = Setting(steps=args.steps, per_digit=args.per_digit, calibration=args.calibration,
                      n_train=args.n_train, n_val=args.n_val, text_rows=args.n_val,
                      calib_samples=min(100, args.n_train))
    name = args.name or ("calibration" if args.study == "calibration" else "schedules")
    group = "calibration" if args.study == "calibration" else "method"
    json_path, md_path = args.out / f"{name}.json", args.out / f"{name}.md"
    rows: list[dict] = []
    if args.resume and json_path.is_file():
        rows = json.loads(json_path.read_text()).get("runs", [])
    rows = merge(rows, *(json.loads(extra.read_text()).get("runs", []) for extra in args.include))
    done = {_key(r) for r in rows}
    todo = [r for r in plan(args) if _key(r) not in done]
    command = "python benchmarks/schedules.py " + " ".join(argv if argv is not None else sys.argv[1:])
    fp_cache: dict = {}
    t0 = time.time()
    args.out.mkdir(parents=True, exist_ok=True)

    def publish() -> None:
        summary_ = summarize(rows, group)
        report = {"benchmark": name, "setting": asdict(setting), "command": command,
                  "planned_runs": len(plan(args)), "finished_runs": len(rows), "environment": environment(),
                  "summary": summary_, "runs": rows}
        write_json_atomic(json_path, report)
        text = markdown(summary_, setting, command.strip(), group)
        if group == "method":
            text += "\n" + "\n".join(acceptance(summary_)) + "\n"
        md_path.write_text(text + f"\n{len(rows)} of {len(plan(args))} planned runs finished.\n")

    with tempfile.TemporaryDirectory(prefix="fraqat-bench-") as tmp:
        for spec in [] if args.publish_only else todo:
            metrics = run_one(spec["model"], spec["method"], spec["steps"], spec["seed"], setting, Path(tmp),
                              fp_cache, calibration=spec["calibration"], end_task=not args.no_end_task,
                              data_cache=args.data_cache)
            rows.append({**spec, "schedule": METHODS[spec["method"]][0], "metrics": metrics})
            print(f"[{time.time() - t0:7.0f}s] {spec['model']:10s} {spec['steps']:4d} steps seed {spec['seed']} "
                  f"{spec['method']:20s} {spec['calibration']:10s} " +
                  " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if not k.endswith(("_lo", "_hi"))),
                  file=sys.stderr, flush=True)
            publish()
    publish()
    print(md_path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
