"""The app's Python counterpart: runs one benchmark request on the host HTP simulator.

It does what ``BenchmarkActivity`` does on the phone (``docs/design.md``, "The phone protocol"): read
``runs/<id>/request.json`` under the files folder, check the model files, open each compiled component, warm up,
run, rewrite ``status.json`` as it goes, and write ``result.json`` (through a temporary file and a rename) with
images beside it. A failure it can name (missing model, out of memory, HTP error, full storage) still ends in a
``result.json`` that carries the error. ``fraqat-deploy bench --device sim`` starts it as a process; the tests'
virtual phone starts it when the CLI sends ``am start`` to the app.

Its timings are host-simulator timings and its memory the host process's: the result says so
(``device.runtime = "htp-simulator"``), and nothing reports them as phone figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fraqat_deploy.device import pipeline as pipe
from fraqat_deploy.device.protocol import SCHEMA_VERSION, ProtocolError, summarize, validate
from fraqat_deploy.runs import sha256_file, write_json_atomic

DTYPES = {"float32": np.float32, "int64": np.int64, "int32": np.int32}
#: opens a compiled component (its _ctx.onnx path) and returns run(feed) -> outputs
Opener = Callable[[Path, Mapping[str, Any]], Callable[[Mapping[str, np.ndarray]], list[np.ndarray]]]


class BenchError(Exception):
    """An error the result reports: ``kind`` is one of the result schema's error kinds."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def simulator_device() -> dict[str, Any]:
    from fraqat_deploy.compile.htp import qnn_versions

    versions = qnn_versions()
    return {"manufacturer": "host", "model": f"QNN HTP simulator ({platform.machine()})", "soc": "simulated",
            "android_sdk": None, "runtime": "htp-simulator", "qnn_version": versions.get("qnn_build"),
            "onnxruntime_version": versions.get("onnxruntime")}


def open_on_simulator(ctx_onnx: Path, request: Mapping[str, Any]):
    """A session on the host HTP simulator for the request's SoC (the boundary conversions stay on the CPU)."""
    from fraqat_deploy.compile.htp import htp_session
    from fraqat_deploy.targets import TARGETS

    soc_model = int(request["model"].get("soc_model", 69))
    target = next((t for t in TARGETS if t.soc_model == soc_model), None)
    if target is None:
        raise BenchError("htp_unavailable", f"no known target has soc_model {soc_model}")
    try:
        session = htp_session(ctx_onnx, target, allow_cpu_fallback=True)
    except Exception as e:  # the EP raises RuntimeError-like Fail objects
        raise BenchError("htp_error", f"cannot open {ctx_onnx.name} on the HTP: {str(e).splitlines()[0]}") from e
    names = [o.name for o in session.get_outputs()]
    return lambda feed: session.run(names, dict(feed))


def peak_rss_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


