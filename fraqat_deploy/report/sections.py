"""The report's sections, each built from one kind of run artifact."""

from __future__ import annotations

import json
import math
from html import escape
from pathlib import Path
from typing import Any

from fraqat_deploy.quality.compare import summary_rows
from fraqat_deploy.quality.sources import DeviceResult, method_label, schedule_name
from fraqat_deploy.report.page import Raw, img, note, num, table
from fraqat_deploy.report.svg import Band, Series, bar_chart, line_chart

SIMULATOR_CAVEAT = ("Simulator figures: the QNN HTP simulator emulating the HTP on the host CPU. They show that the "
                    "graphs run, not how fast a phone runs them; never read them as device latency.")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# -- overview ----------------------------------------------------------------------------------------------


def overview(run: Path, manifest: dict[str, Any]) -> str:
    train = manifest.get("stages", {}).get("train", {})
    model = manifest.get("model", {})
    spec = model.get("spec", {})
    facts = [
        ("run", str(run.resolve())),
        ("model", f"{model.get('adapter', '?')} ({spec.get('builtin') or spec.get('source') or spec.get('kind', '')})"),
        ("method", f"{method_label(schedule_name(run))}: schedule {train.get('schedule', '?')}"),
        ("training", f"{train.get('steps', '?')} steps, final weight bits {train.get('final_bits', '?')}, "
                     f"validation loss {num(train.get('val_loss'))}, {train.get('quantized_layers', '?')} quantized "
                     "layers"),
    ]
    stages = [(name, s.get("status", "?"), s.get("updated", "")) for name, s in manifest.get("stages", {}).items()]
    return (table(["", ""], facts, left=2, cls="facts")
            + "<h3>Stages</h3>" + table(["stage", "status", "updated"], stages, left=3))


# -- quality -----------------------------------------------------------------------------------------------


def quality(metrics: dict[str, Any] | None) -> str:
    if metrics is None:
        return note("No compare/metrics.json yet: run `fraqat-deploy compare --run <run>` and then this report again.")
    header, rows = summary_rows(metrics)
    reference = "the FP model's output for the same prompt and seed"
    html = note(f"Every output is scored against {reference}. Images are compared as 8-bit images.")
    html += table(header, rows)
    learned = metrics.get("learned_metrics", {})
    if learned:
        items = []
        for metric, status in learned.items():
            if status.get("available"):
                items.append((metric, "computed", status.get("weights", "")))
            else:
                items.append((metric, f"unavailable: {status.get('reason', '')}", f"set {status.get('option', '')}"))
        html += "<h3>Metrics that need pretrained weights</h3>" + table(["metric", "status", "weights"], items,
                                                                           left=3)
    if metrics.get("skipped"):
        html += "<h3>Sources left out</h3>" + table(["source", "why"], [(s["source"], s["reason"])
                                                                      for s in metrics["skipped"]], left=2)
    if metrics.get("kind") == "text" and metrics.get("heldout"):
        h = metrics["heldout"]
        html += note(f"Perplexity, KL and top-1 on {int(h['rows'])} held-out rows ({int(h['tokens'])} predicted "
                     f"tokens); greedy-token agreement over {metrics.get('max_new_tokens')} new tokens per prompt.")
    return html


def image_grid(metrics: dict[str, Any], compare_dir: Path) -> str:
    sources = metrics["sources"]
    keys: list[tuple[str, int]] = []
    for s in sources:
        for o in s["outputs"]:
            if (o["prompt"], o["seed"]) not in keys:
                keys.append((o["prompt"], o["seed"]))
    header = ["prompt, seed", *[s["label"] for s in sources]]
    rows = []
    for prompt, seed in keys:
        row: list[object] = [f"{prompt} (seed {seed})"]
        for s in sources:
            match = next((o for o in s["outputs"] if o["prompt"] == prompt and o["seed"] == seed), None)
            if match is None:
                row.append("")
                continue
            caption = []
            if "psnr" in match:
                caption.append(f"{match['psnr']:.1f} dB · SSIM {match['ssim']:.3f}")
            if match.get("predicted") is not None:
                mark = "" if match.get("digit") is None else (" ✓" if match["digit"] == match["predicted"] else " ✗")
                caption.append(f"reads {match['predicted']}{mark}")
            alt = f"{s['label']}: {prompt} (seed {seed})"
            row.append(Raw(img(compare_dir / match["image"], alt) + "<br>".join(escape(c) for c in caption)))
        rows.append(row)
    wheres = "".join(note(f"{s['label']}: {s['where']}") for s in sources if s.get("where"))
    return note("FP, baselines, this run and every device, side by side; under each image its PSNR and SSIM "
                "against the FP image and, for digits, the digit the classifier reads.") + table(header, rows,
                                                                                                  cls="grid") + wheres


