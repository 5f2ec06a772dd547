"""The distillation trainer, through the CLI as a user runs it and through the library."""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from fraqat_deploy.cli import app
from fraqat_deploy.errors import ConfigError, InputError
from fraqat_deploy.models.sana import DEFAULT_PROMPTS
from fraqat_deploy.train import TrainConfig, train
from fraqat_deploy.train.heldout import HELDOUT_PROMPTS, heldout_rows

runner = CliRunner()
QUICK = ["--n-train", "48", "--n-val", "16", "--calib-samples", "16"]


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "train" / "metrics.jsonl").read_text().splitlines()]


def _cli(*args: str):
    result = runner.invoke(app, list(args))
    return result


@pytest.fixture(scope="module")
def sana_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "t-sana"
    result = _cli("train", "sana", "--tiny", "--schedule", "fractional", "--steps", "90", "--out", str(out),
                  *QUICK)
    assert result.exit_code == 0, result.output
    return out


def test_sana_fractional_run_writes_its_artifacts(sana_run: Path):
    records = _records(sana_run)
    train_steps = [r for r in records if r["event"] == "train"]
    assert [r["step"] for r in train_steps] == list(range(1, 91))
    # the paper's schedule scaled to 90 steps
    bits_per_step = [r["bits"] for r in train_steps]
    assert bits_per_step[:4] == [8] * 4 and bits_per_step[-50:] == [4] * 50
    assert sorted(set(bits_per_step), reverse=True) == [8, 7, 6, 5.5, 5, 4.75, 4.5, 4.25, 4]

    state = json.loads((sana_run / "train" / "quant_state.json").read_text())
    layers = state["layers"]
    assert layers and {e["weight_bits"] for e in layers.values()} == {4.0}
    assert layers["proj_out"]["act"]["bits"] == 16  # the last layer at A16, the paper's on-device recipe
    assert {e["act"]["bits"] for n, e in layers.items() if n != "proj_out"} == {8}
    assert any(n.endswith("ff.conv_inverted") for n in layers)  # Sana's pointwise-conv feed-forward

    vals = [r for r in records if r["event"] == "val"]
    final_stage = max(r["stage"] for r in vals)
    start = next(r["val_loss"] for r in vals if r["stage"] == final_stage and r["when"] == "stage_start")
    end = next(r["val_loss"] for r in vals if r["stage"] == final_stage and r["when"] == "stage_end")
    assert end < start

    assert (sana_run / "train" / "checkpoints" / "step-0000090" / "model.safetensors").is_file()
    manifest = json.loads((sana_run / "run.json").read_text())
    assert manifest["stages"]["train"]["status"] == "done"
    assert manifest["stages"]["train"]["schedule"] == "8:1,7:1,6:1,5.5:1,5:1,4.75:2,4.5:2,4.25:2,4:14"
    assert "train/model.safetensors" in manifest["stages"]["train"]["outputs"]
    assert manifest["stages"]["train"]["environment"]["libraries"]["torch"]


def test_rerun_without_resume_keeps_the_run(sana_run: Path):
    before = (sana_run / "train" / "model.safetensors").read_bytes()
    result = _cli("train", "sana", "--tiny", "--steps", "90", "--out", str(sana_run))
    assert result.exit_code != 0
    assert "--resume" in result.output and len(result.output.strip().splitlines()) == 1
    assert (sana_run / "train" / "model.safetensors").read_bytes() == before


def test_gemma_integer_run(tmp_path: Path):
    out = tmp_path / "t-gemma"
    result = _cli("train", "gemma", "--tiny", "--schedule", "integer", "--steps", "50", "--out", str(out),
                  *QUICK)
    assert result.exit_code == 0, result.output
    records = _records(out)
    assert sorted({r["bits"] for r in records if r["event"] == "train"}, reverse=True) == [8, 7, 6, 5, 4]
    state = json.loads((out / "train" / "quant_state.json").read_text())
    assert {e["weight_bits"] for e in state["layers"].values()} == {4.0}
    assert state["layers"]["lm_head"]["act"]["bits"] == 16
    vals = [r for r in records if r["event"] == "val" and r["stage"] == 4]
    assert vals[-1]["val_loss"] < vals[0]["val_loss"]


@pytest.mark.parametrize("schedule", ["8:1,oops", "fractionall", "8:1,1:1"])
def test_bad_schedule_is_one_line(tmp_path: Path, schedule: str):
    result = _cli("train", "sana", "--tiny", "--schedule", schedule, "--out", str(tmp_path / "bad"))
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: bad schedule")
    assert "8:1,6:1,5.5:2,4:4" in lines[0]
    assert not (tmp_path / "bad").exists()


