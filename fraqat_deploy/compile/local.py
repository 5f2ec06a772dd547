"""Local compile back end: a Q/DQ ONNX -> an EPContext model (``<stem>_ctx.onnx`` + ``<stem>_ctx_qnn.bin``).

onnxruntime-qnn's HTP graph preparer runs on the host and writes a QNN context binary for the target's
``soc_model``; the EPContext model next to it is what ONNX Runtime (and the Android app) opens on the phone.

How an operator that cannot run on the HTP is found and named: ONNX Runtime's own "fallback disabled" error
does not name the node (only its log does). So the compile always runs with CPU fallback *allowed*, and the
nodes of the written EPContext model that are not EPContext nodes are exactly the ones left to the CPU; their
names are the input graph's (the compile runs with graph optimisations off). With fallback allowed the QNN
EP also moves the float <-> quantized conversions at the graph boundary (graph-input QuantizeLinear,
graph-output DequantizeLinear) to the CPU by design (``offload_graph_io_quantization``, on by default); those
are counted as "boundary", anything else as "fallback", and fallback fails the compile unless allowed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from fraqat_deploy.compile.htp import (
    compare_arrays,
    cpu_session,
    htp_session,
    native_noise_filtered,
    provider_options,
    qnn_versions,
    session_options,
)
from fraqat_deploy.device.app_versions import app_runtime
from fraqat_deploy.errors import ConfigError, InputError
from fraqat_deploy.runs import sha256_file
from fraqat_deploy.targets import Target, get_target

COMPILE_JSON = "compile.json"
COMPILE_FORMAT = 2  # bump when the record or the compile recipe changes: invalidates every cache entry
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
EP_CONTEXT_OP = "EPContext"

# HTP parity tolerance, per output (see ``htp_parity``).
PARITY_REL_TOL = 0.02
PARITY_STEPS_TOL = 2.0
PARITY_PEAK_TOL = 0.10
#: with the float graph at hand, the HTP may also differ from the CPU Q/DQ model by up to this many times the
#: Q/DQ model's own quantization error (vs the float graph): see ``htp_parity``
PARITY_NOISE_FACTOR = 2.5
#: outputs that reach the user only through a softmax over their last axis (a language model's logits). For them
#: what counts is the distribution: such an output also passes when the HTP moves it (KL divergence from the CPU
#: Q/DQ model's softmax, mean over positions) by at most ``noise_factor`` times what quantization itself moves it
#: (KL of the Q/DQ model from the float graph). Measured on a tiny-Gemma decode step: the HTP's logits 2.3% off the
#: CPU's (over the 2% rule) with KL 0.0002, against the quantization's own KL of 0.003.
SOFTMAX_OUTPUTS = frozenset({"logits"})


# ---------------------------------------------------------------- reading models


def load_model(path: str | Path, *, what: str = "ONNX model", stage: str = "export") -> onnx.ModelProto:
    """The graph of an ONNX file without its external weights; a missing or corrupt file is an InputError
    whose fix names the ``stage`` that writes the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(
            f"{what} not found: {path}",
            fix=f"check the path, or run `fraqat-deploy {stage}` to write it first",
        )
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError, RuntimeWarning or plain Exception depending on damage
        raise InputError(
            f"{path} is not a readable ONNX model ({type(exc).__name__}: {exc})",
            fix=f"re-run `fraqat-deploy {stage}` to write it again (the file is truncated or not ONNX)",
        ) from exc
    if not model.graph.node:
        raise InputError(f"{path} holds no graph nodes", fix=f"re-run `fraqat-deploy {stage}` to write it again")
    return model


def external_data_files(model: onnx.ModelProto, base_dir: Path) -> list[Path]:
    """The external data files the model's initializers point to (each once), checked to exist."""
    files: list[Path] = []
    for tensor in _all_initializers(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), None)
        if location is None:
            continue
        path = base_dir / location
        if path not in files:
            if not path.is_file():
                raise InputError(
                    f"external data file {path} of the ONNX model is missing",
                    fix="keep the .onnx and its external data file together (re-run `fraqat-deploy export`)",
                )
            files.append(path)
    return files


