"""report: one self-contained report.html per run, checked in headless Chromium (Debian's ``chromium``) through the
DevTools protocol: no console error, every image decoded, a screenshot taken. A report with a deliberately broken
image, or with an external URL, must fail the same check."""

from __future__ import annotations

import json
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_compare import SIM_PROMPTS, add_device, digits_runs

from fraqat_deploy.errors import InputError
from fraqat_deploy.quality.compare import compare_run
from fraqat_deploy.quality.images import load_png
from fraqat_deploy.report import write_report
from fraqat_deploy.report.browser import check_page, find_browser
from fraqat_deploy.report.svg import Band, Series, bar_chart, line_chart, nice_ticks
from fraqat_deploy.runs import RunDir

needs_chromium = pytest.mark.skipif(find_browser() is None,
                                    reason="no chromium binary on PATH (apt-get install -y chromium)")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def reported(tmp_path_factory) -> tuple[Path, dict]:
    """A copy of the shared digits run with a phone beside the simulator, compared against its PTQ baseline."""
    run, ptq = digits_runs(tmp_path_factory)
    copy = tmp_path_factory.mktemp("report") / "fraqat"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns(".device", "compare", "report.html"))
    sim_id = RunDir(copy).manifest()["stages"]["bench/sim"]["id"]
    images = {f"images/{i}.png": load_png(copy / "bench" / "sim" / sim_id / "images" / f"{i}.png") for i in (0, 1)}
    outputs = [{"prompt": p, "seed": 0, "image": f"images/{i}.png"} for i, p in enumerate(SIM_PROMPTS)]
    add_device(copy, "s25u", "20260102-000000-000", outputs, images)
    # AI Hub as bench/hub.py leaves it: per-component profile times only, where things ran in hub.json
    hub = add_device(copy, "hub-s25u", "20260103-000000-000", outputs, images, model="Samsung Galaxy S25 Ultra")
    result = json.loads((hub / "result.json").read_text())
    result["timings_ms"] |= {"end_to_end": None, "first_inference": None}
    (hub / "result.json").write_text(json.dumps(result))
    (hub / "hub.json").write_text(json.dumps({"where": "images: the phone's VAE decoder on the host latents"}))
    metrics = compare_run(copy, [ptq], prompts=SIM_PROMPTS)
    return copy, metrics


def test_the_report_holds_every_part(reported):
    run, metrics = reported
    path = write_report(run)
    assert path == run / "report.html"
    html = path.read_text()
    for anchor in ("overview", "quality", "images", "latency", "training", "compile", "environment"):
        assert f'id="{anchor}"' in html
    # self-contained: no URL but the SVG namespace and the page's own anchors
    urls = set(re.findall(r'(?:src|href)="([^"#][^"]*)"', html))
    assert all(u.startswith("data:image/png;base64,") for u in urls), urls - {u for u in urls if u.startswith("data:")}
    assert set(re.findall(r"https?://[^\s\"'<>]+", html)) == {"http://www.w3.org/2000/svg"}
    # the grid: FP | PTQ | FraQAT | ONNX CPU | simulator | phone, one row per prompt
    labels = [s["label"] for s in metrics["sources"]]
    assert labels == ["FP PyTorch", "PTQ (fake-quant)", "FraQAT (fake-quant)", "ONNX Runtime CPU (Q/DQ)",
                      "HTP simulator", "SM-S938B (s25u)", "AI Hub Samsung Galaxy S25 Ultra"]
    assert html.count("<img ") == len(labels) * len(SIM_PROMPTS)
    for label in labels:
        assert f"<th>{label}</th>" in html
    sim = next(s for s in metrics["sources"] if s["key"] == "sim")
    assert f"{sim['outputs'][0]['psnr']:.1f} dB · SSIM {sim['outputs'][0]['ssim']:.3f}" in html
    # latency per component and device (simulator figures labelled as such), memory, training, compile figures
    assert "Simulator figures" in html and "HTP simulator: p50 per call" in html and "SM-S938B (s25u): p50" in html
    assert "AI Hub Samsung Galaxy S25 Ultra: p50" in html and "the phone&#x27;s VAE decoder on the host latents" in html
    assert "peak PSS" in html and "thermal" in html
    assert "distillation loss and bit schedule" in html and "weight bits" in html
    assert "no training steps (post-training quantization" in html  # the PTQ baseline
    assert "HTP op coverage" in html and "context binary size" in html and "bytes per weight" in html
    assert "Samsung Galaxy S25 Ultra (SM8750, HTP v79, soc_model 69)" in html
    assert "onnxruntime-qnn" in html and "2.51.0" in html  # versions of the host stages and the QNN build
    assert "set --lpips-weights" in html and "set --clip-weights" in html
    assert RunDir(run).manifest()["stages"]["report"]["status"] == "done"


