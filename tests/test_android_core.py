"""The Android app's plain-Kotlin core (android_app/core), compiled with kotlinc from the npm registry and tested with
JUnit on the JVM against the same golden files as the Python side; then the files the Kotlin engine wrote are checked
here with the Python protocol code, so the two sides cannot disagree on the protocol or the sampler's numbers.

The core is compiled against org.json from Maven Central; every test runs twice, once on that org.json and once on
Android's own (android-all's classes), the one the phone links the core against."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fraqat_deploy.device import pipeline as pipe
from fraqat_deploy.device.protocol import example, validate

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "android_app" / "core" / "build-and-test.sh"

pytestmark = pytest.mark.skipif(shutil.which("java") is None, reason="no JDK: the Kotlin core needs `java` (JDK 17+)")


@pytest.fixture(scope="module", params=[[], ["--android-org-json"]], ids=["maven-org-json", "android-org-json"])
def kotlin_run(request, tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("kotlin-core")
    proc = subprocess.run(["bash", str(SCRIPT), "--out", str(out), *request.param], capture_output=True, text=True,
                          timeout=1200)
    return proc, out


def test_kotlin_core_compiles_and_its_tests_pass(kotlin_run):
    proc, _ = kotlin_run
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    # JUnit console launcher: a tree with one "<name> [OK]" line per test, then its counts
    counts = {word: int(n) for n, word in re.findall(r"^\[\s*(\d+) tests (successful|failed)\s*\]$", proc.stdout, re.M)}
    assert counts.get("failed") == 0 and counts.get("successful", 0) >= 25, proc.stdout[-3000:]
    for name in ("golden request.json follows", "round-trip through the typed result", "reproduces stats.json",
                 "flow sigmas reproduce", "timestep features reproduce", "torch.randn", "caption tokenizer reproduces",
                 "toy generation", "end to end into a valid result", "reproduces gemma.json"):
        assert any(name in line and line.endswith(" [OK]") for line in proc.stdout.splitlines()), name


def test_results_the_kotlin_engine_writes_follow_the_python_schema(kotlin_run):
    proc, out = kotlin_run
    assert proc.returncode == 0, proc.stdout[-3000:]
    expected = {"ok": None, "model_missing": "model_missing", "model_changed": "model_missing",
                "invalid_request": "invalid_request", "not_json": "invalid_request", "short_tensor": "invalid_request",
                "htp_unavailable": "htp_unavailable", "htp_error": "htp_error", "out_of_memory": "out_of_memory",
                "internal": "internal", "gemma": None}
    for name, kind in expected.items():
        result = json.loads((out / f"result_{name}.json").read_text())
        validate("result", result)
        assert result["status"] == ("ok" if kind is None else "error"), name
        assert (result["error"] or {}).get("kind") == kind, name
    validate("status", json.loads((out / "status_done.json").read_text()))
    gemma = json.loads((out / "result_gemma.json").read_text())
    assert gemma["outputs"][0]["tokens"] == example("gemma")["cases"][0]["tokens"]

    ok = json.loads((out / "result_ok.json").read_text())
    steps = example("pipeline")["pipeline"]["steps"]
    components = ok["timings_ms"]["components"]
    assert {k: v["n"] for k, v in components.items()} == {"text_encoder": 4, "transformer": 2 * steps,
                                                          "vae_decoder": 2}
    assert ok["device"]["runtime"] == "htp" and ok["config"]["resolution"] == [2, 2]


def test_the_kotlin_image_is_what_python_saves_for_the_same_generation(kotlin_run, tmp_path):
    proc, out = kotlin_run
    assert proc.returncode == 0, proc.stdout[-3000:]
    golden = example("pipeline")
    image = np.array(golden["image"], np.float32).reshape(golden["image_shape"])
    pipe.image_to_png(image, tmp_path / "python.png")
    ours = np.asarray(Image.open(tmp_path / "python.png"))
    theirs = np.asarray(Image.open(out / "toy.png"))
    assert theirs.shape == ours.shape and theirs.dtype == np.uint8
    np.testing.assert_array_equal(theirs, ours)
