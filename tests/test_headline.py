"""The headline commands as typed (issue 14 section 3): without --run a command takes the newest suitable run
under runs/ and says which; `compile <model>` with no run quantizes the default FP model (PTQ)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fraqat_deploy.cli import app
from fraqat_deploy.commands import find_runs, newest_run

runner = CliRunner()


def _fake_run(folder: Path, adapter: str, stages: dict[str, str], mtime: float) -> None:
    folder.mkdir(parents=True)
    manifest = {"stages": {k: {"status": v} for k, v in stages.items()}, "model": {"adapter": adapter, "spec": {}}}
    (folder / "run.json").write_text(json.dumps(manifest))
    os.utime(folder / "run.json", (mtime, mtime))


def test_the_newest_run_with_what_the_command_needs(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    _fake_run(root / "old", "digits", {"train": "done", "export": "done", "compile/s25u": "done"}, 1000)
    _fake_run(root / "new", "digits", {"train": "done"}, 3000)
    _fake_run(root / "other", "tiny-gemma", {"train": "done", "export": "done", "compile/s25u": "done"}, 2000)
    _fake_run(root / "s24", "digits", {"train": "done", "export": "done", "compile/s24u": "done"}, 4000)
    _fake_run(root / "broken", "digits", {"train": "failed"}, 5000)
    (root / "damaged").mkdir()
    (root / "damaged" / "run.json").write_text("[1, 2, 3]")
    assert newest_run("digits", "trained", root=root).path == root / "s24"
    assert newest_run("digits", "compiled", target="s25u", root=root).path == root / "old"
    assert newest_run(None, "compiled", target="s25u", root=root).path == root / "other"
    assert [r.path.name for r in find_runs("digits", "exported", root=root)] == ["s24", "old"]
    assert newest_run("digits", "compiled", target="s23u", root=root) is None


def test_compile_sana_without_weights_names_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["compile", "sana"])
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "--source" in lines[0] and lines[0].startswith("error:")
    assert not (tmp_path / "runs").exists()


def test_bench_without_a_compiled_run_says_how_to_make_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["bench", "--device", "s25u"])
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert result.exit_code == 2 and len(lines) == 1
    assert "no run compiled for s25u under runs/" in lines[0] and "fraqat-deploy compile" in lines[0]


def test_after_the_quick_start_compile_and_bench_need_no_argument(compiled_digits: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    shutil.copytree(compiled_digits, tmp_path / "runs" / "qs", ignore=shutil.ignore_patterns("bench"))
    compiled = runner.invoke(app, ["compile", "digits"])
    assert compiled.exit_code == 0, compiled.output
    assert "using runs/qs (the newest trained digits run" in compiled.output and "compiled for s25u" in compiled.output
    assert "rel <= bound" in compiled.output and "within bound" in compiled.output  # the figure beside its bound
    bench = runner.invoke(app, ["bench", "digits", "--device", "sim", "--runs", "1", "--warmup", "0"])
    assert bench.exit_code == 0, bench.output
    assert "using runs/qs (the newest digits run compiled for s25u" in bench.output
    assert list((tmp_path / "runs" / "qs" / "bench" / "sim").glob("*/result.json"))
    no_model = runner.invoke(app, ["bench", "--device", "sim", "--runs", "1", "--warmup", "0"])
    assert no_model.exit_code == 0 and "using runs/qs" in no_model.output, no_model.output


@pytest.mark.slow
def test_compile_with_no_run_quantizes_the_default_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         one_torch_thread) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["compile", "digits"])
    assert result.exit_code == 0, result.output
    assert "(PTQ) into runs/digits-ptq" in result.output and "fraqat-deploy train digits" in result.output
    stages = json.loads((tmp_path / "runs" / "digits-ptq" / "run.json").read_text())["stages"]
    assert stages["train"]["schedule"] == "ptq" and stages["compile/s25u"]["status"] == "done"


def test_export_without_a_trained_run_says_how_to_make_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["export", "digits"])
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "no trained digits run under runs/" in lines[0] and "fraqat-deploy train digits" in lines[0]
