"""A new user's first hour (issue 15): threads, progress in logs, consistent runs, messages that help."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fraqat_deploy import threads, ui
from fraqat_deploy.cli import app

runner = CliRunner()


# ---- threads -------------------------------------------------------------------------------------------------

def test_threads_leave_busy_cores_alone() -> None:
    assert threads.choose(cores=2, load=0.1).threads == 2  # idle: every physical core
    assert threads.choose(cores=2, load=1.2).threads == 1  # another process keeps a core busy: no oversubscription
    assert threads.choose(cores=2, load=7.0).threads == 1  # never below one
    assert threads.choose(cores=8, load=2.0).threads == 6
    assert threads.choose(3, cores=2, load=5.0).threads == 3  # --threads is obeyed as given


def test_physical_cores_count_hyperthread_siblings_once() -> None:
    import os

    assert 1 <= threads.physical_cores() <= len(os.sched_getaffinity(0))


def test_threads_option_sets_torch_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    before = torch.get_num_threads()
    monkeypatch.delenv(threads.ENV, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    try:
        result = runner.invoke(app, ["--threads", "1", "schedules"])
        assert result.exit_code == 0, result.output
        assert torch.get_num_threads() == 1 and threads.current().why == "requested"
        import os

        assert os.environ["OMP_NUM_THREADS"] == "1"  # ONNX Runtime / child processes get the same count
    finally:
        torch.set_num_threads(before)


def test_run_json_records_the_thread_choice(tmp_path: Path) -> None:
    from fraqat_deploy.runs import RunDir

    rd = RunDir(tmp_path / "r")
    rd.update_stage("x", "running")
    env = rd.manifest()["stages"]["x"]["environment"]
    assert env["threads"]["threads"] >= 1 and env["threads"]["physical_cores"] >= 1


# ---- progress lines in logs ----------------------------------------------------------------------------------

def test_progress_in_a_log_is_a_line_now_and_then(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(ui, "LOG_PERIOD_S", 0.0)
    monkeypatch.setitem(ui._settings, "log_progress", True)
    with ui.progress() as bar:
        t = bar.add_task("FraQAT fractional", total=4, info="")
        for step in range(1, 5):
            bar.update(t, completed=step, info=f"stage 1/9  8 bits  loss 0.{step}")
    lines = [x for x in capsys.readouterr().err.splitlines() if "FraQAT" in x]
    assert len(lines) == 4 and "\x1b" not in "".join(lines)  # plain text, no bar frames
    assert "1/4 (25%)" in lines[0] and "left" in lines[0] and "loss 0.1" in lines[0]
    assert "4/4 (100%)" in lines[-1] and "done" in lines[-1]


def test_progress_lines_are_rate_limited(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(ui, "LOG_PERIOD_S", 3600.0)
    monkeypatch.setitem(ui._settings, "log_progress", True)
    with ui.progress() as bar:
        t = bar.add_task("train", total=1000, info="")
        for step in range(1, 1001):
            bar.update(t, completed=step)
    assert "train" not in capsys.readouterr().err  # a quick task writes nothing; a long one a line per period


def test_nested_stage_tasks_join_the_open_display(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(ui, "LOG_PERIOD_S", 0.0)
    monkeypatch.setitem(ui._settings, "log_progress", True)
    with ui.progress() as bar:
        bar.add_task("quick start", total=7, info="")
        with ui.task("teacher trajectories (distillation data)", 3) as tick:
            for _ in range(3):
                tick()
        assert len(bar.tasks) == 2
    err = capsys.readouterr().err
    assert "teacher trajectories (distillation data): 1/3" in err and "3/3 (100%)" in err


def test_library_calls_stay_quiet(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(ui, "LOG_PERIOD_S", 0.0)
    monkeypatch.setitem(ui._settings, "log_progress", False)
    with ui.task("export", 2) as tick:
        tick()
        tick()
    assert "export" not in capsys.readouterr().err


def test_train_from_the_cli_prints_progress_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  one_torch_thread) -> None:
    """Output to a log (not a terminal): data generation and training steps show up as lines."""
    monkeypatch.setattr(ui, "LOG_PERIOD_S", 0.0)
    out = tmp_path / "run"
    result = runner.invoke(app, ["--threads", "1", "train", "digits", "--out", str(out), "--steps", "9",
                                 "--n-train", "16", "--n-val", "8", "--calib-samples", "8", "--batch-size", "8"])
    assert result.exit_code == 0, result.output
    assert "teacher trajectories (distillation data):" in result.output
    steps = [x for x in result.output.splitlines() if "FraQAT fractional:" in x]
    assert steps and "9/9 (100%)" in steps[-1] and "stage 9/9" in steps[-1]
    assert json.loads((out / "run.json").read_text())["stages"]["train"]["status"] == "done"
