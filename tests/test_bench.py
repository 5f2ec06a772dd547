"""bench on the host HTP simulator, through the same protocol code a phone gets: the schemas and their golden
examples, the numpy pipeline against the PyTorch sampler, and the whole bench end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from fraqat_deploy.bench import wait_for_result
from fraqat_deploy.cli import app
from fraqat_deploy.device import pipeline as pipe
from fraqat_deploy.device.protocol import EXAMPLES_DIR, ProtocolError, example, summarize, validate
from fraqat_deploy.models.sampler import flow_sigmas
from fraqat_deploy.train.load import load_trained

runner = CliRunner()


# ---------------------------------------------------------------- protocol


@pytest.mark.parametrize("message,name", [("request", "request"), ("result", "result"),
                                          ("result", "result_error"), ("status", "status")])
def test_golden_examples_follow_their_schemas(message: str, name: str):
    validate(message, example(name))


def test_schemas_reject_what_the_app_must_not_accept():
    request = example("request")
    with pytest.raises(ProtocolError, match="schema_version"):
        validate("request", request | {"schema_version": 2})
    with pytest.raises(ProtocolError, match="id"):
        validate("request", request | {"id": "../../etc"})
    result = example("result")
    broken = json.loads(json.dumps(result))
    del broken["timings_ms"]["end_to_end"]["p90"]
    with pytest.raises(ProtocolError, match="end_to_end"):
        validate("result", broken)


def test_statistics_match_numpy_and_the_goldens():
    values = [12.0, 10.0, 11.0, 50.0, 10.5, 10.25]
    s = summarize(values)
    assert s["n"] == 6 and s["min"] == 10.0 and s["max"] == 50.0
    assert s["p50"] == pytest.approx(np.percentile(values, 50)) and s["p90"] == pytest.approx(np.percentile(values, 90))
    assert s["std"] == pytest.approx(np.std(values)) and s["mean"] == pytest.approx(np.mean(values))
    with pytest.raises(ValueError):
        summarize([])


def test_committed_goldens_are_what_python_computes_now():
    """The Kotlin core is tested against these files: they must be the Python side's current numbers."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    from protocol_goldens import goldens

    for name, data in goldens().items():
        committed = json.loads((EXAMPLES_DIR / f"{name}.json").read_text())
        assert committed == json.loads(json.dumps(data)), f"{name}.json is stale: run scripts/protocol_goldens.py"


# ---------------------------------------------------------------- the numpy pipeline


def test_numpy_scheduler_equals_the_pytorch_sampler():
    for steps, shift in ((1, 1.0), (8, 1.5), (20, 3.0)):
        np.testing.assert_array_equal(pipe.flow_sigmas(steps, shift), flow_sigmas(steps, shift).numpy())
    from diffusers.models.embeddings import Timesteps

    proj = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)
    t = np.array([1000.0, 999.0, 500.5, 1.0, 0.0], np.float32)
    ours = pipe.timestep_features(t, {"channels": 256, "flip_sin_to_cos": True, "downscale_freq_shift": 0.0,
                                      "max_period": 10000.0, "scale": 1.0})
    np.testing.assert_allclose(ours, proj(torch.tensor(t)).numpy(), atol=2e-4)
    v = np.arange(16, dtype=np.float32).reshape(2, 8)
    np.testing.assert_allclose(pipe.guided(v, 3.0), v[:1] + 3.0 * (v[1:] - v[:1]))


@pytest.fixture(scope="module")
def compiled(compiled_digits: Path) -> Path:
    return compiled_digits


def test_numpy_pipeline_on_the_cpu_qdq_graphs_draws_what_pytorch_draws(compiled: Path):
    from fraqat_deploy.compile.htp import cpu_session

    trained = load_trained(compiled)
    prompt = "a handwritten digit four"
    pipeline, rows = trained.adapter.bench_inputs(trained.fp, [prompt], seed=3)
    sessions = {c: cpu_session(compiled / "export" / f"{c}.onnx") for c in ("text_encoder", "transformer",
                                                                             "vae_decoder")}
    timed = pipe.Timed()
    image = pipe.sana_generate(lambda c, feed: sessions[c].run(None, dict(feed)), pipeline, rows[0], timed)
    ref = trained.adapter.generate(trained.fp, [prompt], seed=3, student=trained.student)[0].numpy()
    assert np.abs(image - ref).mean() < 0.01
    assert {k: len(v) for k, v in timed.calls.items()} == {"text_encoder": 2, "transformer": pipeline["steps"],
                                                            "vae_decoder": 1}


