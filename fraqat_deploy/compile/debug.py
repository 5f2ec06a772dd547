"""Where does the HTP depart from the CPU? Compare intermediate tensors of a Q/DQ model, in graph order.

The Q/DQ model runs as a normal QNN EP session on the host HTP simulator and on ONNX Runtime's CPU EP, with
intermediate tensors added as graph outputs. Adding every intermediate at once makes QNN's graph finalisation
fail (error 1002, docs/htp-notes.md), so they are added in batches, in topological order, and the search stops at
the first batch holding a tensor past the tolerance. A batch that still fails to build is split in half.

Only float tensors are compared: the dequantized activations (what each quantized operator really produced)
and the outputs of operators that run in float. A DequantizeLinear output is not exposed directly: a copy of
the DequantizeLinear is added and its output exposed, so the original Q/DQ node groups the QNN EP fuses into
quantized operators stay exactly as they are.
"""

from __future__ import annotations

import tempfile
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

from fraqat_deploy.compile.htp import compare_arrays, cpu_session, htp_session
from fraqat_deploy.compile.local import QDQ_OPS, external_data_files, first_line, load_model, save_graph_beside
from fraqat_deploy.errors import ConfigError, InputError
from fraqat_deploy.targets import Target, get_target

DEFAULT_REL_TOL = 0.02
DEFAULT_MIN_STEPS = 1.0
_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
_PROBE_SUFFIX = "__htp_probe"


@dataclass(frozen=True)
class Probe:
    tensor: str  # the tensor of the original graph being compared
    output: str  # the graph output that exposes it in the probe model
    node: onnx.NodeProto | None  # the extra DequantizeLinear copy, if any
    step: float | None  # quantization step of the tensor, when it is a dequantized activation
    order: int  # position of its producer in topological order
    elem_type: int = onnx.TensorProto.FLOAT  # graph outputs must declare their element type


