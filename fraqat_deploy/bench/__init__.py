"""Benchmarks: send a compiled run to a device (a phone over adb, or the HTP simulator), bring back its results.

The host side of the phone protocol (``device/protocol.py``): build ``request.json`` and the input tensors, push
the compiled components (skipping files already there with the same hash, so a re-run after a failure resumes
the push), start the app, follow ``status.json``, pull ``result.json`` and the outputs into
``bench/<device>/<id>/``. A crash, a timeout or a lost connection ends with a one-line error after the app's log
is pulled; nothing already written is removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fraqat_deploy.device.link import DeviceLink
from fraqat_deploy.device.pipeline import takes_embeds, with_graph_rows
from fraqat_deploy.device.protocol import (
    MODELS_DIR,
    SCHEMA_VERSION,
    ProtocolError,
    run_dir,
    validate,
)
from fraqat_deploy.errors import ConfigError, DeviceError, InputError
from fraqat_deploy.runs import RunDir, read_json, sha256_file, write_json_atomic

DEFAULT_TIMEOUT_S = 1800.0
POLL_S = 0.2
#: how often --cooldown reads the thermal status
COOLDOWN_POLL_S = 5.0
#: how long an app that was never seen running may take to show up (or to leave its result)
NEVER_STARTED_S = 10.0


@dataclass
class BenchResult:
    out: Path
    result: dict[str, Any]
    pushed: list[str]
    skipped: list[str]


def new_bench_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + f"-{int(time.time() * 1000) % 1000:03d}"


def _compiled(run: Path, target: str) -> tuple[Path, dict[str, Any]]:
    folder = run / "compile" / target
    path = folder / "compile.json"
    if not path.is_file():
        raise InputError(f"{run} has no context binaries for {target}",
                         f"compile first: fraqat-deploy compile <model> --run {run} --device {target}")
    return folder, read_json(path, _compile_again(run, target))


def _compile_again(run: Path, target: str) -> str:
    return f"compile again: fraqat-deploy compile <model> --run {run} --device {target}"


def build_request(run: Path, link: DeviceLink, out: Path, bench_id: str, *, prompts: list[str], seed: int,
                  runs: int, warmup: int, steps: int | None = None, max_new_tokens: int | None = None,
                  performance_mode: str = "burst") -> tuple[dict[str, Any], dict[str, Path]]:
    """The request and the local files it names (remote path -> local file). Tensors are written under
    ``out/request/``."""
    from fraqat_deploy.compile.run import read_export
    from fraqat_deploy.train.load import load_trained

    folder, compiled = _compiled(run, link.target)
    components = compiled.get("components", {})
    if not components:
        raise InputError(f"{folder / 'compile.json'} lists no components", "re-run fraqat-deploy compile")
    export = read_export(run)
    trained = load_trained(run)
    bench_inputs = getattr(trained.adapter, "bench_inputs", None)
    if bench_inputs is None:
        raise ConfigError(f"the '{trained.adapter.name}' model cannot be benchmarked yet")
    options = {k: v for k, v in (("steps", steps), ("max_new_tokens", max_new_tokens)) if v is not None}
    pipeline, rows = bench_inputs(trained.fp, prompts, seed=seed, **options)
    pipeline = with_graph_rows(pipeline, export)
    files: dict[str, Path] = {}
    model_components: dict[str, Any] = {}
    for name in components:
        record = components[name]
        ctx = folder / Path(record["ctx_onnx"]).name
        local = [ctx] + [folder / Path(b).name for b in record.get("context_binaries", [])]
        missing = [f for f in local if not f.is_file()]
        if missing:
            raise InputError(f"{missing[0]} is missing", f"re-run fraqat-deploy compile --device {link.target} --force")
        digests = [sha256_file(f) for f in local]
        recorded = record.get("file_sha256") or {}
        for f, digest in zip(local, digests, strict=True):
            if recorded.get(f.name, digest) != digest:
                raise InputError(f"{f} is not the file the compile wrote (damaged or replaced)",
                                 _compile_again(run, link.target))
        # one folder per component build, named by the hash of its files (the ctx model finds its .bin beside it)
        folder_name = hashlib.sha256("".join(digests).encode()).hexdigest()[:16]
        entries = []
        for f, digest in zip(local, digests, strict=True):
            remote = f"{MODELS_DIR}/{name}-{folder_name}/{f.name}"
            files[remote] = f
            entries.append({"path": remote, "sha256": digest, "bytes": f.stat().st_size})
        model_components[name] = {"onnx": entries[0]["path"], "files": entries,
                                  "inputs": export["components"][name]["input_names"],
                                  "outputs": export["components"][name]["output_names"]}
    embedding = _embedding_file(run, export, pipeline)
    if embedding is not None:
        local, digest = embedding
        # one folder per table, named by its hash (a re-export with the same table reuses the pushed file)
        remote = f"{MODELS_DIR}/embedding-{digest[:16]}/{local.name}"
        files[remote] = local
        model_embedding = {"path": remote, "sha256": digest, "bytes": local.stat().st_size}
    tensor_dir = out / "request"
    tensor_dir.mkdir(parents=True, exist_ok=True)
    request_prompts = []
    for i, (text, tensors) in enumerate(zip(prompts, rows, strict=True)):
        entry = {}
        for name, array in tensors.items():
            array = np.ascontiguousarray(array)
            dtype = {np.dtype("float32"): "float32", np.dtype("int64"): "int64", np.dtype("int32"): "int32"}.get(
                array.dtype)
            if dtype is None:
                array, dtype = array.astype(np.float32), "float32"
            local = tensor_dir / f"p{i}_{name}.bin"
            array.astype(array.dtype.newbyteorder("<")).tofile(local)
            remote = f"{run_dir(bench_id)}/p{i}_{name}.bin"
            files[remote] = local
            entry[name] = {"path": remote, "dtype": dtype, "shape": [int(s) for s in array.shape]}
        request_prompts.append({"text": text, "seed": seed, "tensors": entry})
    request = {
        "schema_version": SCHEMA_VERSION, "id": bench_id, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": {"name": trained.adapter.name, "target": link.target,
                  "soc_model": int(next(iter(components.values()))["soc_model"]),
                  "qnn_version": (next(iter(components.values())).get("versions") or {}).get("qnn_build"),
                  "components": model_components} | ({"embedding": model_embedding} if embedding else {}),
        "pipeline": pipeline, "prompts": request_prompts,
        "config": {"warmup": warmup, "runs": runs, "performance_mode": performance_mode},
    }
    validate("request", request)
    write_json_atomic(out / "request.json", request)
    return request, files


def _embedding_file(run: Path, export: dict[str, Any], pipeline: dict[str, Any]) -> tuple[Path, str] | None:
    """The export's embedding table and its sha256 when the Gemma graphs take ``inputs_embeds``, else None."""
    if not takes_embeds(pipeline):
        return None
    record = export.get("files", {}).get("embedding")
    local = run / "export" / record["file"] if record else None
    if local is None or not local.is_file():
        raise InputError(f"{run / 'export'} has no embedding table for its inputs_embeds graphs",
                         f"export again: fraqat-deploy export <model> --run {run} --embedding host")
    if local.stat().st_size != record["bytes"]:
        raise InputError(f"{local} is not the table the export wrote (its size differs)",
                         f"export again: fraqat-deploy export <model> --run {run} --embedding host")
    return local, str(record["sha256"])


