"""The quick start: the whole path on the embedded digits-Sana, in one command.

train (FraQAT, fractional schedule, W4A8) -> a PTQ baseline -> export -> compile for the S25 Ultra (local QNN
compiler) -> bench on the host HTP simulator -> compare with the FP model and the baseline -> report.html.
Each stage is skipped when the run folder already holds its finished result, so a re-run resumes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fraqat_deploy.runs import RunDir
from fraqat_deploy.ui import progress

MODEL = "digits"
TARGET = "s25u"
BASELINE = "baselines/ptq"
#: one prompt per digit, the prompts compare scores every source on, so the simulator's column is full
BENCH_PROMPTS = [f"a handwritten digit {w}" for w in ("zero", "one", "two", "three", "four", "five", "six", "seven",
                                                     "eight", "nine")]


@dataclass
class Stage:
    name: str
    done: Callable[[Path], bool]
    run: Callable[[Path, Any], Any]
    #: (run folder relative to the quick start's, stage name in its run.json): locked while it runs
    record: tuple[str, str] = (".", "")


@dataclass
class QuickstartResult:
    out: Path
    report: Path
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def _status(run: Path, stage: str) -> str | None:
    return RunDir(run).manifest()["stages"].get(stage, {}).get("status")


def _train(run: Path, bar, *, steps: int | None) -> None:
    from fraqat_deploy.train import TrainConfig, train

    train(TrainConfig(model=MODEL, out=run, schedule="fractional", steps=steps, resume=(run / "train" /
                                                                                       "checkpoints").exists()),
          show_progress=True, bar=bar)


def _baseline(run: Path, bar) -> None:
    from fraqat_deploy.train import TrainConfig, train

    train(TrainConfig(model=MODEL, out=run / BASELINE, schedule="ptq"), show_progress=True, bar=bar)
    RunDir(run).update(baselines=[BASELINE])


def _export(run: Path, bar) -> None:
    from fraqat_deploy.export import export_run

    export_run(run, MODEL)


def _compile(run: Path, bar) -> None:
    from fraqat_deploy.compile.run import compile_run

    compile_run(run, TARGET)


def _bench(run: Path, bar) -> None:
    from fraqat_deploy.bench import bench
    from fraqat_deploy.device.link import SimulatorLink

    task = bar.add_task("bench", total=None, info="HTP simulator")

    def on_event(kind: str, data: dict) -> None:  # the engine's status.json: a progress line in logs too
        if kind == "status":
            bar.update(task, total=data.get("total") or None, completed=data.get("done", 0),
                       info=data.get("message", ""))

    try:
        bench(run, SimulatorLink(run / "bench" / "sim" / ".device", target=TARGET), prompts=BENCH_PROMPTS, runs=2,
              warmup=1, on_event=on_event)
    finally:
        bar.update(task, visible=False)


def _compare(run: Path, bar) -> None:
    from fraqat_deploy.quality.compare import compare_run

    compare_run(run, [run / BASELINE])


def _report(run: Path, bar) -> None:
    from fraqat_deploy.report import write_report

    write_report(run)


def stages(steps: int | None) -> list[Stage]:
    return [
        Stage("train (FraQAT W4A8)", lambda r: _status(r, "train") == "done", lambda r, b: _train(r, b, steps=steps),
              (".", "train")),
        Stage("PTQ baseline", lambda r: _status(r / BASELINE, "train") == "done", _baseline, (BASELINE, "train")),
        Stage("export (Q/DQ ONNX)", lambda r: _status(r, "export") == "done", _export, (".", "export")),
        Stage(f"compile ({TARGET}, local)", lambda r: _status(r, f"compile/{TARGET}") == "done", _compile,
              (".", f"compile/{TARGET}")),
        Stage("bench (HTP simulator)", lambda r: _status(r, "bench/sim") == "done", _bench, (".", "bench/sim")),
        Stage("compare", lambda r: (r / "compare" / "metrics.json").is_file(), _compare, (".", "compare")),
        Stage("report", lambda r: (r / "report.html").is_file(), _report, (".", "report")),
    ]


def quickstart(out: Path, *, steps: int | None = None, show_progress: bool = True) -> QuickstartResult:
    """Run (or resume) the quick start into ``out``; returns where the report is."""
    out = Path(out)
    result = QuickstartResult(out, out / "report.html")
    plan = stages(steps)
    with RunDir(out).lock("quickstart"), progress(disable=not show_progress) as bar:
        task = bar.add_task("quick start", total=len(plan), info="")
        for stage in plan:
            if stage.done(out):
                result.skipped.append(stage.name)
                bar.update(task, advance=1, info=f"{stage.name}: already done")
                continue
            bar.update(task, info=stage.name)
            started = time.perf_counter()
            folder, name = stage.record
            with RunDir(out / folder).guard(name):
                stage.run(out, bar)
            result.seconds[stage.name] = round(time.perf_counter() - started, 1)
            result.ran.append(stage.name)
            bar.update(task, advance=1)
    RunDir(out).update(quickstart={"seconds": result.seconds, "report": "report.html"})
    return result