def text_outputs(metrics: dict[str, Any]) -> str:
    html = ""
    prompts = list(dict.fromkeys(o["prompt"] for s in metrics["sources"] for o in s["outputs"]))
    for prompt in prompts:
        rows = []
        for s in metrics["sources"]:
            for o in (o for o in s["outputs"] if o["prompt"] == prompt):
                rows.append((s["label"], Raw(f"<pre>{escape(o['text'])}</pre>"), num(o.get("token_agreement"), ".0%"),
                             o.get("matching_prefix", "-")))
        html += f"<h3>{escape(repr(prompt))}</h3>" + table(["source", "continuation", "tokens as FP", "prefix"],
                                                            rows, left=2)
    return html


# -- latency and memory ------------------------------------------------------------------------------------

_STATS = ("n", "min", "p50", "p90", "max", "mean", "std")
#: one format for every millisecond figure (1,460.2 beside 56.0, never 1.46e+03 beside 56)
MS = ",.1f"


def _stat_cells(stats: dict) -> list[str]:
    return [num(stats.get(k), "d" if k == "n" and isinstance(stats.get(k), int) else MS) for k in _STATS]


def runs_phrase(runs: object, warmup: object) -> str:
    """'5 measured runs after 1 warm-up run', '1 measured run, no warm-up'."""
    def plural(n: object, word: str) -> str:
        return f"{n} {word}{'' if n == 1 else 's'}"

    measured = plural(runs, "measured run")
    return f"{measured}, no warm-up" if warmup == 0 else f"{measured} after {plural(warmup, 'warm-up run')}"


def htp_share(cov: dict) -> str:
    """The share of nodes on the HTP, never rounded up to 100% while a node stays on the CPU."""
    share = cov.get("htp_fraction")
    if share is None:
        return "-"
    on_cpu = int(cov.get("cpu_boundary") or 0) + int(cov.get("cpu_fallback") or 0)
    text = f"{math.floor(share * 1000) / 10:.1f}%"
    return text if not on_cpu else f"{text} ({on_cpu} node{'s' if on_cpu != 1 else ''} on the CPU)"