def topological_order(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Nodes in a topological order (ONNX requires one, but do not trust every writer)."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        progressed = False
        rest = []
        for node in pending:
            if all(i in available for i in node.input):
                ordered.append(node)
                available.update(node.output)
                progressed = True
            else:
                rest.append(node)
        if not progressed:  # a cycle or a dangling input: keep the file's order for what remains
            ordered.extend(rest)
            break
        pending = rest
    return ordered


def _scale_step(model: onnx.ModelProto, node: onnx.NodeProto, base_dir: Path) -> float | None:
    inits = {t.name: t for t in model.graph.initializer}
    if len(node.input) > 1 and node.input[1] in inits:
        scale = onnx.numpy_helper.to_array(inits[node.input[1]], base_dir=str(base_dir))
        return float(np.max(np.abs(scale)))
    return None


def _float_tensors(model: onnx.ModelProto) -> dict[str, int]:
    """Float tensors of the graph and their element types, from shape inference."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # inference is a nicety here: without it only dequantized tensors are compared
        inferred = model
    infos = [*inferred.graph.value_info, *inferred.graph.output]
    return {v.name: v.type.tensor_type.elem_type for v in infos if v.type.tensor_type.elem_type in _FLOAT_TYPES}


def plan_probes(model: onnx.ModelProto, base_dir: Path) -> list[Probe]:
    """The tensors to compare, in topological order of their producers."""
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    floats = _float_tensors(model)
    # A DequantizeLinear's output has its scale's type (opset 21).
    scale_types = {t.name: t.data_type for t in graph.initializer}
    probes: list[Probe] = []
    for order, node in enumerate(topological_order(graph)):
        if node.op_type == "DequantizeLinear":
            if node.input[0] in inits:  # a constant (weight, bias): nothing the HTP computes
                continue
            tensor = node.output[0]
            copy = helper.make_node(
                "DequantizeLinear",
                list(node.input),
                [tensor + _PROBE_SUFFIX],
                name=(node.name or tensor) + _PROBE_SUFFIX,
                domain=node.domain,
            )
            copy.attribute.extend(node.attribute)
            step = _scale_step(model, node, base_dir)
            elem = floats.get(tensor, scale_types.get(node.input[1], onnx.TensorProto.FLOAT))
            probes.append(Probe(tensor, tensor + _PROBE_SUFFIX, copy, step, order, elem))
        elif node.op_type != "QuantizeLinear":
            for tensor in node.output:
                # A float tensor that feeds a QuantizeLinear is inside a fused quantized operator on the HTP and
                # never exists there in float: exposing it would change the graph being debugged.
                if not tensor or tensor not in floats or tensor in outputs:
                    continue
                if any(c.op_type == "QuantizeLinear" for c in consumers[tensor]):
                    continue
                probes.append(Probe(tensor, tensor, None, None, order, floats[tensor]))
    return probes


def _probe_model(model: onnx.ModelProto, probes: list[Probe]) -> onnx.ModelProto:
    probe_model = onnx.ModelProto()
    probe_model.CopyFrom(model)
    for probe in probes:
        if probe.node is not None:
            probe_model.graph.node.append(probe.node)
        probe_model.graph.output.append(helper.make_tensor_value_info(probe.output, probe.elem_type, None))
    return probe_model


def _run_batch(
    model: onnx.ModelProto,
    probes: list[Probe],
    inputs: Mapping[str, np.ndarray],
    target: Target,
    folder: Path,
    ext_files: list[Path],
    index: int,
) -> dict[str, dict[str, Any]]:
    path = save_graph_beside(_probe_model(model, probes), folder, ext_files, f"probe_{index}.onnx")
    try:
        # Fallback allowed: we are measuring numerics, and a model with a CPU operator can still be debugged.
        htp = htp_session(path, target, allow_cpu_fallback=True)
        cpu = cpu_session(path)
        names = [p.output for p in probes]
        htp_out = htp.run(names, dict(inputs))
        cpu_out = cpu.run(names, dict(inputs))
    finally:
        path.unlink(missing_ok=True)
    return {p.tensor: compare_arrays(a, b, p.step) for p, a, b in zip(probes, htp_out, cpu_out, strict=True)}


def _check_model_builds(qdq_onnx: Path, target: Target) -> None:
    try:
        htp_session(qdq_onnx, target, allow_cpu_fallback=True)
    except Exception as exc:
        raise ConfigError(
            f"{qdq_onnx.name} does not build on the HTP simulator for {target.alias}: {first_line(exc)}",
            fix="compile it (`fraqat-deploy compile`) to see which operator the HTP rejects, and change the export",
        ) from exc


def _diverges(metrics: Mapping[str, Any], rel_tol: float, min_steps: float) -> bool:
    if not metrics["finite"]:
        return True
    # A difference of a rounding step or so is the HTP and the CPU rounding a half differently, not a bug.
    if metrics["step"] and metrics["max_abs"] <= min_steps * metrics["step"]:
        return False
    return metrics["rel"] > rel_tol


def _describe(metrics: Mapping[str, Any] | None) -> str:
    if metrics is None:
        return "not compared"
    text = f"rel {metrics['rel']:.3%}, max |d| {metrics['max_abs']:.3g}"
    if metrics.get("steps") is not None:
        text += f" ({metrics['steps']:.1f} steps)"
    return text


def _trace(producers: Mapping[str, onnx.NodeProto], tensor: str) -> tuple[onnx.NodeProto | None, str]:
    """The operator behind ``tensor``, looking through Q/DQ nodes, and the tensor where the walk stopped (a
    graph input or a constant when there is no operator)."""
    name = tensor
    node = producers.get(name)
    while node is not None and node.op_type in QDQ_OPS:
        name = node.input[0]
        node = producers.get(name)
    return node, name


def _through_qdq(producers: Mapping[str, onnx.NodeProto], tensor: str) -> onnx.NodeProto | None:
    return _trace(producers, tensor)[0]


def operator_chain(
    model: onnx.ModelProto, tensor: str, compared: Mapping[str, Mapping[str, Any]], levels: int = 3
) -> list[str]:
    """Printable lines: the operator that produced ``tensor``, its inputs' producers up to ``levels`` deep (with
    their errors where compared) and the operators that consume it. Q/DQ nodes are looked through."""
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)

    def label(node: onnx.NodeProto) -> str:
        return f"{node.op_type} '{node.name}'"

    root, source = _trace(producers, tensor)
    if root is None:
        return [f">> {tensor}: the graph input {source} after its boundary quantization  FIRST DIVERGENCE"]
    lines = [f">> {label(root)} -> {tensor}  [{_describe(compared.get(tensor))}]  FIRST DIVERGENCE"]

    def walk(node: onnx.NodeProto, depth: int, seen: frozenset[str]) -> None:
        for name in node.input:
            if not name or name in inits:
                continue
            up, source = _trace(producers, name)
            if up is None and source in inits:  # a dequantized weight or bias
                continue
            pad = "   " * depth
            if up is None:
                lines.append(f"{pad}<- graph input {source} -> {name}  [{_describe(compared.get(name))}]")
                continue
            lines.append(f"{pad}<- {label(up)} -> {name}  [{_describe(compared.get(name))}]")
            if depth < levels and up.name not in seen:
                walk(up, depth + 1, seen | {up.name})

    walk(root, 1, frozenset({root.name}))

    def downstream(name: str) -> list[onnx.NodeProto]:
        found: list[onnx.NodeProto] = []
        for node in consumers.get(name, []):
            if node.op_type in QDQ_OPS:
                for out in node.output:
                    found.extend(downstream(out))
            else:
                found.append(node)
        return found

    # Consumers of the operator's output, seen through its Q/DQ pair.
    users = {n.name: n for out in root.output for n in downstream(out)}
    lines.extend(f"   -> used by {label(n)}" for n in users.values())
    if not users:
        lines.append("   -> a graph output")
    return lines


def first_divergence(
    qdq_onnx: str | Path,
    inputs: Mapping[str, np.ndarray],
    target: Target | str,
    *,
    batch: int = 32,
    rel_tol: float = DEFAULT_REL_TOL,
    min_steps: float = DEFAULT_MIN_STEPS,
    levels: int = 3,
) -> dict[str, Any]:
    """The first tensor (in topological order) where the HTP simulator's value departs from the CPU EP's.

    A tensor diverges when its mean relative error (mean|htp-cpu| / mean|cpu|) exceeds ``rel_tol`` and its
    largest error is more than ``min_steps`` quantization steps (when the step is known), or when the HTP
    value is not finite. ``rel_tol=0, min_steps=0`` reports the first tensor that differs at all.
    """
    qdq_onnx = Path(qdq_onnx)
    target = get_target(target) if isinstance(target, str) else target
    if batch < 1:
        raise InputError(f"batch must be at least 1, not {batch}", fix="pass --batch 32 (or any positive number)")
    model = load_model(qdq_onnx)
    ext_files = external_data_files(model, qdq_onnx.parent)
    names = {i.name for i in model.graph.input} - {t.name for t in model.graph.initializer}
    if set(inputs) != names:
        raise InputError(
            f"inputs do not match {qdq_onnx.name}: expected {sorted(names)}, got {sorted(inputs)}",
            fix="pass exactly the model's inputs",
        )
    feed = {k: np.asarray(v) for k, v in inputs.items()}
    try:  # wrong shapes or dtypes show here, once, rather than as failing batches
        cpu_session(qdq_onnx).run(None, feed)
    except Exception as exc:
        raise InputError(
            f"the inputs do not run on {qdq_onnx.name} (CPU EP): {first_line(exc)}",
            fix="pass arrays with the model's input shapes and dtypes",
        ) from exc
    probes = plan_probes(model, qdq_onnx.parent)
    skipped: list[dict[str, str]] = []
    model_builds = False
    compared: dict[str, dict[str, Any]] = {}
    order: list[Probe] = []
    batches = 0
    started = time.perf_counter()
    found: Probe | None = None
    with tempfile.TemporaryDirectory(prefix="fraqat-debug-htp-") as tmp:
        queue = [probes[i : i + batch] for i in range(0, len(probes), batch)]
        while queue and found is None:
            chunk = queue.pop(0)
            try:
                results = _run_batch(model, chunk, feed, target, Path(tmp), ext_files, batches)
            except Exception as exc:
                if len(chunk) > 1:
                    # QNN could not finalise this many extra outputs (error 1002): halve the batch and go on.
                    half = len(chunk) // 2
                    queue[:0] = [chunk[:half], chunk[half:]]
                    continue
                if not model_builds:
                    _check_model_builds(qdq_onnx, target)
                    model_builds = True
                # The model itself builds, so only exposing this tensor upsets QNN: note it and go on.
                skipped.append({"tensor": chunk[0].tensor, "error": first_line(exc)[:300]})
                continue
            batches += 1
            for probe in chunk:
                compared[probe.tensor] = results[probe.tensor]
                order.append(probe)
                if _diverges(results[probe.tensor], rel_tol, min_steps):
                    found = probe
                    break
    producers = {o: n for n in model.graph.node for o in n.output}
    tensors = [
        {
            "tensor": p.tensor,
            "op_type": getattr(_through_qdq(producers, p.tensor), "op_type", None),
            **{k: compared[p.tensor][k] for k in ("rel", "max_abs", "steps")},
        }
        for p in order
    ]
    result: dict[str, Any] = {
        "model": str(qdq_onnx),
        "target": target.alias,
        "soc_model": target.soc_model,
        "tolerance": {"rel_tol": rel_tol, "min_steps": min_steps},
        "candidates": len(probes),
        "compared": len(order),
        "batches": batches,
        "batch": batch,
        "seconds": round(time.perf_counter() - started, 2),
        "diverged": found is not None,
        "tensor": None,
        "op_type": None,
        "node": None,
        "metrics": None,
        "chain": [],
        "tensors": tensors,
        "skipped": skipped,
    }
    if found is not None:
        op = _through_qdq(producers, found.tensor)
        result |= {
            "tensor": found.tensor,
            "op_type": op.op_type if op is not None else None,
            "node": op.name if op is not None else None,
            "metrics": compared[found.tensor],
            "chain": operator_chain(model, found.tensor, compared, levels),
        }
    return result


def format_divergence(result: Mapping[str, Any]) -> list[str]:
    """The report ``fraqat-deploy debug-htp`` prints."""
    head = (
        f"compared {result['compared']} of {result['candidates']} tensors in {result['batches']} batch(es) on the "
        f"HTP simulator ({result['target']}, soc_model {result['soc_model']}) against the CPU EP; "
        f"tolerance rel {result['tolerance']['rel_tol']:.2%}"
    )
    if not result["diverged"]:
        return [head, "no tensor departs from the CPU beyond the tolerance"]
    return [head, f"first divergence: {result['tensor']} ({result['op_type']} '{result['node']}')", *result["chain"]]