# ---------------------------------------------------------------- bench --device sim


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / max(np.mean((a - b) ** 2), 1e-12)))


def test_bench_on_the_simulator_end_to_end(compiled: Path):
    prompt = "a handwritten digit four"
    result = runner.invoke(app, ["bench", "digits", "--run", str(compiled), "--device", "sim", "--runs", "2",
                                 "--warmup", "1", "--prompt", prompt])
    assert result.exit_code == 0, result.output
    assert "SIMULATOR" in result.output
    manifest = json.loads((compiled / "run.json").read_text())["stages"]["bench/sim"]
    assert manifest["status"] == "done"
    out = compiled / "bench" / "sim" / manifest["id"]
    data = json.loads((out / "result.json").read_text())
    validate("result", data)
    assert data["device"]["runtime"] == "htp-simulator" and data["status"] == "ok"
    steps = data["config"]["steps"]
    assert data["timings_ms"]["end_to_end"]["n"] == 2  # warm-up left out
    assert data["timings_ms"]["components"]["transformer"]["n"] == 2 * steps
    assert data["timings_ms"]["components"]["text_encoder"]["n"] == 4
    assert data["memory_mb"]["peak_rss"] > 0 and data["config"]["resolution"] == [32, 32]
    # the image the simulated HTP drew is the fake-quant PyTorch model's image for the same prompt and seed
    got = np.asarray(Image.open(out / data["outputs"][0]["image"]), dtype=np.float32) / 255.0
    trained = load_trained(compiled)
    ref = trained.adapter.generate(trained.fp, [prompt], seed=0, student=trained.student)[0]
    assert _psnr(got, ref.permute(1, 2, 0).numpy()) > 20.0

    # a second bench pushes only its own request files: the compiled model is already there
    again = runner.invoke(app, ["bench", "digits", "--run", str(compiled), "--device", "sim", "--runs", "1",
                                "--warmup", "0", "--prompt", prompt])
    assert again.exit_code == 0, again.output
    assert "already on the device" in again.output
    second = json.loads((compiled / "run.json").read_text())["stages"]["bench/sim"]
    assert second["skipped"] == 6 and second["id"] != manifest["id"]


def test_bench_errors(compiled: Path, tmp_path: Path):
    bad_backend = runner.invoke(app, ["bench", "digits", "--run", str(compiled), "--backend", "cloud"])
    assert bad_backend.exit_code != 0 and "--backend hub" in bad_backend.output
    not_compiled = runner.invoke(app, ["bench", "digits", "--run", str(compiled), "--device", "sim", "--target",
                                       "s23u", "--prompt", "x"])
    assert not_compiled.exit_code != 0 and "compile first" in not_compiled.output


