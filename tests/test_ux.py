"""A new user's first hour (issue 15): threads, progress in logs, consistent runs, messages that help."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_checks import one_line_error
from typer.testing import CliRunner

from fraqat_deploy import threads, ui
from fraqat_deploy.cli import app

runner = CliRunner()


# ---- threads -------------------------------------------------------------------------------------------------

def test_threads_leave_busy_cores_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(threads.ENV, raising=False)  # an earlier in-process CLI call exports its choice
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
        t = bar.add_task("FraQAT fractional", total=40, info="")
        for step in range(1, 41):
            bar.update(t, completed=step, info=f"stage 1/9  8 bits  loss 0.{step}")
        stages = bar.add_task("quick start", total=7, info="")
        bar.update(stages, completed=1)
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if "FraQAT" in x]
    assert len(lines) == 40 and "\x1b" not in "".join(lines)  # plain text, no bar frames
    assert "1/40 (2%)" in lines[0] and "left" in lines[0] and "loss 0.1" in lines[0]
    assert "40/40 (100%)" in lines[-1] and "done" in lines[-1]
    stage_lines = [x for x in err.splitlines() if "quick start" in x]
    assert stage_lines and "left" not in stage_lines[0]  # 7 unequal stages: no time-left guess


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


# ---- runs that stay consistent -------------------------------------------------------------------------------

def test_a_second_writer_of_a_stage_is_refused(tmp_path: Path) -> None:
    import os

    from fraqat_deploy.runs import RunDir

    out = tmp_path / "run"
    with RunDir(out).lock("train"):
        line = one_line_error(runner.invoke(app, ["train", "digits", "--out", str(out), "--steps", "9"]))
    assert f"process {os.getpid()}" in line and "busy" in line and "another --out" in line
    assert not (out / "train").exists() and not (out / "run.json").exists()  # the second writer wrote nothing
    with RunDir(out).lock("train"):  # released: the next writer gets it
        pass


@pytest.mark.parametrize(("error", "status", "reason"), [
    (KeyboardInterrupt(), "interrupted", "Ctrl-C"),
    (None, "interrupted", "SIGTERM"),
    (ValueError("Invalid learning rate"), "failed", "ValueError: Invalid learning rate"),
])
def test_a_stage_that_stops_says_why(tmp_path: Path, error, status: str, reason: str) -> None:
    from fraqat_deploy.cli import Terminated
    from fraqat_deploy.runs import RunDir

    rd = RunDir(tmp_path / "run")
    rd.update_stage("export", "running")
    error = error or Terminated()
    with pytest.raises(type(error)):
        with rd.guard("export"):
            raise error
    entry = rd.manifest()["stages"]["export"]
    assert entry["status"] == status and entry["reason"] == reason


def test_a_failed_training_is_recorded_as_failed(tmp_path: Path, one_torch_thread) -> None:
    """The loss blowing up mid-run: run.json says failed, with the one-line reason the user saw."""
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "digits", "--out", str(out), "--steps", "9", "--lr", "1e30",
                                 "--n-train", "16", "--n-val", "8", "--calib-samples", "8"])
    line = one_line_error(result) if result.exit_code else pytest.skip("the loss stayed finite at lr 1e30")
    entry = json.loads((out / "run.json").read_text())["stages"]["train"]
    assert entry["status"] == "failed" and entry["reason"] in line


@pytest.mark.slow
def test_sigterm_leaves_the_run_interrupted(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "fraqat_deploy.cli", "--threads", "1", "train", "digits",
                             "--out", str(out), "--steps", "5000", "--n-train", "16", "--n-val", "8",
                             "--calib-samples", "8"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            try:
                if json.loads((out / "run.json").read_text())["stages"]["train"]["status"] == "running":
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.5)
        os.kill(proc.pid, signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, output
    assert "interrupted (SIGTERM)" in output and "--resume" in output
    entry = json.loads((out / "run.json").read_text())["stages"]["train"]
    assert entry["status"] == "interrupted" and entry["reason"] == "SIGTERM"


@pytest.mark.parametrize(("args", "words"), [
    (["--lr", "-1"], "--lr must be a positive number"),
    (["--schedule", "fractional", "--steps", "1"], "has 9 stages, more than --steps 1"),
    (["--weight-decay", "-0.1"], "--weight-decay must be >= 0"),
])
def test_train_checks_options_before_any_work(tmp_path: Path, args: list[str], words: str) -> None:
    import time

    out = tmp_path / "run"
    started = time.perf_counter()
    line = one_line_error(runner.invoke(app, ["train", "digits", "--out", str(out), *args]))
    assert words in line and time.perf_counter() - started < 30  # no data generation first (it takes minutes)
    assert not out.exists()


@pytest.mark.parametrize("command", ["interrupted-train", "interrupted-quickstart"])
def test_the_ctrl_c_hint_names_what_resumes(command: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import fraqat_deploy.quickstart as qs
    import fraqat_deploy.train as tr

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(qs, "quickstart", stop)
    monkeypatch.setattr(tr, "train", stop)
    argv = ["train", "digits", "--out", str(tmp_path / "r")] if command.endswith("train") else \
        ["quickstart", "--out", str(tmp_path / "q")]
    result = runner.invoke(app, argv)
    assert result.exit_code == 130
    if command.endswith("train"):
        assert "re-run it with --resume" in result.output
    else:
        assert "re-run the same command" in result.output and "--resume" not in result.output


def test_bench_of_a_missing_run_creates_nothing(tmp_path: Path) -> None:
    nope = tmp_path / "nope"
    line = one_line_error(runner.invoke(app, ["bench", "digits", "--run", str(nope), "--device", "sim"]))
    assert "no run at" in line and not nope.exists()


def test_a_refused_bench_leaves_no_folders(compiled_digits: Path, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(compiled_digits, run, ignore=shutil.ignore_patterns("bench"))
    line = one_line_error(runner.invoke(app, ["bench", "digits", "--run", str(run), "--device", "sim",
                                               "--target", "s23u", "--prompt", "x"]))
    assert "compile" in line and not (run / "bench").exists()


@pytest.mark.parametrize("text", ["[1, 2, 3]", '{"stages": 5}', '{"stages": {"train": {"status": "maybe"}}}',
                                  '{"stages": {}, "baselines": "ptq"}'])
def test_a_run_json_of_the_wrong_shape_is_damaged(tmp_path: Path, text: str) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(text)
    line = one_line_error(runner.invoke(app, ["compare", "--run", str(run)]))
    assert "run.json is damaged" in line and "train again" in line


# ---- messages that help --------------------------------------------------------------------------------------

def test_the_bundled_adb_runs_through_the_cli() -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "fraqat_deploy.cli", "adb", "version"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and "Android Debug Bridge" in done.stdout, done.stdout + done.stderr


def test_no_phone_errors_name_the_bundled_adb() -> None:
    from fraqat_deploy.device.adb import NO_PHONE_FIX

    assert "fraqat-deploy adb devices" in NO_PHONE_FIX and "`adb devices`" not in NO_PHONE_FIX


def test_devices_stops_the_adb_server_it_started(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from fraqat_deploy.device.adb import server_running

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", str(port))
    assert not server_running()
    result = runner.invoke(app, ["devices"])
    assert result.exit_code == 0, result.output
    assert "no phone" in result.output and not server_running()  # the server adbutils started is gone
    kept = runner.invoke(app, ["devices", "--keep-server"])
    try:
        assert kept.exit_code == 0 and server_running() and "keeps running" in kept.output, kept.output
    finally:
        from fraqat_deploy.device.adb import stop_server

        stop_server()


def test_the_qnn_libnative_line_is_kept_off_the_console(capfd) -> None:
    import os

    from fraqat_deploy.compile.htp import native_noise_filtered

    with native_noise_filtered():  # what the QNN libraries write natively, on fds 1 and 2
        os.write(2, b" # LIBNATIVE: No alternate configuration present in libnative_tls.conf (Success)\n")
        os.write(2, b"a real warning\n")
        os.write(1, b"stdout stays\n")
    captured = capfd.readouterr()
    assert "LIBNATIVE" not in captured.err + captured.out
    assert "a real warning" in captured.err and "stdout stays" in captured.out


def test_a_long_prompt_is_shown_short_and_said_to_be_cut(tmp_path: Path) -> None:
    prompt = "a handwritten digit seven " * 400  # 10,400 characters
    result = runner.invoke(app, ["generate", "digits", "--prompt", prompt, "--out", str(tmp_path / "x.png"),
                                 "--steps", "1"])
    assert result.exit_code == 0, result.output
    assert prompt not in result.output and "(10,400 characters)" in result.output
    assert "the model reads only the first 16" in result.output and "was cut" in result.output


def test_a_schedule_not_ending_at_4_bits_says_what_it_makes() -> None:
    from fraqat_deploy.train import TrainConfig

    assert TrainConfig(model="digits", out=Path("x"), schedule="fractional").final_bits_note() is None
    int16 = TrainConfig(model="digits", out=Path("x"), schedule="9.5:1").final_bits_note()
    assert "not W4A8" in int16 and "INT16 weights" in int16 and "HTP runs INT16" in int16
    w3 = TrainConfig(model="digits", out=Path("x"), schedule="3:4").final_bits_note()
    assert "W3A8" in w3 and "INT4" in w3


def test_the_compile_table_shows_parity_against_its_bound() -> None:
    from fraqat_deploy.cli import _parity_cell

    par = {"outputs": {"x": {"rel": 0.1489, "rel_tol": 0.2, "passed": True}, "y": {"rel": 0.01, "rel_tol": 0.02,
                                                                                  "passed": True}}}
    assert _parity_cell(par) == "14.89% rel <= bound 20.00%"
    steps = {"outputs": {"x": {"rel": 0.05, "rel_tol": 0.02, "passed": True}}}
    assert _parity_cell(steps) == "5.00% rel > 2.00%, within 2 output steps"


def test_nothing_points_outside_the_repository() -> None:
    """A user who cloned the repository has docs/, not the project's private notes."""
    root = Path(__file__).resolve().parent.parent
    files = [root / "README.md", *root.glob("fraqat_deploy/**/*.py"), *root.glob("tests/*.py"),
             *root.glob("android_app/**/*.kt"), *root.glob("docs/*.md")]
    bad = [str(f.relative_to(root)) for f in files
           if any(s in f.read_text(errors="replace") for s in ("../shared", "shared/DESIGN", "REFERENCE.md",
                                                                "`DESIGN.md`", "``DESIGN.md``"))
           and f.name != "test_ux.py"]
    assert not bad, bad
    assert (root / "docs" / "design.md").is_file() and (root / "docs" / "htp-notes.md").is_file()


def test_the_quick_starts_bench_stage_prints_progress_lines(monkeypatch: pytest.MonkeyPatch, capsys,
                                                             tmp_path: Path) -> None:
    """The bench stage (about 2 min on the simulator) reports the engine's status.json, not minutes of silence."""
    import fraqat_deploy.bench as bench_module
    from fraqat_deploy import quickstart

    def fake_bench(run, link, *, on_event=None, **kwargs):
        for done in range(4):
            on_event("status", {"state": "running", "done": done, "total": 3, "message": f"run {done}"})

    monkeypatch.setattr(bench_module, "bench", fake_bench)
    monkeypatch.setattr(ui, "LOG_PERIOD_S", 0.0)
    monkeypatch.setitem(ui._settings, "log_progress", True)
    with ui.progress() as bar:
        quickstart._bench(tmp_path, bar)
    err = capsys.readouterr().err
    assert "bench" in err and "3/3 (100%)" in err and "run 2" in err