@needs_chromium
def test_chromium_opens_the_report_without_errors(reported, tmp_path):
    run, metrics = reported
    path = write_report(run)
    check = check_page(path, tmp_path / "report.png")
    assert check.ok, (check.console_errors, check.broken_images)
    assert check.images == len(metrics["sources"]) * len(SIM_PROMPTS)
    with Image.open(check.screenshot) as shot:
        assert shot.width >= 1200 and shot.height > 2500  # the whole page, not one screen
        pixels = np.asarray(shot.convert("L"))
    assert pixels.std() > 10  # something was drawn


@needs_chromium
def test_a_broken_image_or_an_external_url_fails_the_check(reported, tmp_path):
    run, _ = reported
    html = write_report(run).read_text()
    first = re.search(r'src="data:image/png;base64,([^"]+)" alt="([^"]+)"', html)
    broken = tmp_path / "broken.html"
    broken.write_text(html.replace(first.group(1), "bm90IGEgcG5n", 1))  # "not a png"
    check = check_page(broken)
    assert not check.ok
    assert check.broken_images == [first.group(2).replace("&#x27;", "'")]
    assert any("image did not load" in e for e in check.console_errors)
    external = tmp_path / "external.html"
    external.write_text(html.replace(first.group(0), 'src="https://example.invalid/x.png" alt="remote"', 1))
    check = check_page(external)
    assert not check.ok and check.broken_images == ["remote"]
    assert any("violates the following Content Security Policy" in e for e in check.console_errors)


def test_a_run_with_training_only_still_gets_a_report(runs_ptq):
    html = write_report(runs_ptq).read_text()
    assert "run `fraqat-deploy compare --run &lt;run&gt;`" in html
    assert "No bench yet" in html and "Not compiled yet" in html
    assert 'id="images"' not in html
    with pytest.raises(InputError, match="no run.json"):
        write_report(runs_ptq.parent / "nothing")


@pytest.fixture()
def runs_ptq(tmp_path_factory, tmp_path) -> Path:
    _, ptq = digits_runs(tmp_path_factory)
    copy = tmp_path / "ptq"
    shutil.copytree(ptq, copy)
    return copy


def test_svg_charts_are_well_formed_and_scaled():
    assert nice_ticks(0.0213, 0.0561) == [0.02, 0.03, 0.04, 0.05, 0.06]
    assert nice_ticks(0, 667648, 5) == [0, 200000, 400000, 600000, 800000]
    assert nice_ticks(4, 8) == [4, 5, 6, 7, 8]
    svg = line_chart([Series("train loss", [(1, 0.5), (2, 0.25), (3, 0.3)]),
                      Series("validation", [(3, 0.2)], style="points"),
                      Series("weight bits", [(0, 8), (2, 4), (3, 4)], style="step", right_axis=True)],
                     title="t <&>", x_label="step", y_label="loss", y2_label="bits", bands=[Band(0, 2, "8")])
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    lines = root.findall(f"{ns}polyline")
    assert len(lines) == 2 and len(root.findall(f"{ns}circle")) == 1
    assert len(lines[1].get("points").split()) == 5  # a step: 3 points + 2 corners
    assert root.find(f"{ns}text").text == "t <&>"
    bars = ET.fromstring(bar_chart(["a", "b"], [("share", [0.5, 1.0])], title="c", y_label="%", percent=True))
    rects = [r for r in bars.findall(f"{ns}rect") if r.find(f"{ns}title") is not None]
    heights = [float(r.get("height")) for r in rects]
    assert heights[1] == pytest.approx(2 * heights[0], rel=1e-3)
    assert [t.text for t in bars.findall(f"{ns}text") if t.text and t.text.endswith("%")][-2:] == ["50.0%", "100.0%"]


def test_report_formats_read_cleanly() -> None:
    """One number format per table, axes that stop at 100%, an HTP share that shows a node left on the CPU."""
    import re

    from fraqat_deploy.report.sections import _stat_cells, htp_share, runs_phrase
    from fraqat_deploy.report.svg import bar_chart

    cells = _stat_cells({"n": 3, "min": 56.0, "p50": 1460.25, "p90": 1500.0, "max": 1501.0, "mean": 1000.0,
                         "std": 0.04})
    assert cells == ["3", "56.0", "1,460.2", "1,500.0", "1,501.0", "1,000.0", "0.0"]
    assert runs_phrase(1, 0) == "1 measured run, no warm-up"
    assert runs_phrase(5, 1) == "5 measured runs after 1 warm-up run"
    assert htp_share({"htp_fraction": 0.9996, "cpu_boundary": 0, "cpu_fallback": 1}) == "99.9% (1 node on the CPU)"
    assert htp_share({"htp_fraction": 1.0, "cpu_boundary": 2, "cpu_fallback": 0}) == "100.0% (2 nodes on the CPU)"
    svg = bar_chart(["a", "b"], [("share", [1.0, 0.97])], title="t", y_label="share", percent=True)
    labels = re.findall(r">(\d+)%<", svg)
    assert labels and max(int(x) for x in labels) == 100