def latency(devices: list[DeviceResult]) -> str:
    if not devices:
        return note("No bench yet: run `fraqat-deploy bench --device sim` (or a phone) first.")
    html, memory_rows = "", []
    for d in devices:
        title = f"{d.label} — bench {d.bench_id}"
        if d.skipped:
            html += f"<h3>{escape(title)}</h3>" + f'<p class="warn">{escape(d.skipped)}</p>'
            continue
        r = d.result
        timings = r.get("timings_ms", {})
        comps = timings.get("components", {})
        rows = [(name, *_stat_cells(s)) for name, s in comps.items()]
        if timings.get("end_to_end"):
            rows.append(("end to end", *_stat_cells(timings["end_to_end"])))
        html += f"<h3>{escape(title)}</h3>"
        if d.kind == "simulator":
            html += f'<p class="warn">{escape(SIMULATOR_CAVEAT)}</p>'
        if d.where:
            html += note(f"AI Hub: {d.where}.")
        device = r.get("device", {})
        cfg = r.get("config", {})
        html += note(f"{device.get('manufacturer', '')} {device.get('model', '')}, SoC {device.get('soc', '?')}, "
                     f"runtime {device.get('runtime', '?')}; {runs_phrase(cfg.get('runs'), cfg.get('warmup'))}, "
                     f"{cfg.get('steps') or '-'} steps, performance mode {cfg.get('performance_mode')}; "
                     f"init {num(timings.get('init'), MS)} ms, first inference "
                     f"{num(timings.get('first_inference'), MS)} ms")
        html += table(["component (ms)", *_STATS], rows)
        if comps:
            names = list(comps)
            p50 = [comps[n].get("p50") for n in names]
            whisk = [[(comps[n]["min"], comps[n]["p90"]) if "min" in comps[n] else None for n in names]]
            kind = "simulator ms (host)" if d.kind == "simulator" else "ms"
            chart = bar_chart(names, [("p50", p50)], whiskers=whisk, y_label=kind,
                              title=f"{d.label}: p50 per call (whisker min..p90)")
            html += f'<div class="chart">{chart}</div>'
        mem = r.get("memory_mb", {})
        thermal = r.get("thermal", {})
        tps = [o["tokens_per_second"] for o in r.get("outputs", []) if "tokens_per_second" in o]
        memory_rows.append((d.label, num(mem.get("peak_pss"), ".1f"), num(mem.get("peak_rss"), ".1f"),
                            num(mem.get("native_heap"), ".1f"), num(mem.get("peak_dmabuf"), ".1f"),
                            mem.get("source", ""),
                            f"{_or_dash(thermal.get('before'))} → {_or_dash(thermal.get('after'))}"
                            + (f" ({thermal['source']})" if thermal.get("source") else ""),
                            num(sum(tps) / len(tps), ".1f") if tps else "-"))
    if memory_rows:
        html += "<h3>Memory (MB) and thermal status</h3>" + table(
            ["device", "peak PSS", "peak RSS", "native heap", "peak DMA-BUF (NPU buffers)", "measured by", "thermal",
             "tokens/s"], memory_rows)
    return html


def _or_dash(v: Any) -> str:
    return "-" if v is None else str(v)


# -- training ----------------------------------------------------------------------------------------------


def training_curve(run: Path, label: str) -> str:
    path = run / "train" / "metrics.jsonl"
    if not path.is_file():
        return note(f"{label}: no train/metrics.jsonl.")
    events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    train = [e for e in events if e.get("event") == "train"]
    val = [e for e in events if e.get("event") == "val" and e.get("val_loss") is not None]
    if not train:
        return note(f"{label}: no training steps (post-training quantization: calibrate and round).")
    stages: dict[int, list[dict[str, Any]]] = {}
    for e in train:
        stages.setdefault(int(e.get("stage", 0)), []).append(e)
    bands, bits = [], []
    for stage in sorted(stages):
        steps = [e["step"] for e in stages[stage]]
        b = float(stages[stage][0]["bits"])
        bands.append(Band(min(steps) - 1, max(steps), f"{b:g}"))
        bits.append((min(steps) - 1, b))
    bits.append((bands[-1].x1, bits[-1][1]))
    series = [Series("train loss", [(e["step"], e["loss"]) for e in train]),
              Series("validation loss", [(e["step"], e["val_loss"]) for e in val], style="points"),
              Series("weight bits", bits, color="#555", style="step", right_axis=True)]
    chart = line_chart(series, title=f"{label}: distillation loss and bit schedule", x_label="step",
                       y_label="loss", y2_label="weight bits", bands=bands)
    return f'<div class="chart">{chart}</div>'


# -- compile -----------------------------------------------------------------------------------------------


