"""Benchmarks on Qualcomm AI Hub's hosted phones, for a run compiled with ``compile --backend hub``.

A diffusion pipeline calls its transformer once per step: one AI Hub job per call would be dozens of jobs, each
provisioning a phone. So the work is split, two jobs per component, all submitted at once and awaited together:

- profile: one profile job per component (AI Hub's random inputs, ``--max_profiler_iterations``). Latency per
  component is every iteration time AI Hub reports (or its single estimate, ``n = 1``, when that is all it gives),
  ``init`` the sum of the components' first-load times, memory the largest inference peak-memory range, and each
  operator's compute unit goes to ``profile_<component>.json``;
- the pipeline: the prompts run on this machine through the exported Q/DQ models on ONNX Runtime's CPU provider
  (the reference every parity check here is measured against), each component call recorded;
- inference: one inference job per component on the recorded inputs of its calls (the first ``max_samples``).
  Its outputs are compared with the host's output by output (``hub.json``); for Sana the images are the phone's
  VAE decoder outputs on the host pipeline's final latents.

``result.json`` follows the phone protocol's schema (``device/schemas/result.schema.json``): ``runtime: htp``,
``end_to_end: null`` (no job times a whole generation; ``hub.json`` holds an estimate from the per-component
medians), ``first_inference: null``. The job ids and URLs go to ``hub.json`` and run.json.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fraqat_deploy.compile.hub import (
    DEFAULT_TIMEOUT_S,
    POLL_S,
    Event,
    connect,
    resumed_job,
    wait_for_jobs,
)
from fraqat_deploy.device.pipeline import with_graph_rows
from fraqat_deploy.errors import ConfigError, FraqatError, InputError
from fraqat_deploy.runs import RunDir, sha256_file, write_json_atomic
from fraqat_deploy.targets import get_target

DEFAULT_ITERATIONS = 100
DEFAULT_MAX_SAMPLES = 64
#: Android release -> API level (AI Hub names the OS release; the result wants the SDK)
ANDROID_SDK = {"16": 36, "15": 35, "14": 34, "13": 33, "12": 31, "11": 30, "10": 29}
MIB = float(1 << 20)


def run_host_pipeline(run: Path, export: Mapping[str, Any], pipeline: Mapping[str, Any],
                      rows: list[dict[str, np.ndarray]]) -> tuple[dict[str, list[tuple[dict, list]]], list[Any]]:
    """Every prompt through the Q/DQ models on ONNX Runtime's CPU provider. Returns each component's calls
    (feed, outputs) in order and each prompt's result (Sana: the image [3, H, W]; Gemma: the new token ids)."""
    from fraqat_deploy.compile.htp import cpu_session
    from fraqat_deploy.device import pipeline as pipe

    sessions = {name: cpu_session(run / "export" / info["onnx"]) for name, info in export["components"].items()}
    embedding = pipe.host_embedding(pipeline, export, run / "export")  # graphs that take inputs_embeds
    calls: dict[str, list[tuple[dict, list]]] = {name: [] for name in sessions}

    def runner(component: str, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        session = sessions[component]
        outputs = session.run([o.name for o in session.get_outputs()], dict(feed))
        calls[component].append(({k: np.array(v) for k, v in feed.items()}, outputs))
        return outputs

    results = []
    for tensors in rows:
        timed = pipe.Timed()
        if pipeline["kind"] == "sana":
            results.append(pipe.sana_generate(runner, pipeline, tensors, timed))
        elif pipeline["kind"] == "gemma":
            results.append(pipe.gemma_generate(runner, pipeline, tensors, timed, embedding)[0])
        else:
            raise ConfigError(f"the hub bench cannot run a '{pipeline['kind']}' pipeline")
    return calls, results


def inputs_digest(dataset: Mapping[str, list[np.ndarray]]) -> str:
    h = hashlib.sha256()
    for name, arrays in dataset.items():
        h.update(name.encode())
        for array in arrays:
            h.update(str(array.dtype).encode() + str(array.shape).encode() + np.ascontiguousarray(array).tobytes())
    return h.hexdigest()[:12]


def profile_summary(profile: Mapping[str, Any]) -> dict[str, Any]:
    """The figures result.json takes from one AI Hub profile: times in ms (every iteration when AI Hub lists
    them, else its single estimate), first-load ms, the inference peak-memory range in bytes, compute units."""
    summary = profile.get("execution_summary", {})
    times_us = list(summary.get("all_inference_times") or [])
    source = "all_inference_times"
    if not times_us and summary.get("estimated_inference_time"):
        times_us, source = [summary["estimated_inference_time"]], "estimated_inference_time"
    peak = summary.get("inference_memory_peak_range")
    if not peak and summary.get("estimated_inference_peak_memory"):
        peak = (summary["estimated_inference_peak_memory"],) * 2
    return {"times_ms": [t / 1000.0 for t in times_us], "times_from": source,
            "first_load_ms": summary["first_load_time"] / 1000.0 if summary.get("first_load_time") else None,
            "peak_memory_bytes": list(peak) if peak else None,
            "compute_units": dict(Counter(d.get("compute_unit", "UNSPECIFIED")
                                          for d in profile.get("execution_detail", [])))}


def hub_records(run: Path, export: Mapping[str, Any], alias: str) -> dict[str, dict[str, Any]]:
    """Each component's compile record under ``compile/<alias>/`` ({} where there is none)."""
    from fraqat_deploy.compile.local import read_compile_json

    compiled = read_compile_json(run / "compile" / alias)["components"]
    return {name: compiled.get(Path(info["onnx"]).stem) or {} for name, info in export["components"].items()}


def hub_bench(run: Path, device: str, *, prompts: list[str], seed: int = 0, steps: int | None = None,
              max_new_tokens: int | None = None, iterations: int = DEFAULT_ITERATIONS,
              max_samples: int = DEFAULT_MAX_SAMPLES, timeout_s: float = DEFAULT_TIMEOUT_S, poll_s: float = POLL_S,
              resume_job: str | list[str] | None = None, hub_device: str | None = None,
              bench_id: str | None = None, on_event: Event | None = None) -> tuple[Path, dict[str, Any]]:
    """Profile and run the hub-compiled components of ``run`` on ``device``'s AI Hub phone (see the module doc).
    Writes ``run/bench/hub-<alias>/<id>/``: result.json, profile_<component>.json, hub.json (jobs, URLs, parity
    of the phone's outputs against the host's), images/ (Sana); returns (that folder, the result).
    ``resume_job``: ids of the jobs of a timed-out hub bench with the same prompts and options, awaited instead
    of new ones."""
    from fraqat_deploy.bench import new_bench_id
    from fraqat_deploy.compile.run import read_export
    from fraqat_deploy.train.load import load_trained

    run = Path(run)
    target = get_target(device)
    if not prompts:
        raise ConfigError("no prompt given", 'pass --prompt "..."')
    if iterations < 1 or max_samples < 1:
        raise ConfigError(f"iterations and max_samples must be >= 1 (got {iterations}, {max_samples})")
    export = read_export(run)
    records = hub_records(run, export, target.alias)
    event = on_event or (lambda kind, data: None)
    # credentials first: without them nothing else can be done (and the fix says how to get them)
    recorded_device = next((r["hub"]["device"] for r in records.values() if r.get("backend") == "hub"), None)
    session = connect(target, hub_device=hub_device or recorded_device)
    missing = [name for name, record in records.items() if record.get("backend") != "hub"]
    if missing:
        raise InputError(f"{run / 'compile' / target.alias / 'compile.json'} has no AI Hub compile of "
                         f"{', '.join(missing)}", f"compile on AI Hub first: fraqat-deploy compile "
                         f"{export.get('adapter', '<model>')} --run {run} --backend hub --device {target.alias}")

    event("host", {"prompts": len(prompts)})
    trained = load_trained(run)
    if getattr(trained.adapter, "bench_inputs", None) is None:
        raise ConfigError(f"the '{trained.adapter.name}' model cannot be benchmarked yet")
    options = {k: v for k, v in (("steps", steps), ("max_new_tokens", max_new_tokens)) if v is not None}
    pipeline, rows = trained.adapter.bench_inputs(trained.fp, prompts, seed=seed, **options)
    pipeline = with_graph_rows(pipeline, export)
    calls, host_results = run_host_pipeline(run, export, pipeline, rows)
    datasets = {name: {i: [feed[i] for feed, _ in calls[name][:max_samples]] for i in info["input_names"]}
                for name, info in export["components"].items() if calls[name]}

    bench_id = bench_id or new_bench_id()
    rd = RunDir(run)
    stage = f"bench/hub-{target.alias}"
    out = rd.stage_dir(f"{stage}/{bench_id}")
    resume_ids = [resume_job] if isinstance(resume_job, str) else list(resume_job or [])
    jobs = _resumed_jobs(session, resume_ids, list(records), datasets)
    rd.update_stage(stage, "running", id=bench_id, backend="hub", device=session.device_info())
    try:
        _submit(session, records, datasets, jobs, iterations=iterations, event=event)
        rd.update_stage(stage, "running", jobs=job_refs(jobs))
        command = (f"fraqat-deploy bench {export.get('adapter', '<model>')} --run {run} --backend hub --device "
                   f"{target.alias} <the same prompts and options>")
        wait_for_jobs(session, jobs, timeout_s=timeout_s, poll_s=poll_s, on_event=event,
                      resume_fix=lambda ids: f"resume waiting with `{command} "
                      + " ".join(f"--resume-job {i}" for i in ids) + "` (or raise --timeout)")
        event("download", {"jobs": len(jobs)})
        profiles = {name: session.call(f"the profile of {name}", jobs[f"profile {name}"].download_profile)
                    for name in records}
        hub_outputs = {name: session.call(f"the outputs of {name}", jobs[f"inference {name}"].download_output_data)
                       for name in datasets}
    except FraqatError as e:
        rd.update_stage(stage, "failed", id=bench_id, reason=e.one_line(), jobs=job_refs(jobs))
        raise

    summaries = {name: profile_summary(profile) for name, profile in profiles.items()}
    for name, profile in profiles.items():
        job = jobs[f"profile {name}"]
        write_json_atomic(out / f"profile_{name}.json", {
            "component": name, "job_id": job.job_id, "url": job.url, "device": session.device_info(),
            "compute_units": summaries[name]["compute_units"],
            "execution_summary": profile.get("execution_summary", {}),
            "execution_detail": profile.get("execution_detail", [])})
    parity = _parity(run, export, calls, hub_outputs, max_samples)
    outputs, resolution = _outputs(out, trained, pipeline, prompts, seed, host_results, hub_outputs, jobs)
    result = _result(session, bench_id, export, records, run / "compile" / target.alias, summaries, parity,
                     outputs, config={"warmup": 0, "runs": iterations, "steps": pipeline.get("steps"),
                                      "resolution": resolution, "performance_mode": None, "prompts": len(prompts)})
    per_prompt = {name: len(c) / len(prompts) for name, c in calls.items()}
    timed = {name: s for name, s in summaries.items() if s["times_ms"]}
    write_json_atomic(out / "hub.json", {
        "device": session.device_info(), "api_url": session.api_url, "iterations": iterations,
        "max_samples": max_samples, "jobs": job_refs(jobs),
        "times_from": {name: s["times_from"] for name, s in summaries.items()},
        "peak_memory_bytes": {name: s["peak_memory_bytes"] for name, s in summaries.items()},
        "compute_units": {name: s["compute_units"] for name, s in summaries.items()},
        "calls_per_prompt": per_prompt,
        # no job times a whole generation: the calls of one prompt at each component's median
        "estimated_end_to_end_ms": sum(per_prompt[n] * float(np.median(s["times_ms"])) for n, s in timed.items())
        if set(timed) >= {n for n, c in per_prompt.items() if c} else None,
        "parity": parity,
        "where": "profile jobs: AI Hub's random inputs; inference jobs: the inputs the host pipeline (Q/DQ models "
                 "on ONNX Runtime CPU) fed each component; images: the phone's VAE decoder on the host latents",
    })
    write_json_atomic(out / "result.json", result)
    rd.update_stage(stage, "done", id=bench_id, result=str((out / "result.json").relative_to(run)), backend="hub",
                    jobs=job_refs(jobs))
    return out, result


def job_refs(jobs: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    return {label: {"job_id": job.job_id, "url": job.url} for label, job in jobs.items()}


def _resumed_jobs(session: Any, ids: list[str], names: list[str], datasets: Mapping[str, Any]) -> dict[str, Any]:
    jobs = {}
    for job_id in ids:
        kind, name, job, rest = resumed_job(session, job_id, ("profile", "inference"), names)
        if kind == "inference" and (name not in datasets or rest[:1] != [inputs_digest(datasets[name])]):
            raise ConfigError(f"--resume-job {job_id} ran {name} on other inputs (other prompts, seed or steps)",
                              "resume with the prompts and options of the timed-out bench, or drop --resume-job")
        jobs[f"{kind} {name}"] = job
    return jobs


def _submit(session: Any, records: Mapping[str, Any], datasets: Mapping[str, Any], jobs: dict[str, Any], *,
            iterations: int, event: Event) -> None:
    """A profile job and an inference job per component, unless resumed. Job names carry the kind, the
    component and (inference) the digest of the inputs, so --resume-job can tell what a job was."""
    for name, record in records.items():
        pin = record["options"].get("qairt_version")
        pin_option = f"--qairt_version {pin}" if pin else ""
        if f"profile {name}" in jobs and (name not in datasets or f"inference {name}" in jobs):
            continue
        model = session.call(f"the compiled model of {name}", session.client.get_model,
                             record["hub"]["target_model_id"])
        if f"profile {name}" not in jobs:
            event("submit", {"job": f"profile {name}"})
            jobs[f"profile {name}"] = session.call(
                f"the profile job of {name}", session.client.submit_inference_job, model, session.device,
                inputs=None, profile=True, name=f"profile {name}",
                options=f"--max_profiler_iterations {iterations} {pin_option}".strip())
        if name in datasets and f"inference {name}" not in jobs:
            event("submit", {"job": f"inference {name}"})
            jobs[f"inference {name}"] = session.call(
                f"the inference job of {name}", session.client.submit_inference_job, model, session.device,
                inputs=datasets[name], profile=False, name=f"inference {name} {inputs_digest(datasets[name])}",
                options=pin_option)


def _result(session: Any, bench_id: str, export: Mapping[str, Any], records: Mapping[str, Any], folder: Path,
            summaries: Mapping[str, Any], parity: Mapping[str, Any], outputs: list[dict[str, Any]],
            config: dict[str, Any]) -> dict[str, Any]:
    """result.json in the phone protocol's schema, from the profiles (see the module doc for what maps where)."""
    from fraqat_deploy.device.protocol import SCHEMA_VERSION, summarize, validate

    info = session.device_info()
    peaks = [s["peak_memory_bytes"][1] for s in summaries.values() if s["peak_memory_bytes"]]
    first_loads = [s["first_load_ms"] for s in summaries.values() if s["first_load_ms"] is not None]
    result = {
        "schema_version": SCHEMA_VERSION, "request_id": bench_id, "status": "ok", "error": None,
        "device": {"manufacturer": _manufacturer(session.device), "model": info["name"],
                   "soc": session.target.soc, "android_sdk": ANDROID_SDK.get(str(info["os"]).split(".")[0]),
                   "runtime": "htp", "qnn_version": next(iter(records.values())).get("versions", {}).get("qnn_build"),
                   "onnxruntime_version": None},
        "model": {"name": export.get("adapter", "?"), "components": {
            name: {"sha256": sha256_file(folder / record["ctx_onnx"])} for name, record in records.items()}},
        "config": config,
        "timings_ms": {"init": sum(first_loads) if first_loads else None, "first_inference": None,
                       "components": {name: summarize(s["times_ms"]) for name, s in summaries.items()
                                      if s["times_ms"]},
                       "end_to_end": None},
        "memory_mb": {"peak_pss": None, "peak_rss": max(peaks) / MIB if peaks else None, "native_heap": None,
                      "source": "AI Hub profile: the largest upper bound of the components' inference peak-memory "
                                "ranges (each component profiled alone)"},
        "thermal": {"before": None, "after": None},
        "outputs": outputs,
        "errors": [f"{name}/{output}: the phone departs from the CPU Q/DQ model ({p['why']})"
                   for name, per in parity.items() for output, p in per.items() if not p["passed"]],
    }
    validate("result", result)
    return result


def _manufacturer(device: Any) -> str:
    for key in ("manufacturer:", "vendor:"):
        value = next((a[len(key):] for a in device.attributes if a.startswith(key)), None)
        if value:
            return value
    return device.name.split()[0].lower()


def _parity(run: Path, export: Mapping[str, Any], calls: Mapping[str, list], hub_outputs: Mapping[str, Any],
            max_samples: int) -> dict[str, dict[str, Any]]:
    """Per component and output: the phone's outputs against the host's on the same inputs, worst sample, with
    the compile parity's tolerance (``compile.local.htp_parity``: with the float graph at hand, the phone may
    differ from the CPU Q/DQ model by up to ``PARITY_NOISE_FACTOR`` times the Q/DQ model's own error)."""
    from fraqat_deploy.compile.htp import compare_arrays, cpu_session
    from fraqat_deploy.compile.local import (
        PARITY_NOISE_FACTOR,
        PARITY_REL_TOL,
        load_model,
        output_steps,
        parity_verdict,
    )

    parity: dict[str, dict[str, Any]] = {}
    for name, produced in hub_outputs.items():
        info = export["components"][name]
        qdq = run / "export" / info["onnx"]
        steps = output_steps(load_model(qdq), qdq.parent)
        float_path = run / "export" / info["float_onnx"] if info.get("float_onnx") else None
        reference = cpu_session(float_path) if float_path and float_path.is_file() else None
        parity[name] = {}
        for sample, (feed, host) in enumerate(calls[name][:max_samples]):
            floats = reference.run(info["output_names"], feed) if reference is not None else [None] * len(host)
            for index, output in enumerate(info["output_names"]):
                metrics = compare_arrays(produced[output][sample], host[index], steps.get(output))
                tol, max_abs_tol = PARITY_REL_TOL, None
                if floats[index] is not None:
                    quantization = compare_arrays(host[index], floats[index])
                    tol = max(PARITY_REL_TOL, PARITY_NOISE_FACTOR * quantization["rel"])
                    max_abs_tol = PARITY_NOISE_FACTOR * quantization["max_abs"]
                    metrics |= {"quantization_rel": quantization["rel"]}
                passed, why = parity_verdict(metrics, rel_tol=tol, max_abs_tol=max_abs_tol)
                entry = metrics | {"rel_tol": tol, "passed": passed, "why": why, "sample": sample}
                worst = parity[name].get(output)
                if worst is None or (not passed, metrics["rel"]) > (not worst["passed"], worst["rel"]):
                    parity[name][output] = entry | {"samples": min(len(calls[name]), max_samples)}
    return parity


def _outputs(out: Path, trained: Any, pipeline: Mapping[str, Any], prompts: list[str], seed: int,
             host_results: list[Any], hub_outputs: Mapping[str, Any], jobs: Mapping[str, Any]
             ) -> tuple[list[dict[str, Any]], list[int] | None]:
    """result.json's outputs and the image resolution. Sana: the phone's VAE decoder outputs as PNGs."""
    from fraqat_deploy.device import pipeline as pipe

    outputs: list[dict[str, Any]] = []
    if pipeline["kind"] == "sana":
        images = hub_outputs.get("vae_decoder")
        job = jobs.get("inference vae_decoder")
        resolution = None
        for i, prompt in enumerate(prompts):
            if images is None or i >= len(next(iter(images.values()))):
                break
            image = np.clip(np.asarray(next(iter(images.values()))[i], dtype=np.float32)[0], 0.0, 1.0)
            (out / "images").mkdir(exist_ok=True)
            pipe.image_to_png(image, out / "images" / f"{i}.png")
            resolution = [int(image.shape[1]), int(image.shape[2])]
            outputs.append({"prompt": prompt, "seed": seed, "image": f"images/{i}.png",
                            "produced_by": f"AI Hub inference job {job.job_id}: the phone's vae_decoder on the "
                                           "latents of the host pipeline"})
        return outputs, resolution
    tokenizer = trained.fp.parts["tokenizer"]
    for prompt, tokens in zip(prompts, host_results, strict=True):
        outputs.append({"prompt": prompt, "seed": seed, "tokens": [int(t) for t in tokens],
                        "text": prompt + tokenizer.decode(tokens, skip_special_tokens=True),
                        "produced_by": "the host pipeline (Q/DQ models on ONNX Runtime CPU); the phone's outputs "
                                       "for the same calls are compared in hub.json"})
    return outputs, None