def _all_initializers(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    # Subgraphs (If/Loop bodies) are rare in our exports, but their weights are weights too.
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                tensors.extend(attr.g.initializer)
    return tensors


def save_graph_beside(model: onnx.ModelProto, folder: Path, ext_files: list[Path], name: str) -> Path:
    """Save a graph loaded without its external weights into ``folder``, with the external data files linked
    in beside it (not copied: they can be gigabytes) so the saved model resolves them."""
    for file in ext_files:
        link = folder / file.name
        if not link.exists():
            try:
                os.symlink(file.resolve(), link)
            except OSError:  # no symlinks (some Windows setups): copy instead
                shutil.copyfile(file, link)
    path = folder / name
    onnx.save(model, str(path))
    return path


def _with_unique_node_names(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """A copy whose nodes all have distinct names, or None when they already do. The CPU/HTP split is read
    back by node name, so unnamed or repeated names would make the coverage ambiguous."""
    names = [n.name for n in model.graph.node]
    if all(names) and len(set(names)) == len(names):
        return None
    named = onnx.ModelProto()
    named.CopyFrom(model)
    taken = set(names)
    for index, node in enumerate(named.graph.node):
        if not node.name or names.count(node.name) > 1:
            candidate = f"{node.op_type}_{index}"
            while candidate in taken:
                candidate += "_"
            node.name = candidate
            taken.add(candidate)
    return named


def model_digest(path: str | Path) -> str:
    """sha256 over the ONNX file and its external data files (names included)."""
    path = Path(path)
    model = load_model(path)
    digest = hashlib.sha256()
    for file in [path, *sorted(external_data_files(model, path.parent))]:
        digest.update(file.name.encode() + b"\0")
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def boundary_node_names(model: onnx.ModelProto) -> set[str]:
    """QuantizeLinear nodes fed by a graph input and DequantizeLinear nodes producing a graph output."""
    inputs = {i.name for i in model.graph.input}
    outputs = {o.name for o in model.graph.output}
    names = set()
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] in inputs:
            names.add(node.name)
        elif node.op_type == "DequantizeLinear" and node.output[0] in outputs:
            names.add(node.name)
    return names


def weight_stats(model: onnx.ModelProto) -> dict[str, Any]:
    """Weight elements: quantized weights (rank >= 2 initializers dequantized by a DequantizeLinear) and float
    weights (rank >= 2 float initializers used directly); biases, scales and zero points are not weights."""
    dq_data = {n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    quantized: Counter[str] = Counter()
    floating = 0
    for tensor in model.graph.initializer:
        if len(tensor.dims) < 2:
            continue
        count = int(np.prod(tensor.dims))
        if tensor.name in dq_data:
            quantized[onnx.TensorProto.DataType.Name(tensor.data_type).lower()] += count
        elif tensor.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16):
            floating += count
    return {
        "elements": sum(quantized.values()) + floating,
        "quantized_elements": dict(quantized),
        "float_elements": floating,
    }


# ---------------------------------------------------------------- compile


def first_line(exc: BaseException) -> str:
    """ONNX Runtime's messages span lines; the CLI prints one (the rest stays on the exception's cause)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _ep_context_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == EP_CONTEXT_OP]


def node_attr(node: onnx.NodeProto, name: str) -> Any:
    for attr in node.attribute:
        if attr.name == name:
            value = onnx.helper.get_attribute_value(attr)
            return value.decode() if isinstance(value, bytes) else value
    return None


def _fallback_error(fallback: list[dict[str, str]]) -> ConfigError:
    # Name the real operators first: the Q/DQ around them only fall back because their operator did.
    compute = [f for f in fallback if f["op_type"] not in QDQ_OPS] or fallback
    ops = ", ".join(f"{f['op_type']} ('{f['name']}')" for f in compute[:8])
    more = f" and {len(compute) - 8} more" if len(compute) > 8 else ""
    kinds = ", ".join(sorted({f["op_type"] for f in compute}))
    return ConfigError(
        f"{len(compute)} operator(s) cannot run on the HTP and would fall back to the CPU: {ops}{more}",
        fix=f"change the export so it does not emit {kinds} (or quantizes it), or pass --allow-cpu-fallback "
        "to run those operators on the phone's CPU",
    )


def compile_onnx(
    qdq_onnx: str | Path,
    out_dir: str | Path,
    target: Target | str,
    *,
    allow_cpu_fallback: bool = False,
    offload_io_quantization: bool = True,
) -> dict[str, Any]:
    """Compile a Q/DQ ONNX into ``out_dir/<stem>_ctx.onnx`` + ``<stem>_ctx_qnn.bin`` for ``target``'s SoC.

    Only the boundary float <-> quantized conversions may stay on the CPU; any other CPU node raises a
    ConfigError naming it, unless ``allow_cpu_fallback`` (then they are listed under ``fallback``).
    ``offload_io_quantization=False`` keeps the boundary conversions on the HTP too.
    Returns the compile record (what ``compile.json`` stores per component).
    """
    qdq_onnx = Path(qdq_onnx)
    out_dir = Path(out_dir)
    target = get_target(target) if isinstance(target, str) else target
    model = load_model(qdq_onnx)
    ext_files = external_data_files(model, qdq_onnx.parent)
    stem = qdq_onnx.stem
    ctx_name = f"{stem}_ctx.onnx"

    qnn_options = {"offload_graph_io_quantization": "1" if offload_io_quantization else "0"}
    so = session_options(target, allow_cpu_fallback=True, qnn_options=qnn_options)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Compile into a private folder inside out_dir: a failed compile leaves no half-written files, and the
    # final move is a rename on the same file system.
    tmp = Path(tempfile.mkdtemp(prefix=f".compile-{stem}-", dir=out_dir))
    try:
        named = _with_unique_node_names(model)
        source = qdq_onnx
        if named is not None:
            model = named
            source = save_graph_beside(named, tmp, ext_files, f"{stem}_named.onnx")
        started = time.perf_counter()
        compiler = ort.ModelCompiler(
            so,
            str(source),
            embed_compiled_data_into_model=False,
            # CPU-side weights of a large model must not be inlined past protobuf's 2 GB limit.
            # (the path must be relative: ONNX Runtime resolves it against the output model).
            external_initializers_file_path=f"{stem}_ctx.data" if ext_files else None,
        )
        try:
            with native_noise_filtered():
                compiler.compile_to_file(str(tmp / ctx_name))
        except Exception as exc:
            raise ConfigError(
                f"the QNN HTP compiler failed on {qdq_onnx.name} for {target.alias} "
                f"(soc_model {target.soc_model}): {first_line(exc)}",
                fix="run `fraqat-deploy debug-htp` on the component to find the operator, or change the export",
            ) from exc
        seconds = time.perf_counter() - started

        ctx_model = onnx.load(str(tmp / ctx_name), load_external_data=False)
        if ctx_model.ir_version > model.ir_version:
            # ONNX Runtime writes the EPContext model with its own newest IR version (14 on 1.32), which older
            # runtimes refuse ("Unsupported model IR version"): the app's ONNX Runtime (Android or the desktop
            # Java package) is older than the one compiling here. Nothing in it needs more than the export's.
            ctx_model.ir_version = model.ir_version
            onnx.save(ctx_model, str(tmp / ctx_name))
        in_nodes = {n.name: n for n in model.graph.node}
        # by name in the input graph, or by place in the result: the layout transformation (NCHW -> NHWC) can
        # rebuild the output DequantizeLinear under a generated name
        boundary_names = boundary_node_names(model) | boundary_node_names(ctx_model) if offload_io_quantization \
            else set()
        boundary: list[dict[str, str]] = []
        fallback: list[dict[str, str]] = []
        for node in ctx_model.graph.node:
            if node.op_type == EP_CONTEXT_OP:
                continue
            entry = {"op_type": node.op_type, "name": node.name}
            if node.name not in in_nodes:
                entry["note"] = "not in the input graph (created by ONNX Runtime)"
            (boundary if node.name in boundary_names else fallback).append(entry)
        if fallback and not allow_cpu_fallback:
            raise _fallback_error(fallback)

        ep_nodes = _ep_context_nodes(ctx_model)
        bins = sorted(
            {
                node_attr(n, "ep_cache_context")
                for n in ep_nodes
                if node_attr(n, "embed_mode") == 0 and node_attr(n, "main_context") in (1, None)
            }
            - {None}
        )
        produced = [ctx_name, *bins]
        if ext_files and (tmp / f"{stem}_ctx.data").exists():
            produced.append(f"{stem}_ctx.data")
        for name in produced:
            os.replace(tmp / name, out_dir / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    cpu_names = {e["name"] for e in boundary + fallback}
    htp_ops = Counter(n.op_type for n in model.graph.node if n.name not in cpu_names)
    cpu_ops = Counter(e["op_type"] for e in boundary + fallback)
    total = len(model.graph.node)
    htp = total - len([name for name in cpu_names if name in in_nodes])
    bin_bytes = sum((out_dir / b).stat().st_size for b in bins)
    weights = weight_stats(model)
    weights["bytes_per_weight"] = bin_bytes / weights["elements"] if weights["elements"] else None
    sdk = sorted({node_attr(n, "ep_sdk_version") for n in ep_nodes} - {None})
    return {
        "component": stem,
        "input": str(qdq_onnx),
        "ctx_onnx": ctx_name,
        "context_binaries": bins,
        "files": {name: (out_dir / name).stat().st_size for name in produced},
        "file_sha256": {name: sha256_file(out_dir / name) for name in produced},
        "context_binary_bytes": bin_bytes,
        "target": target.alias,
        "device": target.name,
        "soc": target.soc,
        "soc_model": target.soc_model,
        "htp_arch": target.htp_arch,
        "versions": dict(qnn_versions()) | {"ep_sdk_version": sdk[0] if len(sdk) == 1 else sdk or None},
        # what the Android app ships (device/app_versions.toml): bench checks the two agree
        "app_runtime": app_runtime(),
        "options": {
            "allow_cpu_fallback": allow_cpu_fallback,
            "offload_io_quantization": offload_io_quantization,
            "provider_options": provider_options(target, **qnn_options),
            "embed_mode": 0,
        },
        "coverage": {
            "nodes": total,
            "htp": htp,
            "cpu_boundary": len(boundary),
            "cpu_fallback": len(fallback),
            # Share of the nodes that could be on the HTP (all but the boundary) that are.
            "htp_fraction": min(1.0, htp / (total - len(boundary))) if total > len(boundary) else 1.0,
            "ep_context_partitions": len(ep_nodes),
            "htp_op_types": dict(sorted(htp_ops.items())),
            "cpu_op_types": dict(sorted(cpu_ops.items())),
        },
        "boundary": boundary,
        "fallback": fallback,
        "weights": weights,
        "seconds": round(seconds, 3),
        "cached": False,
    }


def _cache_key(digest: str, target: Target, options: Mapping[str, Any]) -> str:
    payload = {
        "format": COMPILE_FORMAT,
        "model_sha256": digest,
        "target": target.alias,
        "soc_model": target.soc_model,
        "options": dict(options),
        "versions": qnn_versions(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def read_compile_json(out_dir: str | Path) -> dict[str, Any]:
    path = Path(out_dir) / COMPILE_JSON
    if not path.is_file():
        return {"schema_version": COMPILE_FORMAT, "components": {}}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        # A damaged cache only costs a recompile.
        return {"schema_version": COMPILE_FORMAT, "components": {}}
    if not isinstance(data, dict) or not isinstance(data.get("components"), dict):
        return {"schema_version": COMPILE_FORMAT, "components": {}}
    return data


def _write_compile_json(out_dir: Path, data: dict[str, Any]) -> None:
    # Write then rename, so a reader never sees half a file.
    tmp = out_dir / f".{COMPILE_JSON}.tmp"
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, out_dir / COMPILE_JSON)


def outputs_intact(out_dir: Path, record: Mapping[str, Any]) -> bool:
    """Every file the compile wrote is there with its size and (when recorded) its sha256."""
    files = record.get("files") or {}
    digests = record.get("file_sha256") or {}
    return bool(files) and all(
        (out_dir / name).is_file() and (out_dir / name).stat().st_size == size
        and (name not in digests or sha256_file(out_dir / name) == digests[name])
        for name, size in files.items()
    )


def compile_cached(
    qdq_onnx: str | Path,
    out_dir: str | Path,
    target: Target | str,
    *,
    allow_cpu_fallback: bool = False,
    offload_io_quantization: bool = True,
    force: bool = False,
) -> dict[str, Any]:
    """``compile_onnx`` with a cache: ``out_dir/compile.json`` holds one record per component, keyed by the
    sha256 of the ONNX (and its external data), the target, the options and the ORT/QNN versions. An identical
    re-run returns the stored record with ``cached: true`` and does not run the compiler."""
    qdq_onnx = Path(qdq_onnx)
    out_dir = Path(out_dir)
    target = get_target(target) if isinstance(target, str) else target
    options = {"allow_cpu_fallback": allow_cpu_fallback, "offload_io_quantization": offload_io_quantization}
    digest = model_digest(qdq_onnx)
    key = _cache_key(digest, target, options)
    data = read_compile_json(out_dir)
    stem = qdq_onnx.stem
    previous = data["components"].get(stem)
    if not force and previous and previous.get("cache_key") == key and outputs_intact(out_dir, previous):
        return dict(previous) | {"cached": True}
    record = compile_onnx(
        qdq_onnx,
        out_dir,
        target,
        allow_cpu_fallback=allow_cpu_fallback,
        offload_io_quantization=offload_io_quantization,
    )
    record["cache_key"] = key
    record["input_sha256"] = digest
    data = read_compile_json(out_dir)  # re-read: another component may have been recorded meanwhile
    data["schema_version"] = COMPILE_FORMAT
    data["components"][stem] = record
    _write_compile_json(out_dir, data)
    return record


# ---------------------------------------------------------------- HTP parity


def output_steps(model: onnx.ModelProto, base_dir: Path) -> dict[str, float | None]:
    """For each graph output produced by a DequantizeLinear: its encoding step (scale; the largest one when
    per channel). None for outputs that are not dequantized."""
    inits = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    steps: dict[str, float | None] = {}
    for out in model.graph.output:
        node = producers.get(out.name)
        step = None
        if node is not None and node.op_type == "DequantizeLinear" and node.input[1] in inits:
            scale = onnx.numpy_helper.to_array(inits[node.input[1]], base_dir=str(base_dir))
            step = float(np.max(np.abs(scale)))
        steps[out.name] = step
    return steps


def _target_of_ctx(ctx_onnx: Path) -> Target:
    # The compile record next to the context model says which SoC it was built for.
    data = read_compile_json(ctx_onnx.parent)
    for record in data["components"].values():
        if record.get("ctx_onnx") == ctx_onnx.name and record.get("target"):
            return get_target(record["target"])
    return get_target("s25u")


def parity_verdict(
    metrics: Mapping[str, Any],
    *,
    rel_tol: float = PARITY_REL_TOL,
    steps_tol: float = PARITY_STEPS_TOL,
    peak_tol: float = PARITY_PEAK_TOL,
    max_abs_tol: float | None = None,
) -> tuple[bool, str]:
    """The HTP parity tolerance for one output.

    Pass when every element is within ``steps_tol`` output encoding steps (the HTP and the CPU may round an
    intermediate differently, which moves an output by a step or two), or else when the mean relative error is
    at most ``rel_tol`` (2%: the naive Sana export's 29% and 12% fail, the fixed export's 0.18% passes) and the
    largest error is at most ``peak_tol`` (10%) of the output's peak magnitude, so a few wild elements cannot
    hide behind a good mean. Non-finite HTP output always fails.
    """
    if not metrics["finite"]:
        return False, "the HTP output has NaN or Inf"
    step = metrics.get("step")
    if step and metrics["max_abs"] <= steps_tol * step:
        return True, f"max |error| {metrics['max_abs']:.3g} <= {steps_tol:g} steps of {step:.3g}"
    if metrics["rel"] > rel_tol:
        return False, f"relative error {metrics['rel']:.2%} > {rel_tol:.2%}"
    peak = metrics["ref_max_abs"]
    if metrics["max_abs"] > max(peak_tol * peak, max_abs_tol or 0.0):
        if max_abs_tol:
            return False, (f"max |error| {metrics['max_abs']:.3g} > {peak_tol:.0%} of the peak {peak:.3g} and > "
                           f"{max_abs_tol:.3g} (the quantization's own largest error, times the noise factor)")
        return False, f"max |error| {metrics['max_abs']:.3g} > {peak_tol:.0%} of the peak {peak:.3g}"
    return True, f"relative error {metrics['rel']:.2%} <= {rel_tol:.2%}, max |error| {metrics['max_abs']:.3g} in bound"


def _check_inputs(session: ort.InferenceSession, inputs: Mapping[str, np.ndarray], what: str) -> None:
    names = {i.name for i in session.get_inputs()}
    missing = sorted(names - set(inputs))
    extra = sorted(set(inputs) - names)
    if missing or extra:
        raise InputError(
            f"inputs do not match {what}: missing {missing or 'none'}, unexpected {extra or 'none'}",
            fix=f"pass exactly the model's inputs: {', '.join(sorted(names))}",
        )


def softmax_kl(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    """KL(softmax(p) || softmax(q)) over the last axis, mean over the other positions (nats)."""
    def log_softmax(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        x = x - x.max(axis=-1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))

    lp, lq = log_softmax(p_logits), log_softmax(q_logits)
    return float((np.exp(lp) * (lp - lq)).sum(axis=-1).mean())


def htp_parity(
    ctx_onnx: str | Path,
    qdq_onnx: str | Path,
    inputs: Mapping[str, np.ndarray],
    *,
    target: Target | str | None = None,
    rel_tol: float = PARITY_REL_TOL,
    steps_tol: float = PARITY_STEPS_TOL,
    peak_tol: float = PARITY_PEAK_TOL,
    float_onnx: str | Path | None = None,
    noise_factor: float = PARITY_NOISE_FACTOR,
    softmax_outputs: frozenset[str] = SOFTMAX_OUTPUTS,
) -> dict[str, Any]:
    """Run the compiled context binary on the host HTP simulator and the Q/DQ model on the CPU EP; compare
    each output (see ``parity_verdict`` for the tolerance). ``target`` defaults to the one in compile.json.

    ``float_onnx``: the float graph the Q/DQ model was made from (export's ``<component>.float.onnx``). With it,
    each output's relative tolerance is ``max(rel_tol, noise_factor * q)``, ``q`` being the Q/DQ
    model's own relative error against the float graph, and its largest error may reach ``noise_factor`` times the Q/DQ
    model's own largest error (or ``peak_tol`` of the peak, whichever is larger). The HTP requantizes every 8-bit
    activation with its own fixed-point rounding, so in an A8 graph it draws quantization noise of the same size
    as the Q/DQ model's; an
    ill-conditioned graph (a random-initialised tiny model whose last layer cancels most of its input)
    amplifies both alike. A wrong computation still fails: the naive Sana export (29% against 0.7% of quantization
    error), the LayerNorm broadcast trap on digits-Sana (21% against 7.5%). A subtler departure can hide in the
    noise of a poorly trained model: ``first_divergence`` (debug-htp) compares every tensor.

    ``softmax_outputs`` (with ``float_onnx``): outputs that may also pass on their distribution (see
    ``SOFTMAX_OUTPUTS``); their record adds ``kl`` and ``quantization_kl``."""
    ctx_onnx = Path(ctx_onnx)
    qdq_onnx = Path(qdq_onnx)
    ctx_model = load_model(ctx_onnx, what="compiled EPContext model", stage="compile")
    for node in _ep_context_nodes(ctx_model):
        binary = node_attr(node, "ep_cache_context")
        if node_attr(node, "embed_mode") == 0 and binary and not (ctx_onnx.parent / binary).is_file():
            raise InputError(
                f"the context binary {binary} of {ctx_onnx.name} is missing",
                fix="keep the .bin beside the _ctx.onnx, or re-run `fraqat-deploy compile`",
            )
    qdq_model = load_model(qdq_onnx)
    if target is None:
        target = _target_of_ctx(ctx_onnx)
    elif isinstance(target, str):
        target = get_target(target)
    # The EPContext model keeps the boundary conversions on the CPU by design: allow them.
    htp = htp_session(ctx_onnx, target, allow_cpu_fallback=True)
    cpu = cpu_session(qdq_onnx)
    _check_inputs(cpu, inputs, qdq_onnx.name)
    feed = {k: np.asarray(v) for k, v in inputs.items()}
    names = [o.name for o in cpu.get_outputs()]
    started = time.perf_counter()
    htp_out = htp.run(names, feed)
    htp_seconds = time.perf_counter() - started
    cpu_out = cpu.run(names, feed)
    float_out = cpu_session(Path(float_onnx)).run(names, feed) if float_onnx is not None else [None] * len(names)
    steps = output_steps(qdq_model, qdq_onnx.parent)
    outputs: dict[str, Any] = {}
    for name, a, b, f in zip(names, htp_out, cpu_out, float_out, strict=True):
        metrics = compare_arrays(a, b, steps.get(name))
        tol, max_abs_tol = rel_tol, None
        if f is not None:
            quantization = compare_arrays(b, f)
            metrics["quantization_rel"] = quantization["rel"]
            metrics["quantization_max_abs"] = quantization["max_abs"]
            tol = max(rel_tol, noise_factor * quantization["rel"])
            max_abs_tol = noise_factor * quantization["max_abs"]
        ok, why = parity_verdict(metrics, rel_tol=tol, steps_tol=steps_tol, peak_tol=peak_tol, max_abs_tol=max_abs_tol)
        if name in softmax_outputs and f is not None and metrics["finite"]:
            metrics["kl"], metrics["quantization_kl"] = softmax_kl(b, a), softmax_kl(f, b)
            if not ok and metrics["kl"] <= noise_factor * metrics["quantization_kl"]:
                ok, why = True, (f"{why}, but its softmax moves by KL {metrics['kl']:.3g} <= {noise_factor:g} x the "
                                 f"quantization's own {metrics['quantization_kl']:.3g}")
        outputs[name] = metrics | {"rel_tol": tol, "shape": list(np.shape(b)), "passed": ok, "why": why}
    return {
        "ctx_onnx": str(ctx_onnx),
        "qdq_onnx": str(qdq_onnx),
        "target": target.alias,
        "soc_model": target.soc_model,
        "tolerance": {"rel_tol": rel_tol, "steps_tol": steps_tol, "peak_tol": peak_tol,
                      "noise_factor": noise_factor if float_onnx is not None else None,
                      "float_onnx": str(float_onnx) if float_onnx is not None else None},
        "outputs": outputs,
        "passed": all(o["passed"] for o in outputs.values()),
        # The simulator emulates the HTP on the host: its run time says nothing about the phone.
        "simulator_seconds": round(htp_seconds, 4),
    }
