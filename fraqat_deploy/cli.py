"""The ``fraqat-deploy`` command line. Each command parses its options and calls one library function."""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from fraqat_deploy.errors import ConfigError, FraqatError, InputError
from fraqat_deploy.quant.schedule import ScheduleError
from fraqat_deploy.ui import console, out, progress, prompt_cut_notes, shown_prompt

app = typer.Typer(
    name="fraqat-deploy",
    help="FraQAT: fractional-bit quantization-aware training, from PyTorch to the Hexagon NPU.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
_state = {"debug": False}


def _os_error_line(e: OSError) -> str:
    where = f" ({e.filename})" if e.filename else ""
    what = e.strerror or str(e) or type(e).__name__
    if e.errno == errno.ENOSPC:
        fix = "free space on that disk (or pass another --out); finished stages are kept and reused"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "choose a folder you can write to"
    else:
        fix = "check the path; what was written so far is kept"
    return f"{what}{where}. Fix: {fix}"


def _friendly(fn):
    """User errors print one line and exit non-zero; tracebacks only with --debug."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FraqatError as e:
            if _state["debug"]:
                raise
            console.print(f"[bold red]error:[/] {escape(e.one_line())}", soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
        except ScheduleError as e:  # quant/ imports nothing of ours: its errors are plain ValueErrors
            if _state["debug"]:
                raise
            console.print(f"[bold red]error:[/] {escape(str(e))}. Fix: see `fraqat-deploy schedules` for the forms "
                          "and stage counts", soft_wrap=True)
            raise typer.Exit(2) from None
        except OSError as e:  # a folder we cannot write, a full disk, a file that vanished
            if _state["debug"]:
                raise
            console.print(f"[bold red]error:[/] {escape(_os_error_line(e))}", soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt as e:
            how = "re-run it with --resume to continue from the last checkpoint" if fn.__name__ == "train" else \
                "re-run the same command to continue (finished stages are reused)"
            console.print(f"[bold red]interrupted[/] ({escape(getattr(e, 'reason', None) or 'Ctrl-C')}): what was "
                          f"written so far is kept; {how}", soft_wrap=True)
            raise typer.Exit(130 if not getattr(e, "reason", None) else 143) from None

    return wrapper


class Terminated(KeyboardInterrupt):
    """SIGTERM (a job scheduler, ``kill``): stopped like Ctrl-C, recorded as interrupted."""

    reason = "SIGTERM"


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def _stage_guard(run: Path, stage: str):
    """One writer per stage of a run; a stage that fails or is interrupted says so in run.json. A folder that
    is not a run yet (a typo) is left alone: the command's own error says what is missing, nothing is written."""
    from fraqat_deploy.runs import RunDir

    rd = RunDir(run)
    if int(os.environ.get("RANK", "0")) != 0:
        return contextlib.nullcontext()  # under torchrun the ranks are one writer: rank 0 holds the lock
    return rd.guard(stage) if stage == "train" or rd.exists() else contextlib.nullcontext()


@app.callback()
def main(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
    threads: Annotated[Optional[int], typer.Option(
        "--threads", min=1, help="CPU threads for training and CPU inference (default: the physical cores other "
                                 "processes leave free, at least 1).")] = None,
) -> None:
    from fraqat_deploy import threads as thread_choice
    from fraqat_deploy.ui import enable_progress

    _state["debug"] = debug
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
        ctx.call_on_close(lambda: signal.signal(signal.SIGTERM, previous))
    thread_choice.apply(threads)
    enable_progress()  # long stages report progress: bars on a terminal, a line now and then in a log
    if not console.is_terminal:  # logs get results, not Hugging Face's "Loading weights" bar frames
        _no_hf_bars()


def _no_hf_bars() -> None:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read when huggingface_hub is first imported
    if "huggingface_hub" in sys.modules:  # already imported (a library caller, a test): switch it off directly
        sys.modules["huggingface_hub"].utils.disable_progress_bars()
    if "transformers" in sys.modules:
        import transformers.utils.logging

        transformers.utils.logging.disable_progress_bar()


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
    n_val: Annotated[int, typer.Option(help="Held-out validation rows (prompts/noise or files never trained on).")
                     ] = 256,
    calib_samples: Annotated[int, typer.Option(help="Training rows for activation calibration.")] = 100,
    calibration: Annotated[str, typer.Option(help="Activation ranges: minmax (default), mse (least quantization "
                                             "error), percentile, meanstd (the paper), learned (LSQ+, trained).")
                           ] = "minmax",
    recalibrate_each_stage: Annotated[bool, typer.Option(
        help="Recalibrate the activation ranges at each schedule stage's start.")] = False,
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
        recalibrate_each_stage=recalibrate_each_stage,
        granularity=granularity, weight_range=weight_range, trainable=trainable, exclude=tuple(exclude or ()),
        last_layer_a16=last_layer_a16, checkpoint_every=checkpoint_every, eval_every=eval_every, resume=resume,
    )
    note = cfg.final_bits_note()
    if note:
        console.print(f"note: {note}", markup=False, soft_wrap=True)
    with _stage_guard(out_dir, "train"):
        result = run_training(cfg)  # bars on a terminal, a progress line now and then in a log
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
    steps: Annotated[Optional[int], typer.Option(min=1, help="Sampler steps (default: the model's).")] = None,
    guidance: Annotated[Optional[float], typer.Option(help="Classifier-free guidance (default: the model's).")] = None,
) -> None:
    """Sample the full-precision model, or a trained run's quantized student (--run)."""
    from fraqat_deploy.generate import generate as run_generate

    for line in run_generate(model, prompt, out=out_file, run=run, source=source, tiny=tiny, seed=seed,
                             steps=steps, guidance=guidance):
        out.print(line, soft_wrap=True, markup=False)


