"""Sampling from the CLI: the FP model and a trained run's quantized student."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from fraqat_deploy.cli import app
from fraqat_deploy.quant import quant_layers
from fraqat_deploy.train import TrainConfig, train
from fraqat_deploy.train.load import load_trained

runner = CliRunner()


def test_generate_fp_and_trained_student(tmp_path: Path):
    run = tmp_path / "run"
    train(TrainConfig(model="sana", out=run, tiny=True, schedule="8:1,4:1", steps=2, n_train=8, n_val=4,
                      calib_samples=4), show_progress=False)
    fp_png, q_png = tmp_path / "fp.png", tmp_path / "q.png"
    args = ["generate", "sana", "--prompt", "a handwritten digit three", "--seed", "3"]
    assert runner.invoke(app, [*args, "--tiny", "--out", str(fp_png)]).exit_code == 0
    result = runner.invoke(app, [*args, "--run", str(run), "--out", str(q_png)])
    assert result.exit_code == 0, result.output
    assert "W4A8 student" in result.output
    fp, q = (np.asarray(Image.open(p)) for p in (fp_png, q_png))
    assert fp.shape == q.shape == (32, 32, 3)
    assert not np.array_equal(fp, q)  # the student is quantized ...
    assert np.abs(fp.astype(int) - q.astype(int)).mean() < 40  # ... yet draws about the same picture

    trained = load_trained(run)
    layers = quant_layers(trained.student)
    assert layers and all(m.weight_bits == 4 for m in layers.values())
    assert all(m.act_encoding is not None for m in layers.values())


def test_generate_text_and_errors(tmp_path: Path):
    result = runner.invoke(app, ["generate", "gemma", "--tiny", "--prompt", "def main("])
    assert result.exit_code == 0 and result.output.startswith("[full-precision model] def main(")
    missing = runner.invoke(app, ["generate", "sana", "--run", str(tmp_path / "nope"), "--prompt", "x",
                                  "--out", str(tmp_path / "x.png")])
    assert missing.exit_code != 0 and "no run at" in missing.output and "fraqat-deploy train" in missing.output
    no_out = runner.invoke(app, ["generate", "sana", "--tiny", "--prompt", "x"])
    assert no_out.exit_code != 0 and "--out" in no_out.output
    bad_suffix = runner.invoke(app, ["generate", "sana", "--tiny", "--prompt", "x", "--out", str(tmp_path / "x.txt")])
    assert bad_suffix.exit_code != 0 and "'.txt'" in bad_suffix.output and ".png" in bad_suffix.output
    assert not (tmp_path / "x.txt").exists()


def test_generate_out_without_a_suffix_writes_png(tmp_path: Path):
    result = runner.invoke(app, ["generate", "sana", "--tiny", "--prompt", "a", "--prompt", "b",
                                 "--out", str(tmp_path / "img")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img-0.png", "img-1.png"]