def test_config_errors(tmp_path: Path):
    with pytest.raises(InputError, match="no Sana model given.*tiny"):  # the adapter says what it needs
        train(TrainConfig(model="sana", out=tmp_path / "x"), show_progress=False)
    assert not (tmp_path / "x").exists()
    with pytest.raises(ConfigError, match="adam, adamw"):
        TrainConfig(model="sana", out=Path("x"), tiny=True, optimizer="sgd")
    with pytest.raises(ConfigError, match="mse, minmax, percentile, meanstd, learned"):
        TrainConfig(model="sana", out=Path("x"), tiny=True, calibration="tf-enhanced")
    with pytest.raises(ConfigError, match="unknown model 'flux'"):
        train(TrainConfig(model="flux", out=Path("x"), tiny=True))


def test_resume_without_checkpoint(tmp_path: Path):
    with pytest.raises(InputError, match="no checkpoint to resume"):
        train(TrainConfig(model="sana", out=tmp_path, tiny=True, resume=True), show_progress=False)


def test_ptq_rounds_without_training(tmp_path: Path):
    res = train(TrainConfig(model="sana", out=tmp_path, tiny=True, schedule="ptq", n_train=16, n_val=8,
                            calib_samples=8), show_progress=False)
    assert res.steps == 0
    records = _records(tmp_path)
    assert all(r["event"] == "val" for r in records) and records[0]["bits"] == 4
    state = json.loads((tmp_path / "train" / "quant_state.json").read_text())
    assert {e["weight_bits"] for e in state["layers"].values()} == {4.0}
    # the saved weights are the FP ones: rounding happens in the quantizer, from the same latent weights
    from fraqat_deploy.models import get_adapter

    fp = get_adapter("sana").load(None, tiny=True, seed=0).student.state_dict()
    saved = load_file(str(tmp_path / "train" / "model.safetensors"))
    assert all(torch.equal(saved[k], fp[k]) for k in saved)


def test_selective_training_only_moves_feed_forward(tmp_path: Path):
    train(TrainConfig(model="sana", out=tmp_path, tiny=True, schedule="constant:4", steps=3, trainable="ff",
                      n_train=16, n_val=8, calib_samples=8, lr=1e-2), show_progress=False)
    from fraqat_deploy.models import get_adapter

    fp = get_adapter("sana").load(None, tiny=True, seed=0).student.state_dict()
    saved = load_file(str(tmp_path / "train" / "model.safetensors"))
    changed = {k for k in saved if not torch.equal(saved[k], fp[k])}
    assert changed and all(".ff." in k for k in changed)


def test_kl_loss_and_grad_accumulation(tmp_path: Path):
    res = train(TrainConfig(model="gemma", out=tmp_path, tiny=True, schedule="constant:4", steps=4, loss="kl",
                            batch_size=4, grad_accum=2, n_train=16, n_val=8, calib_samples=8), show_progress=False)
    assert res.steps == 4 and res.val_loss >= 0
    records = [r for r in _records(tmp_path) if r["event"] == "train"]
    assert len(records) == 4 and all(r["loss"] >= 0 for r in records)


def _train_cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "fraqat_deploy.cli", "train", "sana", "--tiny", "--schedule", "fractional",
            "--steps", "60", "--checkpoint-every", "10", "--out", str(out), *QUICK, *extra]