@app.command("export")
@_friendly
def export_cmd(
    model: Annotated[str, typer.Argument(help="Model adapter of the run (digits, sana, tiny-gemma, ...).")],
    run: Annotated[Optional[Path], typer.Option(help="The trained run folder (default: the newest trained run of "
                                                     "the model under runs/).")] = None,
    component: Annotated[Optional[list[str]], typer.Option(help="Only these components.")] = None,
    calib_samples: Annotated[int, typer.Option(
        min=1, help="Calibration inputs (the FP model's own runs) for the ranges of the tensors training did not "
                    "quantize; the first is also the parity sample. Fewer is faster at real size.")] = 8,
    guidance_batch: Annotated[Optional[int], typer.Option(
        help="Sana: rows per transformer call, 2 (the guidance batch in one call, the default) or 1 (two calls per "
             "step: same compute, a smaller context binary, a faster compile; see the README's real-size table).")
    ] = None,
    embedding: Annotated[Optional[str], typer.Option(
        help="Gemma-2: where the embedding lookup runs, 'graph' (the graphs take input_ids) or 'host' (they take "
             "inputs_embeds; the table is written beside them as export/embedding.npy, float16). Default: host when "
             "the table is big (>= 10% of the weights and 16M entries: Gemma-2-2B's), graph otherwise.")
    ] = None,
) -> None:
    """Export a trained run to Q/DQ ONNX (opset 21) that reproduces its quantization; checks parity on the CPU."""
    from fraqat_deploy.export import export_run

    run = run or _newest(model, "trained", None, f"the newest trained {model} run")

    with _stage_guard(run, "export"):
        manifest = export_run(run, model, components=component, n_calibration=calib_samples,
                              guidance_batch=guidance_batch, embedding=embedding)
    table = Table(title=f"export of {run}")
    for col in ("component", "trained layers", "rule layers", "parity (mean / max, 8-bit steps)", ""):
        table.add_column(col)
    for name, rec in manifest["components"].items():
        for out_name, m in rec["parity"].items():
            table.add_row(f"{name}:{out_name}", str(rec["qdq"]["trained_layers"]), str(rec["qdq"]["rule_layers"]),
                          f"{m['mean_steps']:.3f} / {m['max_steps']:.3f}", "ok" if m["passed"] else "FAIL")
    out.print(table)
    out.print(f"written: {run / 'export'}  (export.json, parity.json, <component>.onnx"
              + "".join(f", {f['file']}" for f in manifest.get("files", {}).values()) + ")")