def push_files(link: DeviceLink, files: dict[str, Path], on_file: Callable[[str, bool], None] | None = None
               ) -> tuple[list[str], list[str]]:
    """Push what is not already on the device with the same hash. Returns (pushed, skipped)."""
    pushed, skipped = [], []
    for remote, local in files.items():
        if link.same_file(local, remote):
            skipped.append(remote)
        else:
            link.push(local, remote)
            pushed.append(remote)
        if on_file:
            on_file(remote, remote in pushed)
    return pushed, skipped


def _status(link: DeviceLink, remote_dir: str) -> dict[str, Any] | None:
    text = link.read_text(f"{remote_dir}/status.json")
    try:
        return json.loads(text) if text else None
    except json.JSONDecodeError:  # written through a rename, but be lenient with an app mid-update
        return None


def wait_for_result(link: DeviceLink, request_id: str, *, timeout_s: float,
                    on_status: Callable[[dict[str, Any]], None] | None = None,
                    crashes_before: int | None = None) -> dict[str, Any]:
    """Poll until ``result.json`` of *this* request appears, the app dies, or the timeout passes.
    ``crashes_before``: the device's crash count before the launch, so that an app that crashed before it was
    ever seen running is reported at once instead of after ``NEVER_STARTED_S``."""
    remote_dir = run_dir(request_id)
    started = time.monotonic()
    deadline = started + timeout_s
    seen_alive = False
    while True:
        text = link.read_text(f"{remote_dir}/result.json")
        if text:
            try:
                result = json.loads(text)
            except json.JSONDecodeError as e:
                raise DeviceError(f"the app wrote an unreadable result.json: {e}", "report this as an app bug") \
                    from None
            if result.get("request_id") == request_id:
                return result
        status = _status(link, remote_dir)
        if status and on_status and status.get("request_id") == request_id:
            on_status(status)
        alive = link.running()
        seen_alive = seen_alive or alive
        if not alive and seen_alive:
            # the result may have landed between the two reads
            text = link.read_text(f"{remote_dir}/result.json")
            if text and json.loads(text).get("request_id") == request_id:
                return json.loads(text)
            raise _AppDied()
        if not alive and not seen_alive and crashes_before is not None and link.crash_count() > crashes_before:
            raise _AppDied()  # crashed before the first look
        if not alive and time.monotonic() > started + NEVER_STARTED_S:
            raise _AppDied()  # never came up, or finished without a result before we looked
        if time.monotonic() > deadline:
            raise TimeoutError
        time.sleep(POLL_S)


