"""The ``fraqat-deploy`` command line. Each command parses its options and calls one library function."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from fraqat_deploy.errors import FraqatError
from fraqat_deploy.ui import console, out

app = typer.Typer(
    name="fraqat-deploy",
    help="FraQAT: fractional-bit quantization-aware training, from PyTorch to the Hexagon NPU.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
_state = {"debug": False}


def _friendly(fn):
    """User errors print one line and exit non-zero; tracebacks only with --debug."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FraqatError as e:
            if _state["debug"]:
                raise
            console.print(f"[bold red]error:[/] {e.one_line()}", soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            console.print("[bold red]interrupted[/]: what was written so far is kept; --resume continues")
            raise typer.Exit(130) from None

    return wrapper


@app.callback()
def main(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False) -> None:
    _state["debug"] = debug


@app.command()
@_friendly
def schedules() -> None:
    """List the built-in bit schedules."""
    from fraqat_deploy.quant import BUILTIN

    table = Table(title="Bit schedules (durations relative, scaled to the step budget)")
    for col in ("name", "bits : duration", "total", "at final bits", "what"):
        table.add_column(col)
    for key, s in BUILTIN.items():
        stages = "ptq: no training" if not s.trains else "  ".join(f"{st.bits:g}:{st.duration:g}" for st in s.stages)
        share = "-" if not s.trains else f"{s.stages[-1].duration / s.total_duration:.0%}"
        table.add_row(key, stages, f"{s.total_duration:g}", share, s.description)
    table.add_row("constant:<b>", "b:25", "25", "100%", "plain QAT at b bits")
    table.add_row("custom", "'8:1,6:1,5.5:2,4:4'", "", "", "any <bits>:<duration> list, bits in [2, 16]")
    out.print(table)


@app.command()
@_friendly
def train(
    model: Annotated[str, typer.Argument(help="Model adapter: sana, gemma, ...")],
    out_dir: Annotated[Path, typer.Option("--out", help="Run folder.")] = Path("runs/train"),
    source: Annotated[Optional[str], typer.Option(help="Hub id or local folder of the full-precision model.")] = None,
    tiny: Annotated[bool, typer.Option(help="A small random-initialised config of the real classes.")] = False,
    data: Annotated[Optional[Path], typer.Option(help="Prompts file / image-caption folder / text or JSONL.")] = None,
    schedule: Annotated[str, typer.Option(help="fractional, integer, simple, ptq, constant:<b> or 'b:d,...'.")] = (
        "fractional"
    ),
    steps: Annotated[Optional[int], typer.Option(help="Total step budget (default: the schedule's epochs).")] = None,
    batch_size: Annotated[int, typer.Option()] = 8,
    grad_accum: Annotated[int, typer.Option(help="Gradient accumulation micro-batches per step.")] = 1,
    lr: Annotated[float, typer.Option()] = 1e-4,
    optimizer: Annotated[str, typer.Option(help="adam or adamw.")] = "adam",
    weight_decay: Annotated[float, typer.Option()] = 0.0,
    loss: Annotated[Optional[str], typer.Option(help="mse or kl (default: the model's).")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    n_train: Annotated[int, typer.Option(help="Distillation examples.")] = 256,
    n_val: Annotated[int, typer.Option(help="Validation examples.")] = 64,
    calib_samples: Annotated[int, typer.Option(help="Examples for activation calibration.")] = 32,
    calibration: Annotated[str, typer.Option(help="meanstd (the paper) or minmax.")] = "meanstd",
    granularity: Annotated[str, typer.Option(help="Weight scales per 'tensor' (the paper) or 'channel'.")] = "tensor",
    weight_range: Annotated[str, typer.Option(help="narrow (symmetric) or wide (asymmetric).")] = "narrow",
    trainable: Annotated[str, typer.Option(help="Selective training: all, blocks, ff, attn.")] = "all",
    exclude: Annotated[Optional[list[str]], typer.Option(help="Module name pattern left in full precision.")] = None,
    last_layer_a16: Annotated[bool, typer.Option(help="Keep the last layer's activations at 16 bits.")] = True,
    checkpoint_every: Annotated[int, typer.Option()] = 25,
    eval_every: Annotated[int, typer.Option(help="Validate every N steps too (0: at stage boundaries).")] = 0,
    resume: Annotated[bool, typer.Option(help="Continue from the newest checkpoint in --out.")] = False,
) -> None:
    """Train a FraQAT model: distil the full-precision model into a W4A8 student through the bit schedule."""
    from fraqat_deploy.train import TrainConfig
    from fraqat_deploy.train import train as run_training

    cfg = TrainConfig(
        model=model, out=out_dir, source=source, tiny=tiny, data=data, schedule=schedule, steps=steps,
        batch_size=batch_size, grad_accum=grad_accum, lr=lr, optimizer=optimizer, weight_decay=weight_decay,
        loss=loss, seed=seed, n_train=n_train, n_val=n_val, calib_samples=calib_samples, calibration=calibration,
        granularity=granularity, weight_range=weight_range, trainable=trainable, exclude=tuple(exclude or ()),
        last_layer_a16=last_layer_a16, checkpoint_every=checkpoint_every, eval_every=eval_every, resume=resume,
    )
    result = run_training(cfg, show_progress=sys.stderr.isatty() or True)
    table = Table(title=f"FraQAT {cfg.bit_schedule.name} on {model}")
    for col in ("stage", "bits", "val loss at start", "val loss at end"):
        table.add_column(col, justify="right")
    for s in result.stage_val:
        table.add_row(str(s["stage"] + 1), f"{s['bits']:g}", f"{s['start']:.4g}", f"{s.get('end', float('nan')):.4g}")
    out.print(table)
    out.print(f"run: {result.run}  (train/metrics.jsonl, train/quant_state.json, train/model.safetensors)")


@app.command()
@_friendly
def generate(
    model: Annotated[str, typer.Argument(help="Model adapter: digits, sana, tiny-gemma, gemma, ...")],
    prompt: Annotated[list[str], typer.Option(help="Prompt (repeat for several).")],
    out_file: Annotated[Optional[Path], typer.Option("--out", help="Image file (.png); several prompts: name-N.png.")]
    = None,
    run: Annotated[Optional[Path], typer.Option(help="Use this run's trained W4A8 student instead of the FP model.")]
    = None,
    source: Annotated[Optional[str], typer.Option(help="Hub id or local folder of the FP model.")] = None,
    tiny: Annotated[bool, typer.Option(help="The tiny random-initialised config.")] = False,
    seed: Annotated[int, typer.Option()] = 0,
    steps: Annotated[Optional[int], typer.Option(help="Sampler steps (default: the model's).")] = None,
    guidance: Annotated[Optional[float], typer.Option(help="Classifier-free guidance (default: the model's).")] = None,
) -> None:
    """Sample the full-precision model, or a trained run's quantized student (--run)."""
    from fraqat_deploy.generate import generate as run_generate

    for line in run_generate(model, prompt, out=out_file, run=run, source=source, tiny=tiny, seed=seed,
                             steps=steps, guidance=guidance):
        out.print(line, soft_wrap=True, markup=False)


if __name__ == "__main__":
    app()