def _newest(model: Optional[str], need: str, target: Optional[str], what: str) -> Path:
    """The newest run under runs/ with what the command needs, announced; a one-line error when there is none."""
    from fraqat_deploy.commands import RUNS, newest_run

    found = newest_run(model, need, target=target)  # type: ignore[arg-type]
    if found is None:
        verb = {"trained": "train", "exported": "export", "compiled": "compile"}[need]
        name = model or "<model>"
        raise InputError(f"no {what.replace('the newest ', '')} under {RUNS}/",
                         f"pass --run <run folder>, or make one: fraqat-deploy {verb} {name}"
                         + (f" --device {target}" if need == "compiled" and target else ""))
    console.print(f"using {found.path} ({what}; --run chooses another)", markup=False, soft_wrap=True)
    return found.path


def _compile_source(model: str, source: Optional[str], tiny: bool, out_dir: Optional[Path]) -> Path:
    """``compile <model>`` without --run: the newest trained run of the model (exported first if need be), else
    a PTQ of the model's default full-precision source into runs/<model>-ptq (or --out)."""
    from fraqat_deploy.commands import RUNS, has_default_source, newest_run, no_source_error, ptq_folder
    from fraqat_deploy.export import export_run

    if out_dir is None and source is None and not tiny:
        found = newest_run(model, "trained")
        if found is not None:
            console.print(f"using {found.path} (the newest trained {found.adapter} run; --run chooses another)",
                          markup=False, soft_wrap=True)
            if found.manifest["stages"].get("export", {}).get("status") != "done":
                console.print(f"exporting {found.path} first (Q/DQ ONNX)", markup=False)
                with _stage_guard(found.path, "export"):
                    export_run(found.path, model)
            return found.path
        if not has_default_source(model):
            raise no_source_error(model)
    out_dir = out_dir or ptq_folder(model)
    console.print(f"no trained {model} run under {RUNS}/: quantizing the full-precision model without training "
                  f"(PTQ) into {out_dir}. FraQAT training gives a better W4A8 model: fraqat-deploy train {model}",
                  markup=False, soft_wrap=True)
    with _stage_guard(out_dir, "train"):
        return _ptq_run(model, source, tiny, out_dir)


def _ptq_run(model: str, source: Optional[str], tiny: bool, out_dir: Path) -> Path:
    """A run straight from the full-precision model: calibrate and round (the ``ptq`` schedule), then export."""
    from fraqat_deploy.export import export_run
    from fraqat_deploy.train import TrainConfig
    from fraqat_deploy.train import train as run_training

    if not (out_dir / "train" / "model.safetensors").is_file():
        run_training(TrainConfig(model=model, out=out_dir, source=source, tiny=tiny, schedule="ptq", n_train=100,
                                 n_val=16, calib_samples=100),  # the paper's 100 calibration samples
                     show_progress=False)
    if not (out_dir / "export" / "export.json").is_file():
        export_run(out_dir, model)
    return out_dir


