"""The app's own Kotlin engine (android_app/core: BenchmarkEngine + OrtBackend over the ONNX Runtime Java API) on the
host HTP simulator, with the real compiled context binaries of digits-Sana and tiny-Gemma.

``bench --device s25u`` against the virtual phone runs it (tests/virtual_phone/kotlin_app.py): adb, the device
scripts, the protocol and the app's engine code are real; the Activity shell and the phone's hardware are simulated
(the HTP is the host simulator, and the result says ``runtime: htp-simulator``). ``bench --device sim`` runs the
Python engine (fraqat_deploy/device/engine.py) on the same simulator; the two must agree: digits images within
40 dB PSNR of each other and read as the same digit, tiny-Gemma's greedy tokens identical.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner
from virtual_phone.kotlin_app import KotlinUnavailable, engine_classpath, kotlin_app, run_engine

from fraqat_deploy.cli import app
from fraqat_deploy.device.protocol import FILES_DIR, PACKAGE, validate
from fraqat_deploy.quality.digits import classify, digit_of_prompt
from fraqat_deploy.quality.images import load_png, psnr, unit

runner = CliRunner()
DIGIT_PROMPT = "a handwritten digit four"
TEXT_PROMPT = "the cat"
GEMMA_TOKENS = ("--max-new-tokens", "12")  # enough to tell two decoders apart; each token is a simulator call


@pytest.fixture(scope="module")
def classpath() -> str:
    try:
        return engine_classpath()
    except KotlinUnavailable as e:
        if shutil.which("java") is None:
            pytest.skip(str(e))
        raise


@pytest.fixture(scope="module")
def compiled_tiny_gemma(exported_tiny_gemma: Path) -> Path:
    """The shared tiny-Gemma run compiled for s25u in place, as test_gemma_export does (then already done)."""
    from fraqat_deploy.compile.run import compile_run

    if not (exported_tiny_gemma / "compile" / "s25u" / "compile.json").is_file():
        compile_run(exported_tiny_gemma, "s25u")
    return exported_tiny_gemma


def bench(model: str, run: Path, device: str, prompt: str, *extra: str):
    return runner.invoke(app, ["bench", model, "--run", str(run), "--device", device, "--runs", "1", "--warmup", "0",
                               "--prompt", prompt, "--timeout", "600", *extra])


def latest(run: Path, label: str) -> tuple[Path, dict]:
    stage = json.loads((run / "run.json").read_text())["stages"][f"bench/{label}"]
    out = run / "bench" / label / stage["id"]
    return out, json.loads((out / "result.json").read_text())


@pytest.fixture(scope="module")
def python_digits(compiled_digits: Path) -> tuple[Path, dict]:
    """The Python engine's digits bench on --device sim (its files folder also serves the error tests)."""
    sim = bench("digits", compiled_digits, "sim", DIGIT_PROMPT)
    assert sim.exit_code == 0, sim.output
    return latest(compiled_digits, "sim")


def phone_with_kotlin_app(virtual_phone, classpath: str):
    phone = virtual_phone(apps={}, thermal_status=0)
    phone.install_app(PACKAGE, "0.1.0", 1, app=kotlin_app(classpath))
    return phone


def test_digits_on_the_phone_runs_the_kotlin_engine_and_agrees_with_python(virtual_phone, classpath: str,
                                                                           compiled_digits: Path, python_digits):
    phone_with_kotlin_app(virtual_phone, classpath)
    result = bench("digits", compiled_digits, "s25u", DIGIT_PROMPT)
    assert result.exit_code == 0, result.output
    out, kotlin = latest(compiled_digits, "s25u")
    validate("result", kotlin)
    assert kotlin["status"] == "ok"
    # the phone's Build fields, the simulator's runtime, the desktop ONNX Runtime Java package's version
    assert kotlin["device"]["model"] == "SM-S938B" and kotlin["device"]["runtime"] == "htp-simulator"
    assert kotlin["device"]["onnxruntime_version"] and kotlin["device"]["qnn_version"]
    assert kotlin["timings_ms"]["components"]["transformer"]["n"] == kotlin["config"]["steps"]
    assert "SIMULATOR timings" in result.output
    # the Kotlin engine's own log lines reached logcat
    assert "opening 3 components" in (out / "logcat.txt").read_text()

    sim_out, python = python_digits
    ours = load_png(out / kotlin["outputs"][0]["image"])
    theirs = load_png(sim_out / python["outputs"][0]["image"])
    assert ours.shape == theirs.shape == (32, 32, 3)
    if not np.array_equal(ours, theirs):
        assert psnr(unit(ours), unit(theirs)) >= 40.0
    digits = classify(torch.stack([unit(ours), unit(theirs)]))
    assert digits.tolist() == [digit_of_prompt(DIGIT_PROMPT)] * 2


def test_tiny_gemma_tokens_identical_to_the_python_engine(virtual_phone, classpath: str, compiled_tiny_gemma: Path):
    phone_with_kotlin_app(virtual_phone, classpath)
    result = bench("tiny-gemma", compiled_tiny_gemma, "s25u", TEXT_PROMPT, *GEMMA_TOKENS)
    assert result.exit_code == 0, result.output
    _, kotlin = latest(compiled_tiny_gemma, "s25u")
    validate("result", kotlin)
    sim = bench("tiny-gemma", compiled_tiny_gemma, "sim", TEXT_PROMPT, *GEMMA_TOKENS)
    assert sim.exit_code == 0, sim.output
    _, python = latest(compiled_tiny_gemma, "sim")
    tokens = kotlin["outputs"][0]["tokens"]
    assert 0 < len(tokens) <= 12 and tokens == python["outputs"][0]["tokens"]


