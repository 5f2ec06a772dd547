"""The quick start end to end (with a short training budget): every stage, the report, and a re-run that reuses
all of them; then compare and report run again on their own, as the README's acceptance commands do."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from fraqat_deploy.cli import app

runner = CliRunner()


def test_quickstart_then_compare_and_report(tmp_path: Path):
    out = tmp_path / "qs"
    first = runner.invoke(app, ["quickstart", "--out", str(out), "--steps", "18"])
    assert first.exit_code == 0, first.output
    assert (out / "report.html").is_file() and f"report: {out / 'report.html'}" in first.output
    stages = json.loads((out / "run.json").read_text())["stages"]
    for stage in ("train", "export", "compile/s25u", "bench/sim", "compare", "report"):
        assert stages[stage]["status"] == "done", stage
    assert json.loads((out / "baselines" / "ptq" / "run.json").read_text())["stages"]["train"]["schedule"] == "ptq"
    metrics = json.loads((out / "compare" / "metrics.json").read_text())
    kinds = {s["kind"] for s in metrics["sources"]}
    assert {"fp", "baseline", "fake_quant", "onnx_cpu", "simulator"} <= kinds

    again = runner.invoke(app, ["quickstart", "--out", str(out), "--steps", "18"])
    assert again.exit_code == 0, again.output
    assert "reused:" in again.output and "train (FraQAT W4A8)" in again.output

    compare = runner.invoke(app, ["compare", "--run", str(out)])
    assert compare.exit_code == 0, compare.output
    assert "PTQ" in compare.output and "HTP simulator" in compare.output  # the recorded baseline is found
    report = runner.invoke(app, ["report", "--run", str(out)])
    assert report.exit_code == 0 and "report.html" in report.output