@app.command("compile")
@_friendly
def compile_cmd(
    model: Annotated[str, typer.Argument(help="Model adapter (digits, sana, tiny-gemma, ...).")],
    device: Annotated[str, typer.Option(help="Target alias (s25u, s24u, s23u) or phone name.")] = "s25u",
    run: Annotated[Optional[Path], typer.Option(help="An exported run. Default: the newest trained run of the model "
                                                     "under runs/; if none, PTQ of the FP model into --out "
                                                     "(runs/<model>-ptq).")] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Run folder for the PTQ path.")] = None,
    source: Annotated[Optional[str], typer.Option(help="FP model for the PTQ path.")] = None,
    tiny: Annotated[bool, typer.Option(help="Tiny config for the PTQ path.")] = False,
    component: Annotated[Optional[list[str]], typer.Option(help="Only these components.")] = None,
    allow_cpu_fallback: Annotated[bool, typer.Option(help="Let operators the HTP cannot run stay on the CPU.")] = False,
    force: Annotated[bool, typer.Option(help="Recompile even if the cache matches.")] = False,
    parity_rows: Annotated[int, typer.Option(
        min=0, help="local: exported inputs to run on the host HTP simulator against the CPU Q/DQ model (0 skips HTP "
                    "parity, recorded as skipped: the simulator takes hours for a real-size component).")] = 4,
    backend: Annotated[str, typer.Option(help="local (onnxruntime-qnn on this machine) or hub (Qualcomm AI Hub).")]
    = "local",
    resume_job: Annotated[Optional[list[str]], typer.Option(help="hub: wait for these job ids instead of "
                                                                 "submitting new ones.")] = None,
    timeout: Annotated[float, typer.Option(help="hub: seconds to wait for the jobs.")] = 3600.0,
    hub_device: Annotated[Optional[str], typer.Option(help="hub: the AI Hub device name, if not the target's.")]
    = None,
    qairt_version: Annotated[str, typer.Option(help="hub: QAIRT version ('auto': the local onnxruntime-qnn's).")]
    = "auto",
) -> None:
    """Compile exported components for the target's HTP (local onnxruntime-qnn, or AI Hub), with HTP parity on the
    simulator for the local back end."""
    from fraqat_deploy.compile.run import compile_run
    from fraqat_deploy.targets import get_target

    get_target(device)  # an unknown target fails before any work
    if backend not in ("local", "hub"):
        raise ConfigError(f"unknown backend '{backend}'", "use --backend local or --backend hub")
    if run is None:
        run = _compile_source(model, source, tiny, out_dir)
    if backend == "hub":
        with _stage_guard(run, f"compile/{get_target(device).alias}"):
            _hub_compile(run, device, resume_job, timeout, component, force, hub_device, qairt_version)
        return
    with _stage_guard(run, f"compile/{get_target(device).alias}"):
        result = compile_run(run, device, allow_cpu_fallback=allow_cpu_fallback, components=component, force=force,
                             parity_rows=parity_rows)
    table = Table(title=f"compiled for {result['target']} (local QNN HTP compiler; parity on the host HTP simulator)")
    for col in ("component", "HTP ops", "CPU ops", "context bytes", "bytes/weight", "HTP vs CPU Q/DQ", "", "cached"):
        table.add_column(col)
    for name, rec in result["records"].items():
        cov, par = rec["coverage"], result["parity"][name]
        verdict = _parity_cell(par)
        table.add_row(name, f"{cov['htp']} ({cov['htp_fraction']:.0%})",
                      f"{cov['cpu_boundary']} boundary + {cov['cpu_fallback']} fallback",
                      f"{rec['context_binary_bytes']:,}", f"{rec['weights']['bytes_per_weight']:.3f}",
                      verdict, "skipped" if par.get("skipped") else "within bound" if par["passed"] else "OVER BOUND",
                      "yes" if rec["cached"] else "no")
    out.print(table)
    out.print(f"written: {result['out']}  (compile.json, htp_parity.json, <component>_ctx.onnx + .bin)")
    _warn_app_runtime(result["records"])


def _compile_records(run: Path, target: str) -> dict:
    """compile.json's component records for ``target`` ({} when there is none: bench says so itself)."""
    import json

    try:
        data = json.loads((run / "compile" / target / "compile.json").read_text())
    except (OSError, ValueError):
        return {}
    components = data.get("components") if isinstance(data, dict) else None
    return components if isinstance(components, dict) else {}


def _warn_app_runtime(records: dict) -> None:
    """Warn once when the QNN version that compiled differs from the one the Android app ships."""
    from fraqat_deploy.device.app_versions import qnn_mismatch

    found = (qnn_mismatch(rec.get("versions") or {}) for rec in records.values() if isinstance(rec, dict))
    for warning in dict.fromkeys(w for w in found if w):
        out.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)


def _parity_cell(parity: dict) -> str:
    """The worst output's relative error beside the bound it is held to (a figure alone reads like a failure)."""
    outputs = list(parity["outputs"].values())
    if not outputs:
        return "-"
    worst = max(outputs, key=lambda o: o["rel"])
    bound = worst.get("rel_tol")
    if bound is None:
        return f"{worst['rel']:.2%} rel"
    if worst["rel"] <= bound:
        return f"{worst['rel']:.2%} rel <= bound {bound:.2%}"
    return f"{worst['rel']:.2%} rel > {bound:.2%}" + (", within 2 output steps" if worst["passed"] else "")


