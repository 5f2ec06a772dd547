"""bench over adb, against the virtual phone (tests/virtual_phone): the real adb server from the adbutils wheel,
a device-side daemon answering as an SM-S938B, and the app's own Kotlin engine (android_app/core, in a JVM) started
by ``am start`` on the phone's sandboxed files (tests/virtual_phone/kotlin_app.py). What is real here: adb,
adbutils, the protocol code, the device scripts (run by the double's shell), the app's engine code, ONNX Runtime's
Java API with the QNN EP, the HTP simulator. What is not: the phone, its HTP and the Activity shell."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner
from virtual_phone.kotlin_app import KotlinUnavailable, kotlin_app

from fraqat_deploy.cli import app
from fraqat_deploy.device.protocol import PACKAGE, validate

runner = CliRunner()
HOSTILE = '"; rm -rf /sdcard; echo "'
PROMPT = "a handwritten digit four"


def benchmark_app():
    """The app: BenchmarkActivity's engine, the Kotlin one (compiled once per session), in the phone's sandbox."""
    try:
        return kotlin_app()
    except KotlinUnavailable as e:
        if shutil.which("java") is None:
            pytest.skip(str(e))
        raise


def crashing_app(proc, extras: dict[str, str]) -> None:
    proc.log("loading the model")
    raise RuntimeError("java.lang.OutOfMemoryError: Failed to allocate a 1048576 byte allocation")


@pytest.fixture
def phone(virtual_phone):
    return virtual_phone(apps={}, thermal_status=0)


def install(phone, app=None) -> None:
    phone.install_app(PACKAGE, "0.1.0", 1, app=app or benchmark_app())


def bench(run: Path, *extra: str, prompt: str = PROMPT):
    return runner.invoke(app, ["bench", "digits", "--run", str(run), "--device", "s25u", "--runs", "1",
                               "--warmup", "0", "--prompt", prompt, "--timeout", "120", *extra])


def last_result(run: Path, label: str = "s25u") -> tuple[Path, dict]:
    stage = json.loads((run / "run.json").read_text())["stages"][f"bench/{label}"]
    out = run / "bench" / label / stage["id"]
    return out, json.loads((out / "result.json").read_text()) if (out / "result.json").is_file() else {}


def test_devices_lists_the_phone(phone):
    install(phone)
    result = runner.invoke(app, ["devices"])
    assert result.exit_code == 0, result.output
    assert phone.serial in result.output and "SM-S938B" in result.output and "SM8750" in result.output
    assert "s25u" in result.output and "0.1.0" in result.output


def test_full_bench_over_adb(phone, compiled_digits: Path):
    install(phone)
    result = bench(compiled_digits)
    assert result.exit_code == 0, result.output
    assert "HTP (simulated)" in result.output  # the app's engine ran on the host HTP simulator, and says so
    out, data = last_result(compiled_digits)
    validate("result", data)
    assert data["status"] == "ok" and data["device"]["model"] == "SM-S938B"
    assert data["device"]["runtime"] == "htp-simulator"
    assert data["timings_ms"]["components"]["transformer"]["n"] == data["config"]["steps"]
    assert (out / "images" / "0.png").is_file() and (out / "logcat.txt").is_file()
    assert "benchmark request" in (out / "logcat.txt").read_text()
    assert data["thermal"] == {"before": 0, "after": 0, "source": "host"}  # no PowerManager off the phone
    assert data["memory_mb"]["peak_pss"] > 30  # dumpsys meminfo of the app: the engine JVM's resident memory
    # the compiled model sits in the app's files folder, content-addressed
    files = phone.host_path(f"/sdcard/Android/data/{PACKAGE}/files/models")
    assert sorted(p.name for p in files.rglob("*_ctx.onnx")) == ["text_encoder_ctx.onnx", "transformer_ctx.onnx",
                                                                  "vae_decoder_ctx.onnx"]
    # a second bench reuses every model file already on the phone
    again = bench(compiled_digits)
    assert again.exit_code == 0, again.output
    stage = json.loads((compiled_digits / "run.json").read_text())["stages"]["bench/s25u"]
    assert stage["skipped"] == 6


def test_hostile_prompt_is_just_a_prompt(phone, compiled_digits: Path):
    install(phone)
    marker = phone.host_path("/sdcard/keep.txt")
    marker.write_text("still here")
    result = bench(compiled_digits, prompt=HOSTILE)
    assert result.exit_code == 0, result.output
    _, data = last_result(compiled_digits)
    assert data["outputs"][0]["prompt"] == HOSTILE
    assert marker.read_text() == "still here"
    assert "rm -rf /sdcard" not in repr(phone.history)  # the prompt travels in request.json, never in a command


def test_no_phone_is_a_one_line_error(adb_server, compiled_digits: Path):
    result = bench(compiled_digits)
    assert result.exit_code != 0
    assert "no phone connected" in result.output and "USB debugging" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_unauthorized_phone(virtual_phone, compiled_digits: Path):
    virtual_phone(authorized=False)
    result = bench(compiled_digits)
    assert result.exit_code != 0 and "unauthorized" in result.output and "Allow USB debugging" in result.output


def test_two_phones_need_a_serial(virtual_phone, compiled_digits: Path):
    first, second = virtual_phone(), virtual_phone()
    result = bench(compiled_digits)
    assert result.exit_code != 0 and first.serial in result.output and second.serial in result.output
    assert "--device <serial>" in result.output
    install(second)
    chosen = runner.invoke(app, ["bench", "digits", "--run", str(compiled_digits), "--device", second.serial,
                                 "--runs", "1", "--warmup", "0", "--prompt", PROMPT])
    assert chosen.exit_code == 0, chosen.output


def test_app_not_installed(phone, compiled_digits: Path):
    result = bench(compiled_digits)
    assert result.exit_code != 0 and "not installed" in result.output and "--apk" in result.output


def test_app_crash_pulls_logcat(phone, compiled_digits: Path, monkeypatch: pytest.MonkeyPatch):
    import fraqat_deploy.bench as bench_module

    # the crash is read from logcat's crash buffer, not waited out: without that this would end in the timeout
    monkeypatch.setattr(bench_module, "NEVER_STARTED_S", 10_000.0)
    install(phone, crashing_app)
    result = bench(compiled_digits)
    assert result.exit_code != 0 and "stopped without a result" in result.output
    out, _ = last_result(compiled_digits)
    log = (out / "logcat.txt").read_text()
    assert "FATAL EXCEPTION" in log and "OutOfMemoryError" in log
    assert json.loads((compiled_digits / "run.json").read_text())["stages"]["bench/s25u"]["status"] == "failed"


def test_storage_full(virtual_phone, compiled_digits: Path):
    full = virtual_phone(free_bytes=100_000)
    install(full)
    result = bench(compiled_digits)
    assert result.exit_code != 0 and "storage is full" in result.output and "free storage" in result.output


def test_connection_drop_mid_push_then_resume(virtual_phone, compiled_digits: Path):
    flaky = virtual_phone(drop_after_push_bytes=400_000)
    install(flaky)
    first = bench(compiled_digits)
    assert first.exit_code != 0 and ("connection" in first.output or "push" in first.output), first.output
    flaky.adb.wait_state(flaky.serial, "device")
    second = bench(compiled_digits)
    assert second.exit_code == 0, second.output
    stage = json.loads((compiled_digits / "run.json").read_text())["stages"]["bench/s25u"]
    assert stage["skipped"] >= 1  # what the first attempt pushed completely was not pushed again


def test_connection_drop_during_the_run(phone, compiled_digits: Path):
    def slow_app(proc, extras):
        proc.log("starting")
        proc.phone.disconnect(stay_offline=True)
        proc.wait(5)

    install(phone, slow_app)
    result = bench(compiled_digits)
    assert result.exit_code != 0
    assert "lost the connection" in result.output or "stopped without a result" in result.output
    assert "re-run" in result.output


def _apk(tmp_path: Path, version: str) -> Path:
    """An APK the virtual phone can install (its manifest in plain text; a real one is binary XML)."""
    import zipfile

    apk = tmp_path / f"app-{version}.apk"
    with zipfile.ZipFile(apk, "w") as archive:
        archive.writestr("AndroidManifest.xml", f'<manifest package="{PACKAGE}" android:versionCode="2" '
                                                f'android:versionName="{version}"/>')
        archive.writestr("classes.dex", b"dex\n035\0")
    return apk


def test_app_install_and_bench_with_apk(phone, compiled_digits: Path, tmp_path: Path):
    phone.register_app(PACKAGE, benchmark_app())  # the code behind the package once it is installed
    installed = runner.invoke(app, ["app", "install", "--apk", str(_apk(tmp_path, "0.2.0")), "--device", "s25u"])
    assert installed.exit_code == 0 and "0.2.0" in installed.output, installed.output
    result = bench(compiled_digits, "--apk", str(_apk(tmp_path, "0.3.0")))
    assert result.exit_code == 0, result.output
    assert [p for p, _ in phone.installed_apks] == [PACKAGE, PACKAGE]
    missing = bench(compiled_digits, "--apk", str(tmp_path / "nope.apk"))
    assert missing.exit_code != 0 and "no APK" in missing.output and "assembleDebug" in missing.output


def test_cooldown_waits_for_thermal_status_0(virtual_phone, compiled_digits: Path, monkeypatch):
    import threading

    import fraqat_deploy.bench as bench_module

    monkeypatch.setattr(bench_module, "COOLDOWN_POLL_S", 0.2)
    hot = virtual_phone(thermal_status=3)
    install(hot)
    threading.Timer(1.0, lambda: setattr(hot, "thermal_status", 0)).start()
    result = bench(compiled_digits, "--cooldown")
    assert result.exit_code == 0, result.output
    _, data = last_result(compiled_digits)
    assert data["thermal"]["before"] == 0