class Engine:
    def __init__(self, files_dir: Path, request_path: Path, *, device: Mapping[str, Any] | None = None,
                 opener: Opener = open_on_simulator) -> None:
        self.files_dir = Path(files_dir)
        self.request_path = Path(request_path)
        self.out_dir = self.request_path.parent
        self.device = dict(device) if device is not None else simulator_device()
        self.opener = opener
        self.request: dict[str, Any] = {}
        self.request_id = self.out_dir.name
        self.resolution: list[int] | None = None
        self.embedding = None  # Gemma's host-side table, for graphs that take inputs_embeds

    # -- status and result ----------------------------------------------------------------------------------

    def status(self, state: str, done: int, total: int, message: str = "") -> None:
        write_json_atomic(self.out_dir / "status.json", {
            "schema_version": SCHEMA_VERSION, "request_id": self.request_id, "state": state, "done": done,
            "total": total, "message": message, "updated_ms": int(time.time() * 1000)})

    def _result(self, **fields: Any) -> dict[str, Any]:
        config = self.request.get("config", {})
        pipeline = self.request.get("pipeline", {})
        return {
            "schema_version": SCHEMA_VERSION, "request_id": self.request_id, "status": "ok", "error": None,
            "device": self.device,
            "model": {"name": self.request.get("model", {}).get("name", "?"),
                      "components": {name: {"sha256": c["files"][0]["sha256"] if c.get("files") else ""}
                                     for name, c in self.request.get("model", {}).get("components", {}).items()}},
            "config": {"warmup": int(config.get("warmup", 0)), "runs": int(config.get("runs", 1)),
                       "steps": pipeline.get("steps"), "resolution": self.resolution,
                       "performance_mode": config.get("performance_mode"),
                       "prompts": len(self.request.get("prompts", []))},
            "timings_ms": {"init": None, "first_inference": None, "components": {}, "end_to_end": None},
            "memory_mb": {"peak_pss": None, "peak_rss": peak_rss_mb(), "native_heap": None,
                          "source": "host process VmHWM (simulator)" if self.device["runtime"] == "htp-simulator"
                          else "app"},
            "thermal": {"before": None, "after": None},
            "outputs": [], "errors": [],
        } | fields

    def write_result(self, result: dict[str, Any]) -> Path:
        validate("result", result)
        path = self.out_dir / "result.json"
        write_json_atomic(path, result)
        return path

    # -- the work -------------------------------------------------------------------------------------------

    def _load_request(self) -> None:
        try:
            self.request = json.loads(self.request_path.read_text())
        except FileNotFoundError:
            raise BenchError("invalid_request", f"no request at {self.request_path}") from None
        except json.JSONDecodeError as e:
            raise BenchError("invalid_request", f"request.json is not JSON: {e}") from None
        try:
            validate("request", self.request)
        except ProtocolError as e:
            raise BenchError("invalid_request", str(e)) from None
        self.request_id = self.request["id"]

    def _check_files(self) -> None:
        model = self.request["model"]
        entries = [(name, f) for name, component in model["components"].items() for f in component["files"]]
        entries += [("embedding", model["embedding"])] if "embedding" in model else []
        for name, f in entries:
            path = self.files_dir / f["path"]
            if not path.is_file():
                raise BenchError("model_missing", f"{name}: {f['path']} is not on the device")
            if path.stat().st_size != f["bytes"] or sha256_file(path) != f["sha256"]:
                raise BenchError("model_missing", f"{name}: {f['path']} differs from the pushed model")

    def _embedding(self):
        """The request's embedding table (memory-mapped) when its Gemma graphs take inputs_embeds, else None."""
        from fraqat_deploy.errors import FraqatError
        from fraqat_deploy.models.gemma_graphs import TableFile

        pipeline, model = self.request["pipeline"], self.request["model"]
        if not pipe.takes_embeds(pipeline):
            return None
        if "embedding" not in model:
            raise BenchError("invalid_request", "the Gemma graphs take inputs_embeds but the request names no "
                                                "embedding table (model.embedding)")
        try:
            return TableFile(self.files_dir / model["embedding"]["path"])
        except FraqatError as e:
            raise BenchError("model_missing", str(e)) from None

    def _tensors(self, prompt: Mapping[str, Any]) -> dict[str, np.ndarray]:
        tensors = {}
        for name, t in prompt["tensors"].items():
            path = self.files_dir / t["path"]
            if not path.is_file():
                raise BenchError("model_missing", f"input tensor {t['path']} is not on the device")
            array = np.fromfile(path, dtype=DTYPES[t["dtype"]])
            if array.size != int(np.prod(t["shape"])):
                raise BenchError("invalid_request", f"{t['path']} holds {array.size} values, not {t['shape']}")
            tensors[name] = array.reshape(t["shape"])
        return tensors

    def run(self) -> Path:
        try:
            return self._run()
        except BenchError as e:
            return self.write_result(self._result(status="error", error={"kind": e.kind, "message": str(e)},
                                                  errors=[str(e)]))
        except MemoryError:
            return self.write_result(self._result(status="error", error={
                "kind": "out_of_memory", "message": "out of memory while running the model"},
                errors=["out of memory"]))
        # any other error (a full disk included: then nothing can be written) ends the process without a
        # result, and the host reports the app's death with its log

    def _run(self) -> Path:
        self.status("loading", 0, 0, "reading the request")
        self._load_request()
        self._check_files()
        request = self.request
        config, pipeline = request["config"], request["pipeline"]
        started = time.perf_counter()
        sessions = {name: self.opener(self.files_dir / c["onnx"], request)
                    for name, c in request["model"]["components"].items()}
        init_ms = (time.perf_counter() - started) * 1000.0

        def run(component: str, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
            if component not in sessions:
                raise BenchError("invalid_request", f"the pipeline needs a '{component}' component")
            return sessions[component](feed)

        self.embedding = self._embedding()
        prompts = [(p, self._tensors(p)) for p in request["prompts"]]
        warmup, runs = int(config["warmup"]), int(config["runs"])
        total = (warmup + runs) * len(prompts)
        component_ms: dict[str, list[float]] = {}
        end_to_end: list[float] = []
        first_inference = None
        outputs: list[dict[str, Any]] = []
        done = 0
        for i in range(warmup + runs):
            measured = i >= warmup
            self.status("running" if measured else "warmup", done, total,
                        f"{'run' if measured else 'warm-up'} {i + 1 - (warmup if measured else 0)}")
            for k, (prompt, tensors) in enumerate(prompts):
                timed = pipe.Timed()
                t0 = time.perf_counter()
                output = self._generate(run, pipeline, tensors, timed, prompt, k, last=i == warmup + runs - 1)
                elapsed = (time.perf_counter() - t0) * 1000.0
                if first_inference is None:
                    first_inference = elapsed
                if measured:
                    end_to_end.append(elapsed)
                    for name, calls in timed.calls.items():
                        component_ms.setdefault(name, []).extend(calls)
                if output is not None:
                    outputs.append(output)
                done += 1
        self.status("writing", done, total, "writing the result")
        result = self._result(
            timings_ms={"init": init_ms, "first_inference": first_inference,
                        "components": {n: summarize(v) for n, v in component_ms.items()},
                        "end_to_end": summarize(end_to_end)},
            outputs=outputs,
        )
        path = self.write_result(result)
        self.status("done", done, total, "done")
        return path

    def _generate(self, run, pipeline, tensors, timed, prompt, index: int, *, last: bool) -> dict[str, Any] | None:
        kind = pipeline["kind"]
        if kind == "sana":
            image = pipe.sana_generate(run, pipeline, tensors, timed)
            self.resolution = [int(image.shape[1]), int(image.shape[2])]
            if not last:
                return None
            images = self.out_dir / "images"
            images.mkdir(exist_ok=True)
            pipe.image_to_png(image, images / f"{index}.png")
            return {"prompt": prompt["text"], "seed": prompt["seed"], "image": f"images/{index}.png"}
        if kind == "gemma":
            tokens, seconds = pipe.gemma_generate(run, pipeline, tensors, timed, self.embedding)
            if not last:
                return None
            return {"prompt": prompt["text"], "seed": prompt["seed"], "tokens": tokens,
                    "tokens_per_second": len(tokens) / seconds if seconds > 0 else 0.0}
        raise BenchError("invalid_request", f"unknown pipeline kind '{kind}'")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run one fraqat-deploy benchmark request on the HTP simulator.")
    parser.add_argument("--files-dir", required=True, type=Path, help="the simulated app's files folder")
    parser.add_argument("--request", required=True, type=Path, help="request.json (absolute or under --files-dir)")
    args = parser.parse_args(argv)
    request = args.request if args.request.is_absolute() else args.files_dir / args.request
    Engine(args.files_dir, request).run()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