def _hub_events(bar):
    """The AI Hub back end's progress events (``compile/hub.py``, ``bench/hub.py``) on one progress line."""
    task = bar.add_task("AI Hub", total=None, info="")

    def on_event(kind: str, data: dict) -> None:
        if kind == "job":
            bar.update(task, info=f"{data.get('label', '')} {data.get('state', '')}")
        elif kind == "wait":
            bar.update(task, total=data.get("total"), completed=data.get("done", 0))
        elif kind in ("upload", "submit", "download"):
            bar.update(task, description=kind, info=str(data.get("component") or data.get("job") or ""))

    return on_event


def _hub_compile(run: Path, device: str, resume_job, timeout: float, component, force: bool, hub_device, qairt_version
                 ) -> None:
    from fraqat_deploy.compile.hub import hub_compile_run

    with progress() as bar:
        result = hub_compile_run(run, device, resume_job=resume_job or None, timeout_s=timeout, components=component,
                                 force=force, hub_device=hub_device, qairt_version=qairt_version,
                                 on_event=_hub_events(bar))
    table = Table(title=f"compiled on Qualcomm AI Hub for {result['target']} ({result.get('device', '')})")
    for col in ("component", "job", "context bytes", "cached"):
        table.add_column(col)
    for name, rec in result["records"].items():
        hub = rec.get("hub", {})
        table.add_row(name, hub.get("compile_job_url") or hub.get("compile_job_id") or "-",
                      f"{rec.get('context_binary_bytes', 0):,}", "yes" if rec.get("cached") else "no")
    out.print(table)
    out.print(f"written: {result['out']}  (compile.json, <component>_ctx.onnx + .bin)")
    _warn_app_runtime(result["records"])


def _device_link(device: str, run: Path, target: str | None):
    """``sim`` -> the HTP simulator; anything else -> a phone over adb (a serial or a target alias)."""
    from fraqat_deploy.device.link import SimulatorLink

    if device == "sim":
        from fraqat_deploy.targets import get_target

        return SimulatorLink(run / "bench" / "sim" / ".device", target=get_target(target or "s25u").alias)
    from fraqat_deploy.device.adb import AdbLink, select_device

    return AdbLink(select_device(device), target=target)


@app.command("quickstart")
@_friendly
def quickstart_cmd(
    out_dir: Annotated[Path, typer.Option("--out", help="Run folder (re-running resumes it).")] = Path("runs/qs"),
    steps: Annotated[Optional[int], typer.Option(help="Training steps (default: the schedule's epochs).")] = None,
) -> None:
    """train digits-Sana (FraQAT) -> export -> compile (s25u) -> bench (HTP simulator) -> compare -> report."""
    from fraqat_deploy.quickstart import quickstart

    result = quickstart(out_dir, steps=steps)
    for name, seconds in result.seconds.items():
        out.print(f"  {name}: {seconds:.0f} s")
    if result.skipped:
        out.print(f"  reused: {', '.join(result.skipped)}")
    out.print(f"report: {result.report}")


@app.command("compare")
@_friendly
def compare_cmd(
    run: Annotated[Path, typer.Option(help="The run to score.")],
    baseline: Annotated[Optional[list[Path]], typer.Option(help="Other runs of the same model (PTQ, vQAT, ...). "
                                                             "Default: the baselines the run records.")] = None,
    prompt: Annotated[Optional[list[str]], typer.Option(help="Prompts (default: the model's own set).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the host-generated images.")] = 0,
    images_per_prompt: Annotated[int, typer.Option(help="Image models: draw every prompt with this many seeds "
                                                   "(seed, seed+1, ...); 50 gives digits-FD over 500 images.")] = 1,
    onnx_cpu: Annotated[bool, typer.Option(help="Also score the exported Q/DQ graphs on ONNX Runtime's CPU "
                                           "(the slowest source).")] = True,
    lpips_weights: Annotated[Optional[Path], typer.Option(help="Local LPIPS weights (else LPIPS is unavailable).")]
    = None,
    inception_weights: Annotated[Optional[Path], typer.Option(help="Local Inception TorchScript for FID.")] = None,
    clip_weights: Annotated[Optional[Path], typer.Option(help="Local CLIP folder for CLIP score / CLIP-FID.")] = None,
) -> None:
    """Pair every output (FP, fake-quant, ONNX CPU, simulator, phone, AI Hub, baselines) with the FP model's."""
    import torch

    from fraqat_deploy.quality.compare import compare_run, summary_rows
    from fraqat_deploy.runs import RunDir

    torch.set_num_threads(min(torch.get_num_threads(), 2))
    baselines = list(baseline or [run / b for b in RunDir(run).manifest().get("baselines", [])])
    with _stage_guard(run, "compare"):
        metrics = compare_run(run, baselines, prompts=list(prompt) if prompt else None, seed=seed,
                              images_per_prompt=images_per_prompt, onnx_cpu=onnx_cpu, lpips_weights=lpips_weights,
                              inception_weights=inception_weights, clip_weights=clip_weights)
    header, rows = summary_rows(metrics)
    per = metrics.get("images_per_prompt", 1)
    table = Table(title=f"{metrics['model']}: every source against the FP model ({len(metrics['prompts'])} prompts"
                        + (f" x {per} seeds)" if per > 1 else ")"))
    for col in header:
        table.add_column(str(col))
    for row in rows:
        table.add_row(*[str(c) for c in row])
    out.print(table)
    for skipped in metrics.get("skipped", []):
        out.print(f"  skipped {skipped['source']}: {skipped['reason']}", markup=False)
    out.print(f"written: {run / 'compare' / 'metrics.json'}")