def compile_figures(run: Path) -> str:
    folder = run / "compile"
    targets = sorted(p for p in folder.iterdir() if (p / "compile.json").is_file()) if folder.is_dir() else []
    if not targets:
        return note("Not compiled yet: run `fraqat-deploy compile --device s25u` first.")
    html = ""
    for target in targets:
        compiled = _read_json(target / "compile.json") or {}
        parity = (_read_json(target / "htp_parity.json") or {}).get("components", {})
        comps = compiled.get("components", {})
        rows = []
        for name, c in comps.items():
            cov, weights = c.get("coverage", {}), c.get("weights", {})
            p = parity.get(name, {})
            rels = [o.get("rel") for o in p.get("outputs", {}).values() if o.get("rel") is not None]
            rows.append((name, cov.get("nodes"), cov.get("htp"), htp_share(cov),
                         cov.get("cpu_boundary"), cov.get("cpu_fallback"), num(c.get("context_binary_bytes"), ",d"),
                         num(weights.get("bytes_per_weight"), ".3f"),
                         "-" if not p else "not run (--parity-rows 0)" if p.get("skipped")
                         else f"{'passed' if p.get('passed') else 'FAILED'} ({max(rels):.2%})"
                         if rels else num(p.get("passed"))))
        first = next(iter(comps.values()), {})
        heading = (f"{target.name}: {first.get('device', '')} ({first.get('soc')}, HTP {first.get('htp_arch')}, "
                   f"soc_model {first.get('soc_model')})")
        html += f"<h3>{escape(heading)}</h3>"
        html += table(["component", "nodes", "on HTP", "HTP share", "CPU boundary", "CPU fallback",
                       "context binary bytes", "bytes per weight", "HTP parity (rel. error)"], rows)
        names = list(comps)
        html += '<div class="chart">' + bar_chart(
            names, [("HTP share of nodes", [comps[n].get("coverage", {}).get("htp_fraction") for n in names])],
            title=f"{target.name}: HTP op coverage", y_label="share of nodes", percent=True, height=240) + "</div>"
        html += '<div class="chart">' + bar_chart(
            names, [("context binary (KB)", [_kb(comps[n].get("context_binary_bytes")) for n in names])],
            title=f"{target.name}: context binary size", y_label="KB", height=240) + "</div>"
        html += '<div class="chart">' + bar_chart(
            names, [("bytes per weight", [comps[n].get("weights", {}).get("bytes_per_weight") for n in names])],
            title=f"{target.name}: context binary bytes per weight element", y_label="bytes", height=240) + "</div>"
        html += note("Bytes per weight: the context binary's size over the model's weight elements (it also holds "
                     "the graph, encodings and HTP-specific layouts, so tiny models read far above 0.5).")
    return html


def _kb(v: Any) -> float | None:
    return None if v is None else v / 1024


# -- environment ---------------------------------------------------------------------------------------------


def environment(manifest: dict[str, Any], run: Path, devices: list[DeviceResult],
                metrics: dict[str, Any] | None) -> str:
    stages = {name: s["environment"] for name, s in manifest.get("stages", {}).items() if s.get("environment")}
    if metrics and metrics.get("environment"):
        stages["compare (these metrics)"] = metrics["environment"]
    html = ""
    if stages:
        libs = sorted({lib for env in stages.values() for lib in env.get("libraries", {})})
        header = ["", *stages]
        rows = [("fraqat-deploy", *[e.get("fraqat_deploy") for e in stages.values()]),
                ("python", *[e.get("python") for e in stages.values()]),
                ("platform", *[e.get("platform") for e in stages.values()])]
        rows += [(lib, *[e.get("libraries", {}).get(lib) or "-" for e in stages.values()]) for lib in libs]
        html += "<h3>Host, per stage</h3>" + table(header, rows, left=len(header))
    compile_rows = []
    for target in sorted((run / "compile").glob("*/compile.json")):
        for name, c in (_read_json(target) or {}).get("components", {}).items():
            v = c.get("versions", {})
            compile_rows.append((target.parent.name, name, v.get("qnn_build") or v.get("qnn_sdk"),
                                 v.get("onnxruntime"), v.get("onnxruntime_qnn")))
    if compile_rows:
        html += "<h3>Compilers</h3>" + table(["target", "component", "QNN", "onnxruntime", "onnxruntime-qnn"],
                                             compile_rows, left=5)
    device_rows = [(d.label, d.result["device"].get("android_sdk"), d.result["device"].get("qnn_version"),
                    d.result["device"].get("onnxruntime_version")) for d in devices if d.result.get("device")]
    if device_rows:
        html += "<h3>Devices</h3>" + table(["device", "Android SDK", "QNN", "ONNX Runtime"], device_rows, left=4)
    return html or note("No environment recorded.")