class _AppDied(Exception):
    pass


def pull_outputs(link: DeviceLink, request_id: str, result: dict[str, Any], out: Path) -> list[Path]:
    pulled = []
    for output in result.get("outputs", []):
        rel = output.get("image")
        if rel:
            local = out / rel
            if link.pull(f"{run_dir(request_id)}/{rel}", local):
                pulled.append(local)
    return pulled


def bench(run: Path, link: DeviceLink, *, prompts: list[str], seed: int = 0, runs: int = 5, warmup: int = 1,
          steps: int | None = None, max_new_tokens: int | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
          cooldown: bool = False, apk: Path | None = None, bench_id: str | None = None,
          on_event: Callable[[str, dict[str, Any]], None] | None = None) -> BenchResult:
    """Run the compiled model of ``run`` on ``link``'s device; results in ``run/bench/<label>/<id>/``."""
    run = Path(run)
    if runs < 1 or warmup < 0:
        raise ConfigError(f"--runs must be >= 1 and --warmup >= 0 (got {runs}, {warmup})")
    if not prompts:
        raise ConfigError("no prompt given", "pass --prompt \"...\"")
    event = on_event or (lambda kind, data: None)
    bench_id = bench_id or new_bench_id()
    rd = RunDir(run)
    stage = f"bench/{link.label}"
    made = not (rd.path / stage / bench_id).exists()
    out = rd.stage_dir(f"{stage}/{bench_id}")
    try:
        link.prepare(apk)
        request, files = build_request(run, link, out, bench_id, prompts=prompts, seed=seed, runs=runs,
                                       warmup=warmup, steps=steps, max_new_tokens=max_new_tokens)
    except BaseException:  # a refusal (nothing compiled, no app, a changed binary) leaves no folders behind
        if made:
            shutil.rmtree(out, ignore_errors=True)
        prune_empty(rd.path / "bench")
        raise
    rd.update_stage(stage, "running", id=bench_id, device=link.label, target=link.target)
    request_remote = f"{run_dir(bench_id)}/request.json"
    files[request_remote] = out / "request.json"
    event("push", {"files": len(files)})
    try:
        pushed, skipped = push_files(link, files, lambda remote, sent: event("pushed", {"remote": remote,
                                                                                          "sent": sent}))
        # .started: the app's claim on a request (one request runs once, across activity re-creations)
        for stale in ("result.json", "status.json", ".started"):
            link.remove(f"{run_dir(bench_id)}/{stale}")
        if cooldown:
            _cool_down(link, event)
        thermal_before = link.thermal_status()
        event("start", {"id": bench_id})
        crashes_before = link.crash_count()
        link.start(request_remote)
        try:
            result = wait_for_result(link, bench_id, timeout_s=timeout_s,
                                     on_status=lambda status: event("status", status), crashes_before=crashes_before)
        except _AppDied:
            _keep_logs(link, out)
            rd.update_stage(stage, "failed", id=bench_id, reason="the app died")
            raise DeviceError(f"the app stopped without a result (log in {out / 'logcat.txt'})",
                              "read the log; re-run the same command to retry (pushed files are reused)") from None
        except TimeoutError:
            _keep_logs(link, out)
            link.stop()
            rd.update_stage(stage, "failed", id=bench_id, reason=f"timeout after {timeout_s:.0f} s")
            raise DeviceError(f"no result after {timeout_s:.0f} s (log in {out / 'logcat.txt'})",
                              "raise --timeout, or read the log") from None
        memory = link.memory()
        thermal_after = link.thermal_status()
    except DeviceError:
        raise
    except ConnectionError as e:
        rd.update_stage(stage, "failed", id=bench_id, reason=f"connection lost: {e}")
        raise DeviceError(f"lost the connection to {link.label}: {e}",
                          "reconnect the phone and re-run the same command (files already pushed are reused)") \
            from None
    try:
        validate("result", result)
    except ProtocolError as e:
        write_json_atomic(out / "result.json", result)
        raise DeviceError(f"the app's result does not follow the protocol: {e}",
                          "install the app version that matches this CLI") from None
    result["thermal"] = merge_thermal(result["thermal"], thermal_before, thermal_after)
    for key, value in memory.items():
        if value is not None and result["memory_mb"].get(key) is None:
            result["memory_mb"][key] = value
    pull_outputs(link, bench_id, result, out)
    result = _decode_texts(run, result)
    write_json_atomic(out / "result.json", result)
    _keep_logs(link, out)
    if result["status"] != "ok":
        rd.update_stage(stage, "failed", id=bench_id, reason=result["error"]["message"])
        raise DeviceError(f"the app reports {result['error']['kind']}: {result['error']['message']}",
                          _error_fix(result["error"]["kind"]))
    rd.update_stage(stage, "done", id=bench_id, result=str((out / "result.json").relative_to(run)),
                    pushed=len(pushed), skipped=len(skipped))
    return BenchResult(out, result, pushed, skipped)


