"""The Qualcomm AI Hub back end against the real ``qai_hub`` client, pointed by a temporary client.ini
(``QAIHUB_CLIENT_INI``) at the local HTTP double in ``tests/hub_double`` (real compiles with the local QNN compiler,
profile and inference on the host HTP simulator)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import zipfile
from collections.abc import Iterator
from pathlib import Path

import h5py
import onnx
import pytest
from hub_double import HubDouble
from hub_double.server import DEFAULT_DEVICES
from qai_hub.util.dataset_entries_converters import h5_to_dataset_entries

from fraqat_deploy.bench.hub import hub_bench
from fraqat_deploy.compile.htp import qnn_versions
from fraqat_deploy.compile.hub import hub_compile_run
from fraqat_deploy.compile.local import htp_parity
from fraqat_deploy.device.protocol import validate
from fraqat_deploy.errors import ConfigError, DeviceError, InputError
from fraqat_deploy.export import export_run, load_inputs
from fraqat_deploy.train import train
from fraqat_deploy.train.config import TrainConfig

COMPONENTS = ["text_encoder", "transformer", "vae_decoder"]
FAST = {"poll_s": 0.05, "timeout_s": 120.0}


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    with HubDouble(root / "service") as double, pytest.MonkeyPatch.context() as mp:
        mp.setenv("QAIHUB_CLIENT_INI", str(double.write_client_ini(root / "client.ini")))
        yield double


@pytest.fixture(autouse=True)
def _reset(hub):
    yield
    hub.fail.clear()
    hub.devices[:] = DEFAULT_DEVICES
    hub.release()


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("digits") / "d1"
    train(TrainConfig(model="digits", out=run, schedule="fractional", steps=18, n_train=48, n_val=16,
                      calib_samples=16), show_progress=False)
    export_run(run)
    return run


@contextlib.contextmanager
def everything_printed() -> Iterator[io.StringIO]:
    """stdout, stderr and every log record (DEBUG and up, urllib3's request lines included) into one buffer."""
    text = io.StringIO()
    handler = logging.StreamHandler(text)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
            yield text
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


@pytest.fixture(scope="module")
def compiled(hub, run) -> dict:
    with everything_printed() as printed:
        result = hub_compile_run(run, "s25u", **FAST)
    return result | {"printed": printed.getvalue()}


def assert_no_token(token: str, run: Path, *texts: str) -> None:
    for path in run.rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path
    for text in texts:
        assert token not in text


def stage(run: Path, name: str) -> dict:
    return json.loads((run / "run.json").read_text())["stages"][name]


def test_compile_uploads_compiles_on_the_hub_and_downloads_real_context_binaries(hub, run, compiled):
    assert compiled["uploaded"] == COMPONENTS and compiled["reused"] == [] and compiled["cached"] == []
    assert hub.counts["model_uploads"] == 3 and hub.counts["jobs_compile"] == 3
    out = run / "compile" / "s25u"
    data = json.loads((out / "compile.json").read_text())
    sdk = qnn_versions()["qnn_sdk"]
    for name in COMPONENTS:
        record = data["components"][name]
        job = hub.jobs[record["hub"]["compile_job_id"]]
        assert job.history == ["CREATED", "OPTIMIZING_MODEL", "DONE"]
        assert job.device[0] == "Samsung Galaxy S25 Ultra" and job.name == f"compile {name}"
        assert job.options == f"--target_runtime precompiled_qnn_onnx --qairt_version {'.'.join(sdk.split('.')[:2])}"
        assert record["backend"] == "hub" and record["soc_model"] == 69
        assert record["hub"]["compile_job_url"] == f"{hub.url}/web/jobs/{job.id}/"
        assert record["versions"]["qnn_build"] == qnn_versions()["qnn_build"]
        # what AI Hub shipped, renamed to the local back end's layout, the EPContext node pointing at the rename
        ctx = onnx.load(str(out / record["ctx_onnx"]), load_external_data=False)
        refs = [a.s.decode() for n in ctx.graph.node if n.op_type == "EPContext" for a in n.attribute
                if a.name == "ep_cache_context"]
        assert record["ctx_onnx"] == f"{name}_ctx.onnx"
        assert refs == record["context_binaries"] == [f"{name}_ctx_qnn.bin"]
        with zipfile.ZipFile(hub.models[job.target_model_id].blob) as archive:
            shipped = next(archive.read(i) for i in archive.namelist() if i.endswith("_qairt_context.bin"))
        assert hashlib.sha256((out / refs[0]).read_bytes()).digest() == hashlib.sha256(shipped).digest()
        assert record["files"][refs[0]] == len(shipped) > 10_000
    # the downloaded binary is usable by the local bench: it runs on the host simulator like a local compile's
    parity = htp_parity(out / "text_encoder_ctx.onnx", run / "export" / "text_encoder.onnx",
                        load_inputs(run / "export" / "text_encoder.inputs.npz"), target="s25u")
    assert parity["passed"], parity
    entry = stage(run, "compile/s25u")
    assert entry["status"] == "done" and entry["backend"] == "hub"
    assert entry["jobs"]["transformer"]["compile_job_id"] == data["components"]["transformer"]["hub"][
        "compile_job_id"]
    assert "/api/v1/jobs/" in compiled["printed"]  # the log did record the requests...
    assert_no_token(hub.token, run, compiled["printed"])  # ...and not the token


def test_same_export_is_not_uploaded_again(hub, run, compiled):
    uploads, jobs = hub.counts["model_uploads"], hub.counts["jobs_compile"]
    # no record at all: found on the service by its content-hash name
    (run / "compile" / "s25u" / "compile.json").unlink()
    again = hub_compile_run(run, "s25u", **FAST)
    assert again["reused"] == COMPONENTS and again["uploaded"] == []
    # the recorded model id, recompiled on demand
    forced = hub_compile_run(run, "s25u", force=True, **FAST)
    assert forced["reused"] == COMPONENTS and forced["jobs"] != again["jobs"]
    assert hub.counts["model_uploads"] == uploads and hub.counts["jobs_compile"] == jobs + 6
    # the same export, options and device: nothing to do
    cached = hub_compile_run(run, "s25u", **FAST)
    assert cached["cached"] == COMPONENTS and hub.counts["jobs_compile"] == jobs + 6
    assert cached["jobs"] == forced["jobs"]


def test_bench_profiles_and_runs_inference_on_the_hub(hub, run, compiled):
    prompts = ["a handwritten digit seven", "a handwritten digit four"]
    with everything_printed() as printed:
        out, result = hub_bench(run, "s25u", prompts=prompts, iterations=5, **FAST)
    validate("result", json.loads((out / "result.json").read_text()))
    assert result["device"] == {"manufacturer": "samsung", "model": "Samsung Galaxy S25 Ultra", "soc": "SM8750",
                                "android_sdk": 35, "runtime": "htp", "qnn_version": qnn_versions()["qnn_build"],
                                "onnxruntime_version": None}
    info = json.loads((out / "hub.json").read_text())
    assert sorted(info["jobs"]) == sorted(f"{k} {c}" for k in ("profile", "inference") for c in COMPONENTS)
    profiles = {c: hub.jobs[info["jobs"][f"profile {c}"]["job_id"]].profile for c in COMPONENTS}
    for name, detail in profiles.items():
        stats = result["timings_ms"]["components"][name]
        times = sorted(t / 1000.0 for t in detail.all_execution_times)
        assert stats["n"] == 5 and stats["min"] == times[0] and stats["max"] == times[-1]
        units = json.loads((out / f"profile_{name}.json").read_text())["compute_units"]
        source = onnx.load(str(run / "export" / f"{name}.onnx"), load_external_data=False)
        assert units["NPU"] == sum(n.op_type not in ("QuantizeLinear", "DequantizeLinear") for n in source.graph.node)
        assert units["CPU"] >= 1  # the boundary dequantization ONNX Runtime keeps
    assert result["timings_ms"]["init"] == pytest.approx(sum(p.cold_load_time for p in profiles.values()) / 1000)
    assert result["memory_mb"]["peak_rss"] == max(p.execution_memory.peak.upper for p in profiles.values()) / 2**20
    # inference on exactly what the host pipeline fed each component: 2 encoder calls and `steps` transformer
    # calls per prompt, one decoder call per image; the phone's outputs match the host's
    steps = result["config"]["steps"]
    sent = {}
    for c in COMPONENTS:
        with h5py.File(hub.datasets[hub.jobs[info["jobs"][f"inference {c}"]["job_id"]].dataset_id].blob) as h5:
            sent[c] = len(next(iter(h5_to_dataset_entries(h5).values())))
    assert sent == {"text_encoder": 4, "transformer": 2 * steps, "vae_decoder": 2}
    assert {c: next(iter(info["parity"][c].values()))["samples"] for c in COMPONENTS} == sent
    assert all(p["passed"] for per in info["parity"].values() for p in per.values()), info["parity"]
    assert result["errors"] == [] and result["config"]["resolution"] == [32, 32]
    assert [o["image"] for o in result["outputs"]] == ["images/0.png", "images/1.png"]
    assert all((out / o["image"]).stat().st_size > 100 for o in result["outputs"])
    assert stage(run, "bench/hub-s25u")["status"] == "done"
    assert "/api/v1/datasets/" in printed.getvalue()
    assert_no_token(hub.token, run, printed.getvalue())


def test_no_credentials_is_one_line_naming_the_fix(run, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for ini in (str(tmp_path / "missing.ini"), None):
        if ini:
            monkeypatch.setenv("QAIHUB_CLIENT_INI", ini)
        else:
            monkeypatch.delenv("QAIHUB_CLIENT_INI")
        with pytest.raises(ConfigError) as caught:
            hub_compile_run(run, "s25u", **FAST)
        text = caught.value.one_line()
        assert "\n" not in text and "qai-hub configure" in text and "QAIHUB_CLIENT_INI" in text
        assert (ini or str(tmp_path / "home" / ".qai_hub" / "client.ini")) in text
    (tmp_path / "empty.ini").write_text("[api]\napi_url = http://127.0.0.1:9\n")
    monkeypatch.setenv("QAIHUB_CLIENT_INI", str(tmp_path / "empty.ini"))
    with pytest.raises(ConfigError, match="not a usable AI Hub client.ini"):
        hub_bench(run, "s25u", prompts=["a handwritten digit one"], **FAST)


def test_a_bad_token_is_rejected_without_showing_it(hub, run, tmp_path, monkeypatch):
    wrong = "wrong-token-0123456789"
    monkeypatch.setenv("QAIHUB_CLIENT_INI", str(hub.write_client_ini(tmp_path / "client.ini", token=wrong)))
    with pytest.raises(ConfigError) as caught, everything_printed() as printed:
        hub_compile_run(run, "s25u", force=True, **FAST)
    text = caught.value.one_line()
    assert "rejected the API token" in text and "qai-hub configure" in text and "\n" not in text
    assert hub.requests[-1] == ("GET", "/api/v1/users/auth/user/")
    assert_no_token(wrong, run, text, printed.getvalue())


def test_an_unknown_device_lists_close_matches_from_the_service(hub, run):
    hub.devices[:] = [d for d in DEFAULT_DEVICES if d[0] != "Samsung Galaxy S25 Ultra"]
    with pytest.raises(ConfigError) as caught:
        hub_compile_run(run, "s25u", force=True, **FAST)
    assert "no device named 'Samsung Galaxy S25 Ultra'" in caught.value.message
    assert "Samsung Galaxy S25 (Family)" in caught.value.message and "--hub-device" in caught.value.fix


def test_a_failed_job_names_its_message_and_url(hub, run, compiled):
    hub.fail["compile transformer"] = "Compilation failed: Op 'Gelu' is not supported on this device."
    with pytest.raises(DeviceError) as caught:
        hub_compile_run(run, "s25u", force=True, **FAST)
    job = next(j for j in hub.jobs.values() if j.name == "compile transformer" and j.failure)
    assert caught.value.message == (f"AI Hub compile transformer job {job.id} failed: Compilation failed: Op 'Gelu' "
                                    f"is not supported on this device. ({hub.url}/web/jobs/{job.id}/)")
    entry = stage(run, "compile/s25u")
    assert entry["status"] == "failed" and job.id in entry["reason"]
    assert entry["jobs"]["transformer"]["compile_job_id"] == job.id


def test_a_timeout_names_the_jobs_and_resume_job_takes_them_over(hub, run, compiled):
    hub.stall.add("compile ")  # the service takes the jobs and never finishes them
    with pytest.raises(DeviceError) as caught:
        hub_compile_run(run, "s25u", force=True, poll_s=0.05, timeout_s=1.0)
    submitted = stage(run, "compile/s25u")["jobs"]
    ids = [submitted[c]["compile_job_id"] for c in COMPONENTS]
    assert caught.value.message == "AI Hub jobs still unfinished after 1 s: " + ", ".join(
        f"{i} (compile {c}, OPTIMIZING_MODEL)" for i, c in zip(ids, COMPONENTS, strict=True))
    assert caught.value.fix == (f"resume waiting with `fraqat-deploy compile digits --run {run} --backend hub "
                                f"--device s25u --resume-job {ids[0]} --resume-job {ids[1]} --resume-job {ids[2]}` "
                                "(or raise --timeout)")
    assert stage(run, "compile/s25u")["status"] == "failed"
    hub.release()
    jobs = hub.counts["jobs_compile"]
    resumed = hub_compile_run(run, "s25u", resume_job=ids, **FAST)
    assert hub.counts["jobs_compile"] == jobs
    assert [resumed["jobs"][c]["compile_job_id"] for c in COMPONENTS] == ids
    with pytest.raises(ConfigError, match="--resume-job jnope00dbl: ID 'jnope00dbl' could not be found"):
        hub_compile_run(run, "s25u", resume_job="jnope00dbl", **FAST)


def test_bench_timeout_resume_and_a_failed_inference_job(hub, run, compiled):
    one = {"prompts": ["a handwritten digit one"], "iterations": 2}
    hub.stall.add("inference ")
    with pytest.raises(DeviceError) as caught:
        hub_bench(run, "s25u", **one, poll_s=0.05, timeout_s=1.0)
    ids = [ref["job_id"] for ref in stage(run, "bench/hub-s25u")["jobs"].values()]
    assert len(ids) == 6 and all(f"--resume-job {i}" in caught.value.fix for i in ids)
    assert "(inference transformer, RUNNING_INFERENCE)" in caught.value.message
    hub.release()
    submitted = (hub.counts["jobs_profile"], hub.counts["jobs_inference"])
    with pytest.raises(ConfigError, match="ran text_encoder on other inputs"):
        hub_bench(run, "s25u", prompts=["a handwritten digit two"], iterations=2, resume_job=ids, **FAST)
    out, result = hub_bench(run, "s25u", **one, resume_job=ids, **FAST)
    assert (hub.counts["jobs_profile"], hub.counts["jobs_inference"]) == submitted
    assert result["timings_ms"]["components"]["transformer"]["n"] == 2 and (out / "images" / "0.png").is_file()
    hub.fail["inference vae_decoder"] = "Inference failed: the device ran out of memory."
    with pytest.raises(DeviceError) as caught:
        hub_bench(run, "s25u", **one, **FAST)
    job = next(j for j in hub.jobs.values() if j.name.startswith("inference vae_decoder") and j.failure)
    assert caught.value.message == (f"AI Hub inference vae_decoder job {job.id} failed: Inference failed: the device "
                                    f"ran out of memory. ({hub.url}/web/jobs/{job.id}/)")
    assert stage(run, "bench/hub-s25u")["status"] == "failed"


def test_bench_needs_a_hub_compile_for_its_target(hub, run):
    with pytest.raises(InputError) as caught:
        hub_bench(run, "s24u", prompts=["a handwritten digit one"], **FAST)
    assert caught.value.message.endswith("compile/s24u/compile.json has no AI Hub compile of text_encoder, "
                                         "transformer, vae_decoder")
    assert caught.value.fix == f"compile on AI Hub first: fraqat-deploy compile digits --run {run} --backend hub " \
                               "--device s24u"


def test_cli_acceptance_commands(hub, run, compiled, tmp_path, monkeypatch):
    """The issue's two commands through the CLI: without credentials one line naming the fix; with them (the
    double) a bench with the model's default prompt."""
    from typer.testing import CliRunner

    from fraqat_deploy.cli import app

    cli = CliRunner()
    result = cli.invoke(app, ["bench", "digits", "--run", str(run), "--backend", "hub", "--device", "s25u",
                              "--runs", "1", "--timeout", "120"])
    assert result.exit_code == 0, result.output
    assert "hub-s25u" in result.output and "result.json" in result.output
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("QAIHUB_CLIENT_INI", str(tmp_path / "missing.ini"))
    failed = cli.invoke(app, ["compile", "digits", "--run", str(run), "--backend", "hub", "--device", "s25u"])
    assert failed.exit_code != 0 and "qai-hub configure" in failed.output
    assert len(failed.output.strip().splitlines()) == 1


@pytest.mark.parametrize("embedding", ["graph", "host"])
def test_tiny_gemma_compiles_profiles_and_generates_on_the_hub(hub, embedding, request, tmp_path):
    """Gemma's two graphs on AI Hub: the host keeps the KV cache and replays every prefill/decode call of its greedy
    loop as one inference job per graph; the phone's outputs for those calls are checked against the host's. With
    --embedding host the host also looks the token rows up in export/embedding.npy: the jobs get inputs_embeds."""
    import shutil

    exported = request.getfixturevalue("exported_tiny_gemma" if embedding == "graph" else "exported_tiny_gemma_host")
    run = tmp_path / "g1"
    shutil.copytree(exported, run, ignore=shutil.ignore_patterns("compile", "bench"))
    compiled = hub_compile_run(run, "s25u", **FAST)
    assert sorted(compiled["uploaded"]) == ["decode", "prefill"]
    records = json.loads((run / "compile" / "s25u" / "compile.json").read_text())["components"]
    assert {name: r["backend"] for name, r in records.items()} == {"prefill": "hub", "decode": "hub"}

    new_tokens = 3
    out, result = hub_bench(run, "s25u", prompts=["def main("], max_new_tokens=new_tokens, iterations=3, **FAST)
    validate("result", json.loads((out / "result.json").read_text()))
    (output,) = result["outputs"]
    assert output["text"].startswith("def main(") and 1 <= len(output["tokens"]) <= new_tokens
    info = json.loads((out / "hub.json").read_text())
    assert sorted(info["jobs"]) == sorted(f"{k} {c}" for k in ("profile", "inference") for c in ("prefill", "decode"))
    sent = {}
    for c in ("prefill", "decode"):
        with h5py.File(hub.datasets[hub.jobs[info["jobs"][f"inference {c}"]["job_id"]].dataset_id].blob) as h5:
            entries = h5_to_dataset_entries(h5)
            sent[c] = len(next(iter(entries.values())))
            token_input = "inputs_embeds" if embedding == "host" else "input_ids"
            assert token_input in entries and {"input_ids", "inputs_embeds"} - {token_input} - set(entries), c
    assert sent == {"prefill": 1, "decode": len(output["tokens"]) - 1}
    assert all(p["passed"] for per in info["parity"].values() for p in per.values()), info["parity"]
    assert {name: stats["n"] for name, stats in result["timings_ms"]["components"].items()} == {"prefill": 3,
                                                                                               "decode": 3}


def test_a_component_with_external_data_is_uploaded_as_a_directory(hub, run, tmp_path, monkeypatch):
    """A model over 2 GB reaches AI Hub as a folder holding the .onnx and its .data (the limit lowered here)."""
    import shutil

    from fraqat_deploy import onnx_io

    big = tmp_path / "big"
    shutil.copytree(run, big, ignore=shutil.ignore_patterns("export", "compile", "bench"))
    monkeypatch.setattr(onnx_io, "EXTERNAL_DATA_BYTES", 1)
    export_run(big, "digits", components=["vae_decoder"])
    assert (big / "export" / "vae_decoder.onnx.data").is_file()
    before = hub.counts["model_uploads"]
    result = hub_compile_run(big, "s25u", components=["vae_decoder"], **FAST)
    assert result["uploaded"] == ["vae_decoder"] and hub.counts["model_uploads"] == before + 1
    record = json.loads((big / "compile" / "s25u" / "compile.json").read_text())["components"]["vae_decoder"]
    source = hub.models[hub.jobs[record["hub"]["compile_job_id"]].model_id]
    assert source.is_directory
    with zipfile.ZipFile(source.blob) as archive:
        assert sorted(Path(n).name for n in archive.namelist() if not n.endswith("/")) == [
            "vae_decoder.onnx", "vae_decoder.onnx.data"]
    parity = htp_parity(big / "compile" / "s25u" / "vae_decoder_ctx.onnx", big / "export" / "vae_decoder.onnx",
                        load_inputs(big / "export" / "vae_decoder.inputs.npz"), target="s25u")
    assert parity["passed"], parity
