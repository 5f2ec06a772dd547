"""The AI Hub double's device farm: one worker thread that runs the submitted jobs in order.

compile   (--target_runtime precompiled_qnn_onnx): the project's local QNN compiler for the SoC of the device's
          chipset attribute; the result is packed the way AI Hub ships a precompiled QNN ONNX: a zipped
          ``job_<id>_optimized_onnx.onnx/`` folder with the EPContext model and ``<name>_qairt_context.bin``.
profile   the target model on the host HTP simulator: cold and warm session loads, ``--max_profiler_iterations``
          timed runs (microseconds, as AI Hub reports them), per-layer compute units (the operators inside the
          context binary on the NPU, the nodes the EPContext model leaves to ONNX Runtime on the CPU). Memory is
          not measurable here: its ranges are derived from the context binary's size.
inference the target model on the simulator for every sample of the input dataset (h5, the client's own format);
          the outputs become a new dataset.
"""

from __future__ import annotations

import queue
import shlex
import statistics
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np
import onnx
import qai_hub.public_api_pb2 as pb
from qai_hub.util.dataset_entries_converters import dataset_entries_to_h5, h5_to_dataset_entries

from hub_double.server import Dataset, Job

if TYPE_CHECKING:
    from hub_double.server import HubDouble, Model

DONE, FAILED = pb.JobState.JOB_STATE_DONE, pb.JobState.JOB_STATE_FAILED
RUNNING = {"compile": [pb.JobState.JOB_STATE_OPTIMIZING_MODEL],
           "profile": [pb.JobState.JOB_STATE_PROVISIONING_DEVICE, pb.JobState.JOB_STATE_MEASURING_PERFORMANCE],
           "inference": [pb.JobState.JOB_STATE_PROVISIONING_DEVICE, pb.JobState.JOB_STATE_RUNNING_INFERENCE]}
#: ONNX element type -> AI Hub tensor dtype
DTYPES = {1: pb.TensorDtype.TENSOR_DTYPE_FLOAT32, 10: pb.TensorDtype.TENSOR_DTYPE_FLOAT16,
          7: pb.TensorDtype.TENSOR_DTYPE_INT64, 6: pb.TensorDtype.TENSOR_DTYPE_INT32,
          2: pb.TensorDtype.TENSOR_DTYPE_UINT8, 3: pb.TensorDtype.TENSOR_DTYPE_INT8,
          4: pb.TensorDtype.TENSOR_DTYPE_UINT16, 5: pb.TensorDtype.TENSOR_DTYPE_INT16,
          9: pb.TensorDtype.TENSOR_DTYPE_BOOL}
#: the reference board has the phone's SoC (SM8750) without the "for Galaxy" clock bin
EXTRA_CHIPSETS = {"qualcomm-snapdragon-8-elite": "s25u"}
MIB = 1 << 20


class JobFailure(Exception):
    """Ends the job FAILED with this message as its failure reason."""


def parse_options(options: str) -> dict[str, str]:
    words = shlex.split(options)
    parsed = {}
    for i, word in enumerate(words):
        if word.startswith("--"):
            key, _, value = word[2:].partition("=")
            if not value and i + 1 < len(words) and not words[i + 1].startswith("--"):
                value = words[i + 1]
            parsed[key] = value
    return parsed


def graph_specs(values) -> list[tuple[str, tuple[int, ...], int]]:
    return [(v.name, tuple(d.dim_value for d in v.type.tensor_type.shape.dim),
             DTYPES.get(v.type.tensor_type.elem_type, pb.TensorDtype.TENSOR_DTYPE_FLOAT32)) for v in values]