@pytest.fixture(scope="module")
def compiled_tiny_gemma_host(exported_tiny_gemma_host: Path) -> Path:
    """tiny-Gemma exported with --embedding host, compiled for s25u in place."""
    from fraqat_deploy.compile.run import compile_run

    if not (exported_tiny_gemma_host / "compile" / "s25u" / "compile.json").is_file():
        compile_run(exported_tiny_gemma_host, "s25u")
    return exported_tiny_gemma_host


def test_tiny_gemma_with_the_host_table_tokens_identical_to_the_python_engine(virtual_phone, classpath: str,
                                                                              compiled_tiny_gemma_host: Path):
    """--embedding host: the CLI pushes export/embedding.npy beside the models and names it in the request; the
    Kotlin engine maps it and feeds inputs_embeds rows; its tokens are the Python engine's."""
    phone = phone_with_kotlin_app(virtual_phone, classpath)
    result = bench("tiny-gemma", compiled_tiny_gemma_host, "s25u", TEXT_PROMPT, *GEMMA_TOKENS)
    assert result.exit_code == 0, result.output
    out, kotlin = latest(compiled_tiny_gemma_host, "s25u")
    validate("result", kotlin)
    request = json.loads((out / "request.json").read_text())
    assert request["pipeline"]["spec"]["embedding"] == "host"
    table = request["model"]["embedding"]
    assert table["path"].endswith("/embedding.npy") and table["sha256"] == json.loads(
        (compiled_tiny_gemma_host / "export" / "export.json").read_text())["files"]["embedding"]["sha256"]
    on_phone = phone.host_path(f"{FILES_DIR}/{table['path']}")
    assert on_phone.is_file() and on_phone.stat().st_size == table["bytes"]
    sim = bench("tiny-gemma", compiled_tiny_gemma_host, "sim", TEXT_PROMPT, *GEMMA_TOKENS)
    assert sim.exit_code == 0, sim.output
    _, python = latest(compiled_tiny_gemma_host, "sim")
    tokens = kotlin["outputs"][0]["tokens"]
    assert 0 < len(tokens) <= 12 and tokens == python["outputs"][0]["tokens"]


def _request_copy(compiled_digits: Path, tmp_path: Path) -> tuple[Path, Path]:
    """The simulated files folder the digits bench on --device sim left (models + the latest request), copied."""
    device = compiled_digits / "bench" / "sim" / ".device"
    files = tmp_path / "files"
    shutil.copytree(device, files, ignore=shutil.ignore_patterns("images", "result.json", "status.json"))
    request = max((files / "runs").glob("*/request.json"), key=lambda p: p.parent.name)
    return files, request


def test_a_missing_context_binary_ends_in_an_error_result(classpath: str, compiled_digits: Path, python_digits,
                                                          tmp_path: Path):
    files, request = _request_copy(compiled_digits, tmp_path)
    next(files.glob("models/transformer-*/transformer_ctx_qnn.bin")).unlink()
    proc = run_engine(files, request)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads((request.parent / "result.json").read_text())
    validate("result", data)
    assert data["status"] == "error" and data["error"]["kind"] == "model_missing"
    assert "transformer_ctx_qnn.bin" in data["error"]["message"]


def test_a_missing_qnn_library_ends_in_an_error_result(classpath: str, compiled_digits: Path, python_digits,
                                                       tmp_path: Path):
    files, request = _request_copy(compiled_digits, tmp_path)
    proc = run_engine(files, request, qnn=tmp_path / "no-qnn-here")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads((request.parent / "result.json").read_text())
    validate("result", data)
    assert data["status"] == "error" and data["error"]["kind"] == "htp_unavailable"
    assert "QNN execution provider" in data["error"]["message"]


def test_onnx_runtime_that_does_not_load_ends_in_an_error_result(classpath: str, compiled_digits: Path,
                                                                 python_digits, tmp_path: Path):
    files, request = _request_copy(compiled_digits, tmp_path)
    # ONNX Runtime's Java package loads its native library from this folder instead of its jar: here, an empty one
    proc = run_engine(files, request, jvm=(f"-Donnxruntime.native.path={tmp_path / 'no-natives'}",))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads((request.parent / "result.json").read_text())
    validate("result", data)
    assert data["status"] == "error" and data["error"]["kind"] == "htp_unavailable"
    assert "ONNX Runtime's native library" in data["error"]["message"]


def test_a_request_outside_the_files_folder_is_refused(classpath: str, tmp_path: Path):
    (tmp_path / "files").mkdir()
    (tmp_path / "elsewhere").mkdir()
    request = tmp_path / "elsewhere" / "request.json"
    request.write_text("{}")
    proc = run_engine(tmp_path / "files", request)
    assert proc.returncode == 3 and "refusing" in proc.stderr
    assert not (tmp_path / "elsewhere" / "result.json").exists()


def test_compiled_models_keep_the_exports_ir_version(compiled_digits: Path):
    """ONNX Runtime 1.32 writes EPContext models as IR 14, which the app's older runtimes refuse ("Unsupported model
    IR version"): compile keeps the export's IR version."""
    import onnx

    ctx = sorted((compiled_digits / "compile" / "s25u").glob("*_ctx.onnx"))
    assert len(ctx) == 3
    for path in ctx:
        export = compiled_digits / "export" / path.name.replace("_ctx.onnx", ".onnx")
        assert onnx.load(str(path), load_external_data=False).ir_version == \
            onnx.load(str(export), load_external_data=False).ir_version <= 10
