"""The Android layer (android_app/app): its build files, the version matrix the CLI shares with it, and a compile of
its sources with -Werror against the real Android API 35 classes (Robolectric's android-all) and ONNX Runtime's Java
API from Maven Central, plus its JVM-testable logic (RunGuard, StartFailure, DmaBuf). A misspelled Android or ORT
call must fail that compile: checked by compiling a copy with one of each."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from fraqat_deploy.bench import merge_thermal
from fraqat_deploy.device.app_versions import app_runtime, qnn_mismatch, tomllib
from fraqat_deploy.device.protocol import validate

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "android_app"
MATRIX = ROOT / "fraqat_deploy" / "device" / "app_versions.toml"
SCRIPT = APP / "app" / "compile-check.sh"
SOURCES = APP / "app" / "src" / "main" / "java" / "dev" / "fraqat" / "deploy"
CORE = APP / "core" / "src" / "main" / "kotlin" / "dev" / "fraqat" / "deploy" / "core"


def _accessor(alias: str) -> str:
    # Gradle turns '-', '_' and '.' in catalog aliases into accessor path segments
    return re.sub(r"[-_.]", ".", alias)


def test_catalog_aliases_are_flat_and_the_build_uses_existing_accessors():
    catalog = tomllib.loads(MATRIX.read_text())
    for table in ("versions", "libraries", "plugins"):
        paths = [_accessor(a) for a in catalog[table]]
        # an alias that is also the prefix of another becomes a group class, not a Provider (the onnxruntime clash)
        clashes = [(a, b) for a in paths for b in paths if b.startswith(a + ".")]
        assert not clashes, f"[{table}] {clashes}"
    assert not (APP / "gradle" / "libs.versions.toml").exists(), "two catalogs named libs: Gradle refuses the build"
    assert 'from(files("../fraqat_deploy/device/app_versions.toml"))' in (APP / "settings.gradle.kts").read_text()
    versions = {_accessor(a) for a in catalog["versions"]}
    plugins = {_accessor(a) for a in catalog["plugins"]}
    libraries = {_accessor(a) for a in catalog["libraries"]}
    for script in APP.rglob("*.gradle.kts"):
        text = script.read_text()
        for used in re.findall(r"libs\.versions\.([A-Za-z0-9.]+?)(?:\.get\(\)|\))", text):
            assert used in versions, f"{script.name}: libs.versions.{used} is not in the catalog"
        for used in re.findall(r"libs\.plugins\.([A-Za-z0-9.]+)\)", text):
            assert used in plugins, f"{script.name}: libs.plugins.{used} is not in the catalog"
        for used in re.findall(r"\(libs\.(?!versions\.|plugins\.)([A-Za-z0-9.]+)\)", text):
            assert used in libraries, f"{script.name}: libs.{used} is not in the catalog"
    # one Kotlin compiler and one desktop ONNX Runtime Java version for the app's compile check and the core's tests
    core_script = (APP / "core" / "build-and-test.sh").read_text()
    for variable, entry in (("KOTLIN_VERSION", "kotlin"), ("ORT_JAVA_VERSION", "onnxruntime-jvm")):
        assigned = re.search(rf"^{variable}=(.+)$", core_script, re.M)
        assert assigned and assigned.group(1) == f'"$(matrix_version {entry})"', (variable, entry)


def test_the_cli_reads_the_matrix_and_warns_on_a_qnn_mismatch():
    runtime = app_runtime()
    catalog = tomllib.loads(MATRIX.read_text())["versions"]
    assert runtime == {"onnxruntime_android": catalog["onnxruntime-android"], "onnxruntime_qnn": catalog["qnn-ep"],
                       "qnn_runtime": catalog["qnn-runtime"], "qairt": catalog["qairt"]}
    # the app pins the ONNX Runtime / QNN EP releases the CLI is pinned to (pyproject's tested ranges)
    from packaging.requirements import Requirement

    deps = {(r := Requirement(d)).name: r for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
            ["dependencies"]}
    assert deps["onnxruntime"].specifier.contains(runtime["onnxruntime_android"])
    assert deps["onnxruntime-qnn"].specifier.contains(runtime["onnxruntime_qnn"])
    pinned = runtime["qnn_runtime"]
    assert qnn_mismatch({"qnn_sdk": pinned, "qnn_build": f"{pinned}.260929181845"}) is None
    assert qnn_mismatch({"qnn_sdk": None, "qnn_build": None}) is None  # unknown: nothing to compare
    warning = qnn_mismatch({"qnn_sdk": "2.49.0"})
    assert warning and "2.49.0" in warning and pinned in warning and "-PqnnRuntimeVersion=2.49.0" in warning
    # a hub compile records the QAIRT it used as qnn_build
    assert qnn_mismatch({"qnn_build": "2.49.0", "qairt": "2.49.0"}) == warning


def test_compile_and_bench_warn_when_compile_json_has_another_qnn(tmp_path: Path):
    from fraqat_deploy import cli

    folder = tmp_path / "compile" / "s25u"
    folder.mkdir(parents=True)
    records = {"transformer": {"versions": {"qnn_sdk": "2.49.0", "qnn_build": "2.49.0.250101000000"}},
               "vae_decoder": {"versions": {"qnn_sdk": "2.49.0"}}}
    (folder / "compile.json").write_text(json.dumps({"components": records}))
    with cli.out.capture() as captured:
        cli._warn_app_runtime(cli._compile_records(tmp_path, "s25u"))
    text = captured.get()
    assert text.count("warning:") == 1 and "compiled with QNN 2.49.0" in text  # once, not per component
    (folder / "compile.json").write_text("{damaged")
    with cli.out.capture() as captured:
        cli._warn_app_runtime(cli._compile_records(tmp_path, "s25u"))
    assert captured.get() == ""


def test_compile_json_records_the_app_runtime(compiled_digits: Path):
    data = json.loads(next(compiled_digits.rglob("compile.json")).read_text())
    for record in data["components"].values():
        assert record["app_runtime"] == app_runtime()


def test_the_host_never_overwrites_the_apps_thermal_readings():
    assert merge_thermal({"before": 1, "after": 2}, 0, 0) == {"before": 1, "after": 2, "source": "app"}
    assert merge_thermal({"before": None, "after": None}, 0, 3) == {"before": 0, "after": 3, "source": "host"}
    assert merge_thermal({"before": 2, "after": None}, 0, 3) == {"before": 2, "after": 3, "source": "app+host"}
    assert merge_thermal({"before": None, "after": None}, None, None) == {"before": None, "after": None}


# ---------------------------------------------------------------- the compile check (kotlinc, Maven Central jars)

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="no JDK: the compile check needs `java` (17+)")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("app-compile")
    proc = subprocess.run(["bash", str(SCRIPT), "--out", str(out), "--test"], capture_output=True, text=True,
                          timeout=1800)
    return proc, out


@needs_java
@pytest.mark.slow
def test_the_android_layer_compiles_against_android_35_and_onnxruntime(compiled):
    proc, out = compiled
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    assert "against android-all" in proc.stdout and "(API 35)" in proc.stdout
    assert (out / "classes" / "dev" / "fraqat" / "deploy" / "HtpBackend.class").is_file()
    assert (out / "classes" / "dev" / "fraqat" / "deploy" / "BenchmarkActivity.class").is_file()
    # JUnit's console launcher closes with its counts
    assert re.search(r"^\[\s*5 tests successful\s*\]$", proc.stdout, re.M), proc.stdout[-3000:]
    assert re.search(r"^\[\s*0 tests failed\s*\]$", proc.stdout, re.M), proc.stdout[-3000:]
    # the result the app writes when its native library does not load follows the Python side's schema too
    result = json.loads((out / "test-out" / "runs" / "nolib" / "result.json").read_text())
    validate("result", result)
    assert result["status"] == "error" and result["error"]["kind"] == "htp_unavailable"


@needs_java
@pytest.mark.slow
def test_a_misspelled_android_or_onnxruntime_call_fails_the_compile(compiled, tmp_path):
    proc, out = compiled
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    broken = tmp_path / "src"
    broken.mkdir()
    mutations = {  # file -> (correct call, misspelled call): one Android API, one ONNX Runtime API
        SOURCES / "AndroidProbe.kt": ("Debug.getNativeHeapAllocatedSize()", "Debug.getNativeHeapAllocatedSise()"),
        # the app's ONNX Runtime code lives in the core's OrtBackend (HtpBackend delegates to it)
        CORE / "OrtBackend.kt": ("env.registerExecutionProviderLibrary(", "env.registerExecutionProviderLibary("),
        # and an org.json call that Maven Central's org.json has and Android's older one does not
        CORE / "Json.kt": ("tokener.nextClean() != '\\u0000'", "!tokener.end()"),
    }
    for source, (good, bad) in mutations.items():
        text = source.read_text()
        assert good in text, f"{source.name} no longer calls {good}: update this test"
        (broken / source.name).write_text(text.replace(good, bad))
    # the two changed files only, against the classes of the good compile (a full compile takes minutes)
    bad_run = subprocess.run(["bash", str(SCRIPT), "--out", str(tmp_path / "out"), "--app-src", str(broken),
                              "--against", str(out / "classes")], capture_output=True, text=True, timeout=900)
    log = bad_run.stdout + bad_run.stderr
    assert bad_run.returncode == 1, log[-3000:]
    assert "compile check FAILED" in log
    for source, (_, bad) in mutations.items():
        member = re.search(r"\.(\w+)\(", bad).group(1)
        assert re.search(rf"{source.name}:\d+:\d+: error: unresolved reference '{member}'", log), (source, log[-3000:])