def prune_empty(folder: Path) -> None:
    """Remove ``folder`` and the folders under it that hold no file."""
    if not folder.is_dir():
        return
    for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            sub.rmdir()
    with contextlib.suppress(OSError):
        folder.rmdir()


def merge_thermal(app: dict, host_before: int | None, host_after: int | None) -> dict:
    """The app's own thermal readings, with only what it could not read filled in from the host's `thermal.sh`.

    The app reads PowerManager at the start and the end of its own run; the host reads before `am start` and after the
    result arrived, which spans more than the run: an app reading is never replaced. `source` says who measured.
    """
    merged = {"before": app.get("before"), "after": app.get("after")}
    sources = {"app"} if merged["before"] is not None or merged["after"] is not None else set()
    for key, host in (("before", host_before), ("after", host_after)):
        if merged[key] is None and host is not None:
            merged[key] = host
            sources.add("host")
    if sources:
        merged["source"] = "+".join(s for s in ("app", "host") if s in sources)
    return merged


def _error_fix(kind: str) -> str:
    return {
        "model_missing": "re-run the bench: it pushes the model again",
        "out_of_memory": "close other apps, or bench a smaller model or resolution",
        "htp_unavailable": "this phone's HTP cannot run the model: check the SoC and the QNN libraries in the app",
        "htp_error": "check that the app's QNN version matches compile.json's (README, Android app)",
        "storage_full": "free storage on the phone",
        "invalid_request": "install the app version that matches this CLI",
    }.get(kind, "read logcat.txt beside result.json")


def _keep_logs(link: DeviceLink, out: Path) -> None:
    try:
        (out / "logcat.txt").write_text(link.logs())
    except (ConnectionError, OSError):
        pass


def _cool_down(link: DeviceLink, event, limit_s: float = 900.0) -> None:
    deadline = time.monotonic() + limit_s
    while (status := link.thermal_status()) not in (None, 0):
        event("cooldown", {"thermal": status})
        if time.monotonic() > deadline:
            raise DeviceError(f"the phone is still at thermal status {status} after {limit_s:.0f} s",
                              "let it cool down, or run without --cooldown")
        time.sleep(COOLDOWN_POLL_S)


def _decode_texts(run: Path, result: dict[str, Any]) -> dict[str, Any]:
    """Gemma's app returns token ids; the text is decoded here with the model's own tokenizer."""
    if not any("tokens" in o and "text" not in o for o in result.get("outputs", [])):
        return result
    from fraqat_deploy.train.load import load_trained

    tokenizer = load_trained(run).fp.parts["tokenizer"]
    for output in result["outputs"]:
        if "tokens" in output and "text" not in output:
            output["text"] = output["prompt"] + tokenizer.decode(output["tokens"], skip_special_tokens=True)
    return result