def test_sigkill_and_resume_ends_with_identical_weights(tmp_path: Path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight = tmp_path / "straight"
    subprocess.run(_train_cmd(straight), check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = killed / "train" / "checkpoints" / "step-0000010"
    deadline = time.time() + 300
    while not first.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (killed / "train" / "model.safetensors").exists()
    shutil.rmtree(killed / "train" / "checkpoints" / ".tmp-step-0000020", ignore_errors=True)

    subprocess.run(_train_cmd(killed, "--resume"), check=True, env=env, capture_output=True)
    a = load_file(str(straight / "train" / "model.safetensors"))
    b = load_file(str(killed / "train" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [r["step"] for r in _records(killed) if r["event"] == "train"]
    assert steps == list(range(1, 61))  # no step logged twice, none missing
    assert (straight / "train" / "quant_state.json").read_text() == (killed / "train" / "quant_state.json").read_text()


@pytest.mark.skipif(shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(),
                    reason="torchrun not installed")
def test_torchrun_two_processes(tmp_path: Path):
    torchrun = str(Path(sys.executable).parent / "torchrun")
    out = tmp_path / "ddp"
    cmd = [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "fraqat_deploy.cli", "train", "sana", "--tiny",
           "--schedule", "8:1,4:1", "--steps", "4", "--batch-size", "4", "--out", str(out), *QUICK]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    steps = [r["step"] for r in _records(out) if r["event"] == "train"]
    assert steps == [1, 2, 3, 4]  # rank 0 alone writes
    assert (out / "train" / "model.safetensors").is_file()


def test_distillation_data_comes_from_the_full_precision_teacher(tmp_path: Path):
    from fraqat_deploy.models import get_adapter

    train(TrainConfig(model="sana", out=tmp_path, tiny=True, schedule="constant:4", steps=1, n_train=8, n_val=4,
                      calib_samples=4), show_progress=False)
    adapter = get_adapter("sana")
    fp = adapter.load(None, tiny=True, seed=0)
    expected = adapter.distill_data(fp, None, n_train=8, n_val=0, seed=0)
    heldout, description = heldout_rows(adapter, fp, None, 4, seed=0)
    cached = load_file(str(tmp_path / "train" / "data.safetensors"))
    assert all(torch.equal(cached[f"train.{k}"], v) for k, v in expected.train.items())
    assert all(torch.equal(cached[f"val.{k}"], v) for k, v in heldout.items())
    # validation rows are held out: other prompts, other noise; none of them is a training row
    train_x, val_x = cached["train.hidden_states"].flatten(1), cached["val.hidden_states"].flatten(1)
    assert torch.cdist(val_x, train_x).min() > 0
    assert not set(HELDOUT_PROMPTS) & set(DEFAULT_PROMPTS)
    manifest = json.loads((tmp_path / "run.json").read_text())["stages"]["train"]
    assert "held-out prompts" in manifest["data"] and manifest["validation_rows"] == 4


def test_learned_encodings_train_and_are_saved_as_trained(tmp_path: Path):
    from fraqat_deploy.quant import quant_layers
    from fraqat_deploy.train.load import load_trained

    train(TrainConfig(model="sana", out=tmp_path, tiny=True, schedule="constant:4", steps=3, n_train=8, n_val=4,
                      calib_samples=4, calibration="learned", lr=1e-2), show_progress=False)
    state = json.loads((tmp_path / "train" / "quant_state.json").read_text())
    layer = next(iter(state["layers"].values()))
    assert set(layer["learned"]) == {"act", "out"}
    consistent = [e for v in state["layers"].values() for k, e in v["learned"].items()
             if abs(math.exp(e["log_scale"]) - v[k]["scale"]) / v[k]["scale"] < 1e-6]
    assert len(consistent) == 2 * len(state["layers"])  # the exported scale is the learned one
    trained = load_trained(tmp_path)
    static = copy.deepcopy(trained.student)
    for m in quant_layers(static).values():
        m.learned = {}  # what export sees: the static encodings alone
    batch = load_file(str(tmp_path / "train" / "data.safetensors"))
    rows = {k[len("val."):]: v for k, v in batch.items() if k.startswith("val.")}
    adapter = trained.adapter
    with torch.no_grad():
        assert torch.equal(adapter.forward(trained.student, rows), adapter.forward(static, rows))


def test_load_weights_copies_into_the_model_and_refuses_misfits(tmp_path: Path):
    """Weights are copied tensor by tensor into the model's own storage; a file of another shape or a damaged one
    is a one-line InputError naming the fix."""
    from torch import nn

    from fraqat_deploy.train.checkpoint import load_weights, save_weights

    src, dst = nn.Linear(4, 3), nn.Linear(4, 3)
    save_weights(src, tmp_path / "w.safetensors")
    storage = dst.weight.data_ptr()
    load_weights(dst, tmp_path / "w.safetensors")
    assert torch.equal(dst.weight, src.weight) and torch.equal(dst.bias, src.bias)
    assert dst.weight.data_ptr() == storage  # in place, not a second copy
    save_weights(nn.Linear(5, 3), tmp_path / "other.safetensors")
    with pytest.raises(InputError, match="do not fit the model") as e:
        load_weights(dst, tmp_path / "other.safetensors")
    assert "same --model" in e.value.fix
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(InputError, match="cannot read weights"):
        load_weights(dst, tmp_path / "bad.safetensors")