@app.command("report")
@_friendly
def report_cmd(run: Annotated[Path, typer.Option(help="The run to report on.")]) -> None:
    """Write one self-contained report.html: images, latency and memory, training curves, compile figures."""
    from fraqat_deploy.report import write_report

    with _stage_guard(run, "report"):
        out.print(f"written: {write_report(run)}")


@app.command("adb", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@_friendly
def adb_cmd(ctx: typer.Context) -> None:
    """Run the adb bundled with the adbutils wheel (adb is not on PATH after pip install): fraqat-deploy adb devices"""
    import subprocess

    from fraqat_deploy.device.adb import adb_binary

    raise typer.Exit(subprocess.call([adb_binary(), *ctx.args]))


@app.command("devices")
@_friendly
def devices_cmd(
    keep_server: Annotated[bool, typer.Option(help="Leave the adb server running if this command started it.")]
    = False,
) -> None:
    """Every adb device: serial, model, SoC, Android, state, free storage and the app's version."""
    from fraqat_deploy.device.adb import NO_PHONE_FIX, list_phones, server_running, stop_server

    was_running = server_running()
    try:
        phones = list_phones()  # adbutils starts the bundled adb server when none is listening
    finally:
        started = not was_running and server_running()
        if started and not keep_server:
            stop_server()
    if started and keep_server:
        console.print("note: an adb server was started and keeps running on its port (stop it: "
                      "fraqat-deploy adb kill-server)", markup=False)
    table = Table(title="adb devices (plus 'sim': the host HTP simulator, always available)")
    for col in ("serial", "model", "SoC", "target", "Android", "state", "free MB", "app"):
        table.add_column(col)
    for p in phones:
        state = p.state if not p.fix else f"{p.state} - {p.fix}"
        table.add_row(p.serial, p.model or "-", p.soc or "-", p.target or "-",
                      f"{p.android} (SDK {p.sdk})" if p.android else "-", state,
                      f"{p.free_mb:,.0f}" if p.free_mb is not None else "-",
                      p.app_version or ("not installed" if p.state == "device" else "-"))
    out.print(table)
    if not phones:
        out.print(f"no phone: {NO_PHONE_FIX}; `--device sim` runs on the host HTP simulator")


app_group = typer.Typer(help="The Android demo app on a phone.", no_args_is_help=True)
app.add_typer(app_group, name="app")


@app_group.command("install")
@_friendly
def app_install(
    apk: Annotated[Path, typer.Option(help="The APK built from android_app/ (./gradlew assembleDebug).")],
    device: Annotated[str, typer.Option(help="A phone serial or target alias.")] = "s25u",
) -> None:
    """Install (or update) the fraqat-deploy app on a phone."""
    from fraqat_deploy.device.adb import app_version, install, select_device

    if not apk.is_file():  # before looking for a phone: the local mistake first
        raise InputError(f"no APK at {apk}", "build it with `./gradlew assembleDebug` in android_app/ (README)")
    phone = select_device(device)
    install(phone, apk)
    out.print(f"installed {apk.name} on {phone.serial} (version {app_version(phone) or 'unknown'})")


@app.command("bench")
@_friendly
def bench_cmd(
    model: Annotated[Optional[str], typer.Argument(help="Model adapter (digits, tiny-gemma, ...). Default: the "
                                                        "model of the run.")] = None,
    run: Annotated[Optional[Path], typer.Option(help="A compiled run. Default: the newest run under runs/ compiled "
                                                     "for the device's target (of the model, if given).")] = None,
    device: Annotated[str, typer.Option(help="'sim' (host HTP simulator), a phone serial, or a target alias (s25u).")]
    = "sim",
    prompt: Annotated[Optional[list[str]], typer.Option(help="Prompt (repeat for several).")] = None,
    runs: Annotated[int, typer.Option(min=1, help="Measured runs (each generates every prompt).")] = 5,
    warmup: Annotated[int, typer.Option(min=0, help="Warm-up runs, left out of the statistics.")] = 1,
    seed: Annotated[int, typer.Option(help="Seed of the initial noise.")] = 0,
    steps: Annotated[Optional[int], typer.Option(min=1, help="Sampling steps (default: the model's).")] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option(min=1, help="Tokens to generate (text models).")] = None,
    target: Annotated[Optional[str], typer.Option(help="Compile target whose binaries to run (default: the phone's; "
                                                       "s25u for sim).")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the result.")] = 1800.0,
    cooldown: Annotated[bool, typer.Option(help="Wait until the phone's thermal status is back to 0.")] = False,
    apk: Annotated[Optional[Path], typer.Option(help="Install this app build first.")] = None,
    backend: Annotated[str, typer.Option(help="local (a phone over adb, or sim) or hub (Qualcomm AI Hub).")]
    = "local",
    resume_job: Annotated[Optional[list[str]], typer.Option(help="hub: wait for these job ids.")] = None,
    hub_device: Annotated[Optional[str], typer.Option(help="hub: the AI Hub device name, if not the target's.")]
    = None,
) -> None:
    """Run the compiled model on a phone (over adb), on the host HTP simulator, or on AI Hub's hosted phones."""
    from fraqat_deploy.bench import bench
    from fraqat_deploy.models import get_adapter
    from fraqat_deploy.train.load import load_trained

    if backend not in ("local", "hub"):
        raise ConfigError(f"unknown backend '{backend}'", "use --backend local or --backend hub")
    if run is None:
        wanted = _bench_target(device, target)
        what = f"the newest {model + ' ' if model else ''}run compiled for {wanted or 'a target'}"
        run = _newest(model, "compiled", wanted, what)
    if model is None:
        from fraqat_deploy.runs import RunDir

        if not RunDir(run).exists():
            raise InputError(f"no run at {run} (no run.json)", "pass a run folder that `fraqat-deploy compile` wrote")
        model = RunDir(run).manifest().get("model", {}).get("adapter") or "digits"
    prompts = list(prompt or []) or [get_adapter(model).example_prompt]
    if backend == "hub":
        _hub_bench(run, device, prompts, seed, steps, max_new_tokens, runs, timeout, resume_job, hub_device)
        return
    trained = load_trained(run, model)  # the run holds this model (one-line error otherwise); before any folder
    for note in prompt_cut_notes(trained.fp.parts, prompts):
        console.print(note, markup=False, soft_wrap=True)
    link = _device_link(device, run, target)
    if device != "sim":  # a phone: its app loads only context binaries of its own QNN version
        _warn_app_runtime(_compile_records(run, link.target))
    with _stage_guard(run, f"bench/{link.label}"), progress() as bar:
        task = bar.add_task("bench", total=None, info=f"{link.label}")

        def on_event(kind: str, data: dict) -> None:
            if kind == "push":
                bar.update(task, description="push", total=data["files"], completed=0)
            elif kind == "pushed":
                bar.advance(task)
            elif kind == "start":
                bar.update(task, description="run", total=None, completed=0, info=f"id {data['id']}")
            elif kind == "status":
                bar.update(task, description=data.get("state", "run"), total=data.get("total") or None,
                           completed=data.get("done", 0), info=data.get("message", ""))
            elif kind == "cooldown":
                bar.update(task, description="cooling down", info=f"thermal status {data['thermal']}")

        result = bench(run, link, prompts=prompts, seed=seed, runs=runs, warmup=warmup, steps=steps,
                       max_new_tokens=max_new_tokens, timeout_s=timeout, cooldown=cooldown, apk=apk,
                       on_event=on_event)
    _bench_table(result.result, link.label)
    out.print(f"written: {result.out / 'result.json'}  ({len(result.pushed)} file(s) pushed, "
              f"{len(result.skipped)} already on the device)")


def _bench_target(device: str, target: Optional[str]) -> Optional[str]:
    """The compile target a bench runs: --target, else s25u for the simulator, else the device if it is a target
    alias; None for a phone serial (its target is known once the phone answers)."""
    from fraqat_deploy.targets import get_target

    if target:
        return get_target(target).alias
    if device == "sim":
        return "s25u"
    try:
        return get_target(device).alias
    except ConfigError:
        return None


def _hub_bench(run: Path, device: str, prompts, seed, steps, max_new_tokens, runs, timeout, resume_job, hub_device
               ) -> None:
    from fraqat_deploy.bench.hub import hub_bench

    with progress() as bar:
        out_dir, result = hub_bench(run, device, prompts=prompts, seed=seed, steps=steps,
                                    max_new_tokens=max_new_tokens, iterations=max(runs, 1) * 20,
                                    timeout_s=timeout, resume_job=resume_job or None, hub_device=hub_device,
                                    on_event=_hub_events(bar))
    _bench_table(result, f"hub-{device}")
    out.print(f"written: {out_dir / 'result.json'}  (AI Hub jobs in hub.json)")


def _bench_table(result: dict, label: str) -> None:
    device = result["device"]
    simulated = device["runtime"] == "htp-simulator"
    title = f"{device['manufacturer']} {device['model']} ({label})" + (
        " - SIMULATOR timings, not phone latency" if simulated else "")
    table = Table(title=title)
    for col in ("component", "runtime", "n", "latency p50 ms", "mean ms", "min-max ms", "peak memory MB",
                "compute unit"):
        table.add_column(col)
    mem = result["memory_mb"].get("peak_pss") or result["memory_mb"].get("peak_rss")
    rows = list(result["timings_ms"]["components"].items())
    if result["timings_ms"].get("end_to_end"):
        rows.append(("end to end", result["timings_ms"]["end_to_end"]))
    unit = "HTP (simulated)" if simulated else "NPU (HTP)"
    for name, st in rows:
        table.add_row(name, device["runtime"], str(st["n"]), f"{st['p50']:.2f}", f"{st['mean']:.2f}",
                      f"{st['min']:.2f}-{st['max']:.2f}", f"{mem:.0f}" if mem else "-", unit)
    out.print(table)
    for o in result["outputs"]:
        shown = o.get("image") or repr(o.get("text", ""))
        extra = f"  {o['tokens_per_second']:.1f} tokens/s" if "tokens_per_second" in o else ""
        out.print(f"  '{shown_prompt(o['prompt'])}' seed {o['seed']}: {shown}{extra}", markup=False)


@app.command("debug-htp")
@_friendly
def debug_htp(
    run: Annotated[Path, typer.Option(help="An exported run.")],
    component: Annotated[str, typer.Option(help="The component to examine.")],
    device: Annotated[str, typer.Option(help="Target alias.")] = "s25u",
    rel_tol: Annotated[float, typer.Option(help="Relative error that counts as a departure.")] = 0.02,
) -> None:
    """Find the first tensor where the simulated HTP departs from the CPU Q/DQ run, and its operators."""
    from fraqat_deploy.compile import first_divergence, format_divergence
    from fraqat_deploy.compile.run import read_export
    from fraqat_deploy.export import load_inputs
    from fraqat_deploy.targets import get_target

    info = read_export(run)["components"].get(component)
    if info is None:
        raise ConfigError(f"no exported component '{component}' in {run}",
                          f"use: {', '.join(read_export(run)['components'])}")
    result = first_divergence(run / "export" / info["onnx"], load_inputs(run / "export" / info["inputs"]),
                              get_target(device), rel_tol=rel_tol)
    for line in format_divergence(result):
        out.print(line, markup=False, soft_wrap=True)


if __name__ == "__main__":
    app()
