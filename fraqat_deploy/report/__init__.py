"""``report``: one self-contained ``report.html`` per run — the image grid (FP, baselines, this run, every device),
quality metrics, latency and memory per component and device, training curves with the bit schedule, compile
figures (HTP coverage, size, bytes per weight), and the environment and versions.

Everything is read from the run's artifacts (``compare/metrics.json``, ``bench/``, ``train/``, ``compile/``); a
missing stage becomes a note saying which command fills it. Images are inlined as ``data:`` URIs and charts as SVG,
so the file can be mailed or archived alone. ``report.browser.check_page`` opens it in headless Chromium.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fraqat_deploy.errors import InputError
from fraqat_deploy.quality.compare import COMPARE_DIR, METRICS_FILE
from fraqat_deploy.quality.sources import device_results, method_label, schedule_name
from fraqat_deploy.report import sections
from fraqat_deploy.report.page import page
from fraqat_deploy.runs import RunDir

REPORT_FILE = "report.html"


def write_report(run: Path | str) -> Path:
    """Write ``run/report.html`` from the run's artifacts; returns its path."""
    run = Path(run)
    rd = RunDir(run)
    if not rd.exists():
        raise InputError(f"no run at {run} (no run.json)", f"train first: fraqat-deploy train <model> --out {run}")
    manifest = rd.manifest()
    metrics = _metrics(run)
    devices = device_results(run)
    parts: list[tuple[str, str, str]] = [("overview", "Run", sections.overview(run, manifest))]
    parts.append(("quality", "Quality against the FP model", sections.quality(metrics)))
    if metrics and metrics.get("kind") == "image":
        parts.append(("images", "Images", sections.image_grid(metrics, run / COMPARE_DIR)))
    elif metrics and metrics.get("kind") == "text":
        parts.append(("texts", "Greedy continuations", sections.text_outputs(metrics)))
    parts.append(("latency", "Latency and memory", sections.latency(devices)))
    curves = sections.training_curve(run, f"this run ({method_label(schedule_name(run))})")
    for source in (metrics or {}).get("sources", []):
        if source.get("kind") == "baseline" and source.get("run"):
            curves += sections.training_curve(Path(source["run"]), f"baseline {source['label']}")
    parts.append(("training", "Training", curves))
    parts.append(("compile", "Compiled for the HTP", sections.compile_figures(run)))
    parts.append(("environment", "Environment and versions", sections.environment(manifest, run, devices, metrics)))
    model = manifest.get("model", {}).get("adapter", "?")
    html = page(f"fraqat-deploy report: {run.name}", f"{model} · {method_label(schedule_name(run))} · {run.resolve()}",
                parts)
    out = run / REPORT_FILE
    tmp = out.with_name(f".{REPORT_FILE}.tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(out)
    rd.update_stage("report", "done", output=REPORT_FILE, sections=[a for a, _, _ in parts])
    return out


def _metrics(run: Path) -> dict[str, Any] | None:
    path = run / COMPARE_DIR / METRICS_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise InputError(f"{path} is not valid JSON: {e}", "re-run fraqat-deploy compare") from None