def test_damaged_run_files_are_one_line_errors(compiled: Path, tmp_path: Path):
    """A context binary changed since compile (same size) or a damaged JSON never reaches the device."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(compiled, run, ignore=shutil.ignore_patterns("bench"))
    binary = run / "compile" / "s25u" / "vae_decoder_ctx_qnn.bin"
    data = bytearray(binary.read_bytes())
    data[len(data) // 2] ^= 0xFF
    binary.write_bytes(bytes(data))
    damaged = runner.invoke(app, ["bench", "digits", "--run", str(run), "--device", "sim", "--runs", "1",
                                  "--prompt", "x"])
    assert damaged.exit_code == 2 and "not the file the compile wrote" in damaged.output, damaged.output
    assert "fraqat-deploy compile" in damaged.output and not list(run.glob("bench/**/result.json"))

    (run / "compile" / "s25u" / "compile.json").write_text("{")
    broken = runner.invoke(app, ["bench", "digits", "--run", str(run), "--device", "sim", "--prompt", "x"])
    assert broken.exit_code == 2 and "compile.json is damaged" in broken.output, broken.output
    (run / "run.json").write_text("{")
    broken = runner.invoke(app, ["compare", "--run", str(run)])
    assert broken.exit_code == 2 and "run.json is damaged" in broken.output, broken.output


def test_a_missing_model_file_ends_in_an_error_result(compiled: Path, tmp_path: Path):
    """The engine (the app's counterpart) reports a missing model in result.json instead of dying."""
    from fraqat_deploy.device.engine import Engine

    files = tmp_path / "files"
    request = example("request")
    path = files / "runs" / request["id"] / "request.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(request))
    Engine(files, path).run()
    result = json.loads((path.parent / "result.json").read_text())
    validate("result", result)
    assert result["status"] == "error" and result["error"]["kind"] == "model_missing"
    assert json.loads((path.parent / "status.json").read_text())["request_id"] == request["id"]


class _FakeLink:
    """Serves a stale result.json (another request's) first, then the right one."""

    def __init__(self) -> None:
        self.reads = 0

    def read_text(self, remote: str):
        if remote.endswith("result.json"):
            self.reads += 1
            return json.dumps({"request_id": "older" if self.reads < 3 else "new"})
        return None

    def running(self) -> bool:
        return True


def test_a_stale_result_is_never_taken_for_the_new_one():
    link = _FakeLink()
    assert wait_for_result(link, "new", timeout_s=10)["request_id"] == "new"
    assert link.reads == 3


def test_engine_runs_as_a_module(tmp_path: Path):
    bad = tmp_path / "files" / "runs" / "x" / "request.json"
    bad.parent.mkdir(parents=True)
    bad.write_text("{not json")
    subprocess.run([sys.executable, "-m", "fraqat_deploy.device.engine", "--files-dir", str(tmp_path / "files"),
                    "--request", "runs/x/request.json"], check=True, timeout=120)
    result = json.loads((bad.parent / "result.json").read_text())
    assert result["status"] == "error" and result["error"]["kind"] == "invalid_request"


def test_a_one_row_transformer_graph_is_called_per_half_of_the_guidance_batch():
    """With ``transformer_batch`` 1 (an export with ``--guidance-batch 1``) the pipeline calls the transformer on the
    unconditional and the conditional half in turn: a transformer that treats every row alone then gives the same
    image as one call on the whole guidance batch, in twice the calls; a batch that does not divide is refused."""
    def toy(component: str, feed: dict) -> list[np.ndarray]:
        if component == "text_encoder":
            ids, mask = feed["input_ids"][..., None], feed["attention_mask"][..., None]
            return [(ids * mask).astype(np.float32) * np.float32(0.01)]
        if component == "transformer":  # each row: its own latent, time and prompt only
            text = (feed["prompt_embeds"] * feed["prompt_mask"][..., None]).sum(axis=(1, 2))
            shift = feed["timestep_features"].mean(axis=1) - np.float32(0.01) * text
            return [(0.5 * feed["latent"] - shift[:, None, None, None]).astype(np.float32)]
        return [np.repeat(feed["latent"][:, :1], 3, axis=1)]

    rng = np.random.default_rng(0)
    tensors = {"input_ids": rng.integers(1, 50, (1, 6)), "attention_mask": np.ones((1, 6), np.int64),
               "uncond_input_ids": np.zeros((1, 6), np.int64), "uncond_attention_mask": np.eye(1, 6, dtype=np.int64),
               "noise": rng.standard_normal((1, 2, 4, 4)).astype(np.float32)}
    settings = {"kind": "sana", "steps": 3, "guidance": 4.5, "flow_shift": 3.0,
                "time_proj": {"channels": 8, "flip_sin_to_cos": True, "downscale_freq_shift": 0.0,
                              "max_period": 10000.0, "scale": 1.0}}
    whole, halves = pipe.Timed(), pipe.Timed()
    ref = pipe.sana_generate(toy, settings, tensors, whole)
    got = pipe.sana_generate(toy, settings | {"transformer_batch": 1}, tensors, halves)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)
    assert len(whole.calls["transformer"]) == 3 and len(halves.calls["transformer"]) == 6
    export = {"components": {"transformer": {"input_shapes": {"latent": [1, 2, 4, 4]}}}}
    assert pipe.with_graph_rows(settings, export)["transformer_batch"] == 1
    with pytest.raises(ValueError, match="does not divide"):
        pipe.sana_generate(toy, settings | {"transformer_batch": 3}, tensors, pipe.Timed())