class Worker:
    def __init__(self, hub: HubDouble) -> None:
        self.hub = hub
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.parked: list[str] = []
        self._thread = threading.Thread(target=self._loop, name="hub-double-worker", daemon=True)
        self._unpacked: dict[str, Path] = {}

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.queue.put(None)
        self._thread.join(timeout=30)

    def submit(self, job_id: str) -> None:
        self.queue.put(job_id)

    def release(self) -> None:
        parked, self.parked = self.parked, []
        for job_id in parked:
            self.queue.put(job_id)

    def _loop(self) -> None:
        while (job_id := self.queue.get()) is not None:
            job = self.hub.jobs[job_id]
            try:
                if self._run(job):
                    job.set_state(DONE)
            except JobFailure as e:
                job.failure = str(e)
                job.set_state(FAILED)
            except Exception as e:  # a bug of the double or of the model: still a failed job, never a hang
                job.failure = f"Internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                job.set_state(FAILED)

    def _run(self, job: Job) -> bool:
        if job.state == pb.JobState.JOB_STATE_CREATED:
            for state in RUNNING[job.kind]:
                job.set_state(state)
        if any(key in job.name for key in self.hub.stall):
            self.parked.append(job.id)
            return False
        message = next((m for key, m in self.hub.fail.items() if key in job.name), None)
        if message:
            raise JobFailure(message)
        {"compile": self._compile, "profile": self._profile, "inference": self._inference}[job.kind](job)
        return True

    # -- helpers --------------------------------------------------------------------------------------------

    def _target(self, job: Job):
        from fraqat_deploy.targets import TARGETS, get_target

        chipset = next((a.split(":", 1)[1] for a in job.device[2] if a.startswith("chipset:")), "")
        if chipset in EXTRA_CHIPSETS:
            return get_target(EXTRA_CHIPSETS[chipset])
        target = next((t for t in TARGETS if t.hub_chipset == chipset), None)
        if target is None:
            raise JobFailure(f"Device '{job.device[0]}' ({chipset}) has no Hexagon HTP this double can compile for.")
        return target

    def _check_qairt(self, job: Job) -> None:
        from fraqat_deploy.compile.htp import qnn_versions

        wanted = parse_options(job.options).get("qairt_version")
        local = qnn_versions()["qnn_sdk"] or ""
        if wanted and wanted not in ("latest", "default") and not (local + ".").startswith(wanted + "."):
            raise JobFailure(f"QAIRT version {wanted} is not available (this service has {local}).")

    def _unpack(self, model: Model) -> Path:
        """The model's .onnx file (a directory model is unzipped once)."""
        if not model.is_directory:
            return model.blob
        if model.id not in self._unpacked:
            folder = self.hub.root / "unpacked" / model.id
            with zipfile.ZipFile(model.blob) as archive:
                archive.extractall(folder)
            onnx_files = sorted(p for p in folder.rglob("*.onnx") if p.is_file())
            if len(onnx_files) != 1:
                raise JobFailure(f"Model '{model.id}' must hold exactly one .onnx file.")
            self._unpacked[model.id] = onnx_files[0]
        return self._unpacked[model.id]

    # -- compile --------------------------------------------------------------------------------------------

    def _compile(self, job: Job) -> None:
        from fraqat_deploy.compile.htp import qnn_versions
        from fraqat_deploy.compile.local import compile_onnx
        from fraqat_deploy.errors import FraqatError

        runtime = parse_options(job.options).get("target_runtime", "tflite")
        if runtime != "precompiled_qnn_onnx":
            raise JobFailure(f"Target runtime '{runtime}' is not offered by this double (precompiled_qnn_onnx is).")
        self._check_qairt(job)
        target = self._target(job)
        source = self._unpack(self.hub.models[job.model_id])
        graph = onnx.load(str(source), load_external_data=False).graph
        expected = graph_specs(graph.input)
        if job.input_specs and [tuple(s) for s in job.input_specs] != expected:
            raise JobFailure(f"Input specs {job.input_specs} do not match the model's inputs {expected}.")
        with tempfile.TemporaryDirectory(dir=self.hub.root) as tmp:
            try:
                record = compile_onnx(source, Path(tmp), target)
            except FraqatError as e:
                raise JobFailure(f"Compilation failed: {e.message}") from None
            base = f"job_{job.id}_optimized_onnx"
            ctx = onnx.load(str(Path(tmp) / record["ctx_onnx"]), load_external_data=False)
            renamed = {old: f"{base}_qairt_context{'' if i == 0 else f'_{i}'}.bin"
                       for i, old in enumerate(record["context_binaries"])}
            for node in ctx.graph.node:
                for attr in node.attribute:
                    if node.op_type == "EPContext" and attr.name == "ep_cache_context" and attr.s.decode() in renamed:
                        attr.s = f"./{renamed[attr.s.decode()]}".encode()
            blob = self.hub.root / "models" / f"{base}.onnx.zip"
            blob.parent.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(blob, "w", zipfile.ZIP_DEFLATED) as archive:
                archive.writestr(f"{base}.onnx/{base}.onnx", ctx.SerializeToString())
                for old, new in renamed.items():
                    archive.write(Path(tmp) / old, f"{base}.onnx/{new}")
        versions = qnn_versions()
        target_model = self.hub.models[job.target_model_id]
        target_model.blob, target_model.filename, target_model.complete = blob, blob.name, True
        keys = pb.ModelMetadataKey
        target_model.metadata = {keys.MODEL_METADATA_KEY_QAIRT_SDK_VERSION: versions["qnn_build"] or "",
                                 keys.MODEL_METADATA_KEY_QNN_SDK_VERSION: versions["qnn_build"] or "",
                                 keys.MODEL_METADATA_KEY_QNN_CONTEXT_BIN_SOC_MODEL: str(target.soc_model),
                                 keys.MODEL_METADATA_KEY_QNN_CONTEXT_BIN_HEXAGON_VERSION: target.htp_arch[1:]}
        target_model.input_spec = graph_specs(ctx.graph.input)
        target_model.output_spec = graph_specs(ctx.graph.output)

    # -- profile and inference ------------------------------------------------------------------------------

    def _session(self, job: Job):
        from fraqat_deploy.compile.htp import htp_session

        self._check_qairt(job)
        ctx = self._unpack(self.hub.models[job.model_id])
        return ctx, htp_session(ctx, self._target(job), allow_cpu_fallback=True)

    def _profile(self, job: Job) -> None:
        from fraqat_deploy.compile.htp import htp_session, qnn_versions

        iterations = int(parse_options(job.options).get("max_profiler_iterations", 100))
        started = time.perf_counter()
        ctx, session = self._session(job)
        cold_us = int((time.perf_counter() - started) * 1e6)
        started = time.perf_counter()
        htp_session(ctx, self._target(job), allow_cpu_fallback=True)
        warm_us = int((time.perf_counter() - started) * 1e6)
        rng = np.random.default_rng(0)
        feed = {}
        for value in session.get_inputs():
            shape = [d if isinstance(d, int) else 1 for d in value.shape]
            # random floats; integer inputs (token ids, masks) as ones: always valid indices and masks
            feed[value.name] = (rng.standard_normal(shape).astype(np.float32) if value.type == "tensor(float)"
                                else np.ones(shape, dtype=np.int64 if value.type == "tensor(int64)" else np.int32))
        times = []
        for _ in range(max(1, iterations)):
            started = time.perf_counter()
            session.run(None, feed)
            times.append(int((time.perf_counter() - started) * 1e6))
        detail = pb.ProfileDetail(major_version=1, minor_version=2, execution_time=int(statistics.median(times)),
                                  cold_load_time=cold_us, warm_load_time=warm_us, all_execution_times=times,
                                  all_cold_load_times=[cold_us], all_warm_load_times=[warm_us])
        binary_bytes = sum(p.stat().st_size for p in ctx.parent.glob("*.bin"))
        peak = (binary_bytes + 6 * MIB, binary_bytes + 8 * MIB)  # derived, not measured (see the module doc)
        for usage, (lo, hi) in ((detail.execution_memory, peak), (detail.cold_load_memory, peak),
                                (detail.warm_load_memory, peak)):
            usage.peak.lower, usage.peak.upper = lo, hi
            usage.increase.lower, usage.increase.upper = lo - 4 * MIB, hi - 4 * MIB
        detail.after_execution_peak_memory = peak[1]
        detail.after_cold_load_peak_memory = peak[1]
        detail.layer_details.extend(self._layers(job, ctx))
        versions = qnn_versions()
        detail.tool_versions.extend([pb.ToolVersion(name="QAIRT", version=versions["qnn_build"] or ""),
                                     pb.ToolVersion(name="onnxruntime", version=versions["onnxruntime"] or "")])
        job.profile = detail

    def _layers(self, job: Job, ctx: Path) -> list[pb.LayerDetail]:
        """NPU: the compute operators of the graph the context binary was compiled from (its Q/DQ nodes fold
        into them); CPU: the nodes the EPContext model leaves to ONNX Runtime."""
        layers = []
        model = self.hub.models[job.model_id]
        producer = self.hub.jobs.get(model.producer_id)
        if producer is not None:
            source = onnx.load(str(self._unpack(self.hub.models[producer.model_id])), load_external_data=False)
            for node in source.graph.node:
                if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
                    layers.append(pb.LayerDetail(name=node.name, layer_type_name=node.op_type, id=node.name,
                                                 compute_unit=pb.ComputeUnit.COMPUTE_UNIT_NPU, delegate_name="QNN"))
        for node in onnx.load(str(ctx), load_external_data=False).graph.node:
            if node.op_type != "EPContext":
                layers.append(pb.LayerDetail(name=node.name, layer_type_name=node.op_type, id=node.name,
                                             compute_unit=pb.ComputeUnit.COMPUTE_UNIT_CPU))
        return layers

    def _inference(self, job: Job) -> None:
        _, session = self._session(job)
        with h5py.File(self.hub.datasets[job.dataset_id].blob, "r") as h5:
            entries = h5_to_dataset_entries(h5)
        names = [i.name for i in session.get_inputs()]
        if list(entries) != names:
            raise JobFailure(f"The dataset's inputs {list(entries)} do not match the model's inputs {names}.")
        outputs = [o.name for o in session.get_outputs()]
        results: dict[str, list[np.ndarray]] = {name: [] for name in outputs}
        for i in range(len(entries[names[0]])):
            for name, array in zip(outputs, session.run(outputs, {n: entries[n][i] for n in names}), strict=True):
                results[name].append(np.asarray(array))
        dataset = Dataset(self.hub.new_id("d"), f"job_{job.id}_output", time.time(), complete=True)
        dataset.blob = self.hub.root / "datasets" / f"{dataset.id}.h5"
        dataset.blob.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(dataset.blob, "w") as h5:
            dataset_entries_to_h5(results, h5)
        with self.hub.lock:
            self.hub.datasets[dataset.id] = dataset
        job.output_dataset_id = dataset.id
