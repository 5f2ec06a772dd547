"""The method on the embedded world: a FraQAT W4A8 digits-Sana still draws the digit it is asked for; the
schedule benchmark runs end to end and writes its figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from fraqat_deploy.quality.digits import evaluate_digits, fd_between
from fraqat_deploy.train import TrainConfig, train
from fraqat_deploy.train.load import load_trained

W4A8_PROMPT_ACCURACY = 0.85  # the bar, over 200 generated images (20 per digit)


def test_fraqat_w4a8_digits_keeps_prompt_accuracy(tmp_path: Path):
    torch.set_num_threads(1)
    run = tmp_path / "d"
    result = train(TrainConfig(model="digits", out=run, schedule="fractional", steps=60, n_train=96, n_val=32,
                               calib_samples=32), show_progress=False)
    assert result.final_bits == 4
    trained = load_trained(run)
    state = json.loads((run / "train" / "quant_state.json").read_text())
    assert {e["weight_bits"] for e in state["layers"].values()} == {4.0}
    fp = evaluate_digits(trained.fp, per_digit=20, seed=0)
    q = evaluate_digits(trained.fp, transformer=trained.student, per_digit=20, seed=0)
    assert len(q["images"]) == 200
    assert fp["prompt_accuracy"] >= 0.90
    assert q["prompt_accuracy"] >= W4A8_PROMPT_ACCURACY
    # the quantized images are close to the FP model's own, far closer than to noise
    noise = torch.rand_like(q["images"])
    assert fd_between(q["images"], fp["images"]) < fd_between(noise, fp["images"]) / 10


def test_schedule_benchmark_smoke(tmp_path: Path):
    cmd = [sys.executable, "benchmarks/schedules.py", "--seeds", "2", "--steps", "9", "--budgets", "1", "--models",
           "digits", "tiny-gemma", "--methods", "vQAT W4A8", "FraQAT W4A8", "--per-digit", "1", "--n-train", "16",
           "--n-val", "8", "--out", str(tmp_path), "--name", "smoke"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "smoke.json").read_text())
    assert report["finished_runs"] == report["planned_runs"] == 8
    digits = report["summary"]["digits"]["9"]
    assert set(digits) == {"vQAT W4A8", "FraQAT W4A8"}
    assert digits["FraQAT W4A8"]["seeds"] == [0, 1]
    acc = digits["FraQAT W4A8"]["prompt_accuracy"]
    assert 0.0 <= acc["mean"] <= 1.0 and acc["n"] == 2
    diff = digits["FraQAT W4A8"]["vs_baseline"]["val_loss"]
    assert diff["lo"] <= diff["mean"] <= diff["hi"] and diff["verdict"] in ("resolved", "not resolved")
    assert report["summary"]["tiny-gemma"]["9"]["FraQAT W4A8"]["perplexity"]["mean"] > 1.0
    table = (tmp_path / "smoke.md").read_text()
    assert "| FraQAT W4A8 | 2 |" in table and "8 of 8 planned runs finished" in table


def test_schedule_benchmark_method_rows_train_as_named(tmp_path: Path, monkeypatch):
    """Each method name selects its schedule, activation bits and options: the W8A8 reference trains 8-bit
    weights, "FraQAT W4A8 recal." the FraQAT schedule with --recalibrate-each-stage, plain FraQAT without."""
    import importlib.util
    from types import SimpleNamespace

    spec = importlib.util.spec_from_file_location("schedules_bench", Path(__file__).parents[1] / "benchmarks" /
                                                  "schedules.py")
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "schedules_bench", bench)  # its dataclass looks itself up there
    spec.loader.exec_module(bench)
    seen = {}

    def fake_train(cfg, show_progress):
        seen[cfg.out.name] = cfg
        return SimpleNamespace(val_loss=0.0, stage_val=[{"start": 0.0}])

    monkeypatch.setattr(bench, "train", fake_train)
    for method in ("FraQAT W4A8", "FraQAT W4A8 recal.", "vQAT W8A8 (ref.)"):
        bench.run_one("digits", method, 10, 0, bench.Setting(), tmp_path, {}, end_task=False,
                      data_cache=tmp_path / "data")
    by_method = {(c.schedule, c.act_bits, c.recalibrate_each_stage) for c in seen.values()}
    assert by_method == {("fractional", 8, False), ("fractional", 8, True), ("constant:8", 8, False)}
    assert len(seen) == 3  # each method has its own run folder


def test_schedule_benchmark_include_replaces_the_same_run(monkeypatch):
    """--include: a run of a later file replaces the same (model, method, steps, seed, calibration) run of the
    output JSON or an earlier file, in its place; other runs join; nothing is counted twice."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("schedules_bench", Path(__file__).parents[1] / "benchmarks" /
                                                  "schedules.py")
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "schedules_bench", bench)
    spec.loader.exec_module(bench)

    def run(method: str, seed: int, loss: float) -> dict:
        return {"model": "digits", "method": method, "steps": 50, "seed": seed, "calibration": "minmax",
                "schedule": "x", "metrics": {"val_loss": loss}}

    old = [run("vQAT W4A8", 0, 1.0), run("vQAT W4A8", 1, 2.0), run("FraQAT W4A8", 0, 3.0)]
    rerun = [run("vQAT W4A8", 1, 2.5)]
    added = [run("integer W4A8", 0, 4.0), run("integer W4A8", 1, 5.0)]
    merged = bench.merge(old, rerun, added)
    assert [(r["method"], r["seed"], r["metrics"]["val_loss"]) for r in merged] == [
        ("vQAT W4A8", 0, 1.0), ("vQAT W4A8", 1, 2.5), ("FraQAT W4A8", 0, 3.0), ("integer W4A8", 0, 4.0),
        ("integer W4A8", 1, 5.0)]
    cell = bench.summarize(merged)["digits"]["50"]["integer W4A8"]
    assert cell["vs_baseline"]["val_loss"]["mean"] == (4.0 - 1.0 + 5.0 - 2.5) / 2
