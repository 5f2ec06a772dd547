"""Float ONNX -> Q/DQ ONNX that reproduces the trained quantization exactly.

Every float tensor gets one Q -> DQ pair after its producer (the QDQ format the QNN EP lowers to the HTP):

* a trained layer's weight: INT4 (or INT8 if it trained wider) with the trained scale(s), zero point 0; its
  input: a conversion to the trained encoding where the producer's differs; its output: the trained encoding;
* a trained layer's bias: INT32 at its input scale x weight scale (the reference rounds it the same way,
  ``apply_rule_to_trained_biases``);
* ``RULE`` for everything the training did not quantize: other MatMul / Gemm / Conv weights INT8 per output
  channel, narrow range (the PyTorch reference applies the same, ``apply_rule_to_weights``); biases INT32 at
  input scale x weight scale; every other activation and constant uint16 over its calibrated min/max (softmax,
  normalisation, the linear-attention normaliser, residual streams); where such a tensor feeds a trained layer's
  input, its 16-bit grid is aligned with that 8-bit encoding (``aligned``), so the conversion rounds exactly as
  the trained encoding alone does. An 8-bit tensor read by a 16-bit op is
  widened exactly (scale / 257, zero point x 257); reshapes and transposes keep their input's encoding.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import set_external_data
from torch import nn

from fraqat_deploy.errors import ConfigError
from fraqat_deploy.export.graph import LayerNode, weight_layer_nodes
from fraqat_deploy.onnx_io import (
    INLINE_TENSOR_BYTES,
    infer_shapes,
    inline,
    release_memory,
    session_source,
    tensor_value,
)
from fraqat_deploy.quant import ActivationEncoding, quantize_weight
from fraqat_deploy.quant.modules import QuantMixin, is_quant_layer

RULE = ("trained layers keep their trained INT4 weights and uint8 input/output encodings; other MatMul/Gemm/Conv "
        "weights INT8 per output channel (narrow range); biases INT32; every other activation and constant uint16 "
        "over its calibrated min/max")
RULE_WEIGHT_BITS = 8
#: ops whose output keeps its input's encoding (pure data movement; Gather: its data's, input 0). The HTP refuses a
#: Gather whose output encoding differs from its table's: Gemma-2-2B's RoPE sin table [512, 256] (zero point 32768)
#: gathered at positions 0..127, calibrated to zero point 32767, stopped the real-size compile
SHARED_ENCODING_OPS = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "DepthToSpace", "SpaceToDepth",
                       "Split", "Slice", "Expand", "Gather"}
#: initializer inputs that are parameters, not data: left as they are (a Resize's scales [1, 1, 2, 2] as 16-bit codes
#: read [1.0000153, 1.0000153, 2, 2]: nearest/floor then maps channel c to c - 1; the HTP refuses non-constant scales)
PARAMETER_INPUTS = {("Clip", 1), ("Clip", 2), ("Pad", 1), ("Pad", 2), ("Pad", 3),
                    ("Resize", 1), ("Resize", 2)}
#: output encodings the QNN HTP requires for 16-bit nonlinearities (as ONNX Runtime's QNN quantizer sets them)
FIXED_OUTPUTS = {
    "Sigmoid": ActivationEncoding(16, 1.0 / 65536.0, 0),
    "Tanh": ActivationEncoding(16, 1.0 / 32768.0, 32768),
}
_ACT_DTYPE = {8: (np.uint8, TensorProto.UINT8), 16: (np.uint16, TensorProto.UINT16)}


def apply_rule_to_weights(module: nn.Module) -> dict[str, nn.Module]:
    """Quantize, in place, the Linear / Conv2d weights the training left in float (the rule: INT8 per channel).
    Once: a layer already quantized (a student shared by two graphs is exported twice) is left as it is."""
    layers = {}
    for name, m in module.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)) and not is_quant_layer(m):
            if not getattr(m, "rule_applied", False):
                q, scale, _ = quantize_weight(m.weight, RULE_WEIGHT_BITS, "narrow", "channel")
                with torch.no_grad():
                    m.weight.copy_(q * scale)
                m.rule_applied = True  # type: ignore[assignment]
            layers[name] = m
    return layers


def apply_rule_to_trained_biases(layers: dict[str, nn.Module]) -> float:
    """Round, in place, every trained layer's bias to the INT32 grid the graph stores it on (its input encoding's
    scale x its weight scale, in float32, as ``_build`` computes it), so that the reference adds the bias the
    graph adds. The float bias differs by at most half that grid's step, a few hundredths of the output's 8-bit
    step, but that flips one output rounding in tens to hundreds (measured on the tiny Sana trained with
    ``--calibration mse``: 1-4% of a layer's outputs), and a flipped modulation shift moves a whole channel
    downstream. Returns the largest change, in 8-bit steps of the layer's output encoding."""
    largest = 0.0
    for layer in layers.values():
        bias, enc = getattr(layer, "bias", None), getattr(layer, "act_encoding", None)
        if bias is None or enc is None:
            continue
        _, scale, _ = layer.weight_codes()  # type: ignore[operator]
        step = torch.tensor(np.float32(enc.scale)) * scale.detach().float().flatten()
        with torch.no_grad():
            rounded = (torch.round(bias.float() / step) * step).to(bias.dtype)
            out = getattr(layer, "out_encoding", None)
            if out is not None:
                largest = max(largest, float((rounded.float() - bias.float()).abs().max()) / out.scale)
            bias.copy_(rounded)
    return largest


def widened(enc: ActivationEncoding) -> ActivationEncoding:
    """The 16-bit encoding on which every value of an 8-bit one is exactly representable."""
    if enc.bits == 16:
        return enc
    return ActivationEncoding(16, float(np.float32(enc.scale) / np.float32(257)), enc.zero_point * 257)


def aligned(lo: float, hi: float, target: ActivationEncoding) -> ActivationEncoding | None:
    """The 16-bit encoding of a tensor observed over ``[lo, hi]`` that a trained input encoding ``target`` reads
    exactly: its range covers ``[lo, hi]`` and ``target``'s, and its scale is ``target.scale / m`` for an odd
    ``m`` (the largest that fits), with 0 on both grids. Every point of ``target``'s grid is then a point of this
    one and each of ``target``'s rounding boundaries lies halfway between two of its points, so Q -> DQ on it
    followed by the requantization to ``target`` rounds and clips every value as ``target`` alone does (an
    unaligned grid moves values that sit within half a 16-bit step of an 8-bit boundary by one 8-bit step).
    None when no such grid spans the range (the tensor's range is over 65535 steps of ``target``)."""
    t_lo, t_hi = target.range
    lo, hi = min(float(lo), t_lo, 0.0), max(float(hi), t_hi, 0.0)
    scale = float(np.float32(target.scale))
    m = int(65535 * scale / (hi - lo) * (1 + 1e-6))
    m -= 1 - m % 2  # odd
    while m >= 1:
        step = float(np.float32(scale / m))
        zero_point = max(math.ceil(-lo / step - 1e-3), 0)
        if zero_point <= 65535 and (65535 - zero_point) * step >= hi - 1e-3 * step:
            return ActivationEncoding(16, step, zero_point)
        m -= 2
    return None


def trained_input_targets(g: onnx.GraphProto, by_node: dict[str, tuple[str, LayerNode]],
                          trained_layers: dict[str, nn.Module]) -> dict[str, list[ActivationEncoding]]:
    """Per float tensor, the trained input encodings that read it (through reshapes and transposes, which keep
    their input's encoding), the most frequent first."""
    counts: dict[str, dict[ActivationEncoding, int]] = {}
    for node in reversed(g.node):
        kind, ln = by_node.get(node.name, (None, None))
        if kind == "trained" and node.input and node.input[0]:
            enc = trained_layers[ln.layer].act_encoding  # type: ignore[union-attr]
            if enc is not None:
                c = counts.setdefault(node.input[0], {})
                c[enc] = c.get(enc, 0) + 1
        elif node.op_type in SHARED_ENCODING_OPS and node.input and node.output[0] in counts:
            c = counts.setdefault(node.input[0], {})
            for enc, n in counts[node.output[0]].items():
                c[enc] = c.get(enc, 0) + n
    return {t: sorted(c, key=lambda e: -c[e]) for t, c in counts.items()}


def calibrate_ranges(model: onnx.ModelProto, input_names: list[str], calibration: list[tuple[torch.Tensor, ...]],
                     base_dir: str | Path | None = None) -> dict[str, tuple[float, float]]:
    """min / max of every float tensor over the calibration inputs (ONNX Runtime, CPU).

    Streaming: the probe graph reduces each float tensor to its min and max right after the node that makes it
    (and runs in priority order, so each reduction runs as soon as it can), so a tensor is freed after its last
    real consumer instead of being kept as a graph output; only the scalars come back. ``base_dir``: the folder of
    a graph whose weights are in external data there (the probe is written beside it and reads the same file)."""
    inferred = infer_shapes(model)
    infos = list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input)
    floats = {vi.name for vi in infos if vi.type.tensor_type.elem_type == TensorProto.FLOAT}
    floats -= {i.name for i in model.graph.initializer}
    del inferred, infos
    probed: list[str] = []
    nodes: list[onnx.NodeProto] = []

    def reduce(name: str) -> None:
        if name in floats and name not in probed:
            probed.append(name)
            for op in ("ReduceMin", "ReduceMax"):
                nodes.append(helper.make_node(op, [name], [f"{name}__{op}"], name=f"{name}__{op}", keepdims=0))

    for inp in model.graph.input:
        reduce(inp.name)
    for node in model.graph.node:
        nodes.append(node)
        for out in node.output:
            reduce(out)
    graph = helper.make_graph(nodes, model.graph.name, list(model.graph.input),
                              [helper.make_tensor_value_info(f"{n}__{op}", TensorProto.FLOAT, [])
                               for n in probed for op in ("ReduceMin", "ReduceMax")],
                              list(model.graph.initializer))
    probe = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    del graph
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    options.intra_op_num_threads = 1
    ranges: dict[str, tuple[float, float]] = {}
    probe_path = Path(base_dir) / f".calibration-probe-{os.getpid()}.onnx" if base_dir is not None else None
    try:
        if probe_path is not None:
            onnx.save(probe, str(probe_path))  # the graph only: its weights stay in the data file beside it
            del probe
            session = ort.InferenceSession(str(probe_path), options, providers=["CPUExecutionProvider"])
        else:
            with session_source(probe) as source:
                session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
            del probe
        outputs = [o.name for o in session.get_outputs()]
        for row in calibration:
            feed = {n: t.detach().cpu().numpy() for n, t in zip(input_names, row, strict=True)}
            values = dict(zip(outputs, session.run(outputs, feed), strict=True))
            for name in probed:
                lo, hi = float(values[f"{name}__ReduceMin"]), float(values[f"{name}__ReduceMax"])
                old = ranges.get(name, (lo, hi))
                ranges[name] = (min(old[0], lo), max(old[1], hi))
        del session
    finally:
        if probe_path is not None:
            probe_path.unlink(missing_ok=True)
        release_memory()
    return ranges


@dataclass
class QdqReport:
    trained_layers: int
    rule_layers: int
    weight_elements: int
    conversions: int
    encodings: dict[str, dict[str, Any]]  # trained layer -> what the graph holds, for the record

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__


def int_tensor(name: str, dtype: int, values: np.ndarray) -> onnx.TensorProto:
    """An integer initializer as packed raw bytes (INT4: two per byte, the first in the low nibble), the form
    that can move to an external data file; typed fields (int32_data) take 4+ bytes an element and cannot."""
    values = np.asarray(values).astype(np.int64)
    if dtype in (TensorProto.INT4, TensorProto.UINT4):
        flat = values.reshape(-1) & 0x0F
        if flat.size % 2:
            flat = np.append(flat, 0)
        packed = (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8)
        return helper.make_tensor(name, dtype, values.shape, packed.tobytes(), raw=True)
    return numpy_helper.from_array(values.astype(helper.tensor_dtype_to_np_dtype(dtype)), name)


class DataWriter:
    """Writes initializers' bytes to an external data file as they are made; the protos keep only where."""

    ALIGN = 4096

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.unlink(missing_ok=True)
        self.file = self.path.open("wb")
        self.offset = 0

    def put(self, tensor: onnx.TensorProto) -> onnx.TensorProto:
        raw = tensor.raw_data
        if len(raw) < INLINE_TENSOR_BYTES:
            return tensor
        pad = (-self.offset) % self.ALIGN
        self.file.write(b"\0" * pad)
        self.offset += pad
        self.file.write(raw)
        set_external_data(tensor, location=self.path.name, offset=self.offset, length=len(raw))
        tensor.data_location = TensorProto.EXTERNAL
        tensor.ClearField("raw_data")
        self.offset += len(raw)
        return tensor

    def close(self) -> None:
        self.file.close()


class _Builder:
    def __init__(self, model: onnx.ModelProto, writer: DataWriter | None = None) -> None:
        self.model = model
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.constants: set[str] = set()
        self.constant_encodings: dict[str, ActivationEncoding] = {}
        self.writer = writer

    def add(self, tensor: onnx.TensorProto) -> None:
        self.inits.append(self.writer.put(tensor) if self.writer is not None else tensor)

    def const(self, name: str, value: np.ndarray) -> str:
        self.add(numpy_helper.from_array(value, name))
        return name

    def qdq(self, tensor: str, enc: ActivationEncoding, tag: str, output: str | None = None) -> str:
        """tensor -> Q -> DQ; returns the DQ output (named ``output`` if given)."""
        np_type, _ = _ACT_DTYPE[enc.bits]
        base = f"{tensor}_{tag}"
        scale = self.const(f"{base}_scale", np.array(enc.scale, dtype=np.float32))
        zp = self.const(f"{base}_zp", np.array(enc.zero_point, dtype=np_type))
        self.nodes.append(helper.make_node("QuantizeLinear", [tensor, scale, zp], [f"{base}_q"], name=f"{base}_Q"))
        output = output or f"{base}_dq"
        self.nodes.append(helper.make_node("DequantizeLinear", [f"{base}_q", scale, zp], [output], name=f"{base}_DQ"))
        return output

    def constant(self, name: str, value: np.ndarray) -> str:
        """A float constant stored as uint16 codes over its own min/max, behind a DQ (once per constant)."""
        out = f"{name}_c_dq"
        if out not in self.constants:
            enc = ActivationEncoding.from_range(float(value.min()), float(value.max()), bits=16)
            q = np.clip(np.round(value / np.float32(enc.scale)) + enc.zero_point, 0, 65535).astype(np.uint16)
            qn = self.const(f"{name}_c_int", q)
            sn = self.const(f"{name}_c_scale", np.array(enc.scale, dtype=np.float32))
            zn = self.const(f"{name}_c_zp", np.array(enc.zero_point, dtype=np.uint16))
            self.nodes.append(helper.make_node("DequantizeLinear", [qn, sn, zn], [out], name=f"{name}_c_DQ"))
            self.constants.add(out)
            self.constant_encodings[out] = enc
        return out

    def weight(self, name: str, q: np.ndarray, scale: np.ndarray, axis: int | None, dtype: int) -> str:
        qn = f"{name}_int"
        self.add(int_tensor(qn, dtype, q))
        zpn = f"{name}_zp"
        self.add(int_tensor(zpn, dtype, np.zeros(scale.shape, dtype=np.int64)))
        sn = self.const(f"{name}_scale", scale.astype(np.float32))
        attrs = {"axis": axis} if axis is not None and scale.size > 1 else {}
        self.nodes.append(helper.make_node("DequantizeLinear", [qn, sn, zpn], [f"{name}_dq"], name=f"{name}_DQ",
                                           **attrs))
        return f"{name}_dq"


def _int_type(qmin: int, qmax: int) -> int:
    if -8 <= qmin and qmax <= 7:
        return TensorProto.INT4
    if -128 <= qmin and qmax <= 127:
        return TensorProto.INT8
    return TensorProto.INT16


def _stored(q: np.ndarray, ln: LayerNode, shape: tuple[int, ...]) -> np.ndarray:
    """Codes laid out as the ONNX initializer stores the weight."""
    stored = q.T if q.ndim == 2 and ln.channel_axis == 1 else q  # MatMul keeps W^T: [in, out]
    if stored.shape == shape:
        return stored
    raise ConfigError(f"layer '{ln.layer}': weight layout {shape} vs {q.shape}", "report this export as a bug")


def build_qdq(model: onnx.ModelProto, module: nn.Module, input_names: list[str],
              calibration: list[tuple[torch.Tensor, ...]], *, base_dir: str | Path | None = None,
              release: bool = False, data_path: Path | None = None) -> tuple[onnx.ModelProto, QdqReport]:
    """The Q/DQ graph of the float graph ``model`` (its external data, if any, in ``base_dir``).

    Each float initializer is read when its consumer is rewritten, not all at once; ``release``: each quantized
    layer's float weight (and frozen codes) is dropped from ``module`` as soon as its integer form is taken;
    ``data_path``: the Q/DQ graph's tensors are written to this external data file as they are made (save the
    graph beside it, in the same folder)."""
    trained_layers = {n: m for n, m in module.named_modules() if is_quant_layer(m)}
    rule_layers = {n: m for n, m in module.named_modules()
                   if isinstance(m, (nn.Linear, nn.Conv2d)) and not is_quant_layer(m)}
    trained = weight_layer_nodes(model, trained_layers) if trained_layers else {}
    rule = weight_layer_nodes(model, rule_layers, required=False) if rule_layers else {}
    by_node = {ln.node.name: ("trained", ln) for ln in trained.values()}
    by_node |= {ln.node.name: ("rule", ln) for ln in rule.values()}
    g = model.graph
    init_protos = {i.name: i for i in g.initializer}
    graph_outputs = {o.name for o in g.output}
    writer = DataWriter(data_path) if data_path is not None else None
    try:
        b = _Builder(model, writer)
        w_scale: dict[str, np.ndarray] = {}  # node name -> weight scale (for bias scales)
        report_enc: dict[str, dict[str, Any]] = {}
        weight_dq, weight_elements = _write_weights(b, g, by_node, trained_layers, rule_layers, init_protos,
                                                    base_dir, release, w_scale, report_enc)
        if release:  # the module's float weights are no longer needed: only the graph's, read one at a time
            _release_module(module)
            release_memory()
        ranges = calibrate_ranges(model, input_names, calibration, base_dir)
        return _build(b, model, trained_layers, trained, rule, by_node, ranges, init_protos, graph_outputs,
                      base_dir, weight_dq, w_scale, report_enc, weight_elements)
    finally:
        if writer is not None:
            writer.close()


def _build(b: _Builder, model: onnx.ModelProto, trained_layers: dict[str, nn.Module], trained: dict[str, LayerNode],
           rule: dict[str, LayerNode], by_node: dict[str, tuple[str, LayerNode]],
           ranges: dict[str, tuple[float, float]], init_protos: dict[str, onnx.TensorProto], graph_outputs: set[str],
           base_dir: str | Path | None, weight_dq: dict[str, str], w_scale: dict[str, np.ndarray],
           report_enc: dict[str, dict[str, Any]], weight_elements: int) -> tuple[onnx.ModelProto, QdqReport]:
    g = model.graph

    targets = trained_input_targets(g, by_node, trained_layers)

    def range_encoding(tensor: str) -> ActivationEncoding:
        """uint16 over the calibrated min/max; on a grid aligned with the trained input encoding it feeds."""
        lo, hi = ranges[tensor]
        for target in targets.get(tensor, ()):
            enc = aligned(lo, hi, target)
            if enc is not None:
                return enc
        return ActivationEncoding.from_range(lo, hi, bits=16)

    prod: dict[str, ActivationEncoding] = {}  # encoding each float activation is produced in
    dq_of: dict[str, str] = {}  # float activation -> its DQ output
    converted: dict[tuple[str, ActivationEncoding], str] = {}

    for inp in g.input:
        if inp.name in ranges:
            prod[inp.name] = range_encoding(inp.name)
            dq_of[inp.name] = b.qdq(inp.name, prod[inp.name], "in")

    def consume(tensor: str, need: ActivationEncoding) -> str:
        if prod[tensor] == need:
            return dq_of[tensor]
        key = (tensor, need)
        if key not in converted:
            converted[key] = b.qdq(dq_of[tensor], need, f"cvt{len(converted)}")
        return converted[key]

    for node in g.node:
        kind, ln = by_node.get(node.name, (None, None))
        new_inputs = []
        for k, name in enumerate(node.input):
            if not name:
                new_inputs.append(name)
            elif name in init_protos:
                value = None if ln is not None and k == 1 else tensor_value(init_protos[name], base_dir)
                if ln is not None and k == 1:  # the layer's weight: written before calibration
                    new_inputs.append(weight_dq[node.name])
                elif node.op_type == "LayerNormalization" and k == 1:  # QNN: an 8-bit scale beside 16-bit data
                    enc8 = ActivationEncoding.from_range(float(value.min()), float(value.max()), bits=8)
                    if f"{name}_u8_dq" not in b.constants:
                        q8 = np.clip(np.round(value / np.float32(enc8.scale)) + enc8.zero_point, 0, 255)
                        qn = b.const(f"{name}_u8", q8.astype(np.uint8))
                        sn = b.const(f"{name}_u8_scale", np.array(enc8.scale, dtype=np.float32))
                        zn = b.const(f"{name}_u8_zp", np.array(enc8.zero_point, dtype=np.uint8))
                        b.nodes.append(helper.make_node("DequantizeLinear", [qn, sn, zn], [f"{name}_u8_dq"],
                                                        name=f"{name}_u8_DQ"))
                        b.constants.add(f"{name}_u8_dq")
                    w_scale[node.name] = np.array([enc8.scale], dtype=np.float32)
                    new_inputs.append(f"{name}_u8_dq")
                elif k == 2 and node.name in w_scale and node.op_type in ("Gemm", "Conv", "LayerNormalization"):
                    # bias: INT32 at input scale x weight scale
                    in_scale = np.float32(_scale_of(new_inputs[0], b))
                    s = (in_scale * w_scale[node.name]).astype(np.float32)
                    qb = np.round(value / (s if s.size > 1 else s.reshape(()))).astype(np.int64)
                    qn = f"{name}_int"
                    b.add(int_tensor(qn, TensorProto.INT32, qb))
                    zpn = b.const(f"{name}_zp", np.zeros(s.shape, dtype=np.int32))
                    sn = b.const(f"{name}_scale", s)
                    attrs = {"axis": 0} if s.size > 1 else {}
                    b.nodes.append(helper.make_node("DequantizeLinear", [qn, sn, zpn], [f"{name}_dq"],
                                                    name=f"{name}_DQ", **attrs))
                    new_inputs.append(f"{name}_dq")
                elif value.dtype == np.float32 and (node.op_type, k) not in PARAMETER_INPUTS:
                    new_inputs.append(b.constant(name, value))
                else:
                    new_inputs.append(name)
            elif name in prod:
                if kind == "trained" and k == 0:
                    need = trained_layers[ln.layer].act_encoding  # type: ignore[union-attr]
                    if need is None:
                        raise ConfigError(f"layer '{ln.layer}' has no activation encoding", "train before export")
                elif node.op_type in SHARED_ENCODING_OPS:
                    need = prod[name]
                else:
                    need = widened(prod[name])
                new_inputs.append(consume(name, need))
            else:
                new_inputs.append(name)  # integer tensors (shapes, masks, indices)
        outputs = [o if o not in graph_outputs else f"{o}__float" for o in node.output]
        new_node = onnx.NodeProto()
        new_node.CopyFrom(node)
        del new_node.input[:]
        new_node.input.extend(new_inputs)
        del new_node.output[:]
        new_node.output.extend(outputs)
        b.nodes.append(new_node)
        for k, (orig, out) in enumerate(zip(node.output, outputs, strict=True)):
            if orig not in ranges:
                continue
            if kind == "trained" and k == 0:
                enc = trained_layers[ln.layer].out_encoding  # type: ignore[union-attr]
            elif node.op_type in SHARED_ENCODING_OPS and node.input[0] in prod:
                enc = prod[node.input[0]]
            elif node.op_type in SHARED_ENCODING_OPS and new_inputs[0] in b.constant_encodings:
                enc = b.constant_encodings[new_inputs[0]]  # rows of a table (RoPE's, an embedding's)
            elif node.op_type in FIXED_OUTPUTS:
                enc = FIXED_OUTPUTS[node.op_type]
            else:
                enc = range_encoding(orig)
            prod[orig] = enc
            dq_of[orig] = b.qdq(out, enc, "a", output=orig if orig in graph_outputs else None)

    used = {i for n in b.nodes for i in n.input}
    # what passes through unchanged (shapes, indices: small) is stored inside the Q/DQ graph
    kept = [inline(i, base_dir) for i in g.initializer if i.name in used]
    out_model = helper.make_model(
        helper.make_graph(b.nodes, g.name, list(g.input), list(g.output), b.inits + kept),
        opset_imports=list(model.opset_import), ir_version=model.ir_version,
    )
    _drop_unused(out_model)
    report = QdqReport(len(trained), len(rule), weight_elements, len(converted), report_enc)
    return out_model, report


def _write_weights(b: _Builder, g: onnx.GraphProto, by_node: dict[str, tuple[str, LayerNode]],
                   trained_layers: dict[str, nn.Module], rule_layers: dict[str, nn.Module],
                   init_protos: dict[str, onnx.TensorProto], base_dir: str | Path | None, release: bool,
                   w_scale: dict[str, np.ndarray], report_enc: dict[str, dict[str, Any]]
                   ) -> tuple[dict[str, str], int]:
    """Every quantized layer's weight as its integer initializer behind a DQ node (the DQ output per node name),
    taken from the module's codes and checked against the float graph's value, read from its file one at a time;
    ``release``: each layer's float weight is dropped once its integer form is written."""
    weight_dq: dict[str, str] = {}
    weight_elements = 0
    for node in g.node:
        kind, ln = by_node.get(node.name, (None, None))
        if ln is None:
            continue
        name = node.input[1]
        value = tensor_value(init_protos[name], base_dir)
        layer = (trained_layers if kind == "trained" else rule_layers)[ln.layer]
        if kind == "trained":
            q, scale, offset = layer.weight_codes()  # type: ignore[operator]
            if float(offset.abs().max()) != 0.0:
                raise ConfigError(f"layer '{ln.layer}' was trained with wide-range weights",
                                  "export takes narrow-range weights: train with --weight-range narrow")
            q = q.numpy()
            dtype = _int_type(int(q.min()), int(q.max()))
        else:
            codes = getattr(layer, "rule_codes", None)  # a 16-bit module's (export/half.py)
            q_t, scale = codes if codes is not None else \
                quantize_weight(layer.weight, RULE_WEIGHT_BITS, "narrow", "channel")[:2]
            q, dtype = q_t.to(torch.int32).numpy(), TensorProto.INT8
        scale_np = scale.detach().float().numpy().reshape(-1)
        stored = _stored(q, ln, value.shape)
        if dtype == TensorProto.INT4 and scale_np.size == 1:
            # the HTP takes 4-bit weights per channel only: one scale repeated is the same maths
            scale_np = np.repeat(scale_np, stored.shape[ln.channel_axis])
        bscale = scale_np if scale_np.size == 1 else _bcast(scale_np, ln.channel_axis, stored.ndim)
        if not np.array_equal(stored.astype(np.float32) * bscale, value):
            raise ConfigError(f"layer '{ln.layer}': exported weights are not the quantized ones",
                              "report this export as a bug")
        w_scale[node.name] = scale_np
        weight_elements += int(q.size)
        weight_dq[node.name] = b.weight(name, stored, scale_np, ln.channel_axis, dtype)
        del q, stored, value
        if kind == "trained":
            enc_in = layer.act_encoding  # type: ignore[union-attr]
            enc_out = layer.out_encoding  # type: ignore[union-attr]
            report_enc[ln.layer] = {"weight_bits": layer.weight_bits, "weight_dtype":  # type: ignore[union-attr]
                                    TensorProto.DataType.Name(dtype), "weight_scale": scale_np.tolist(),
                                    "input": enc_in.to_dict() if enc_in else None,
                                    "output": enc_out.to_dict() if enc_out else None}
        if release:
            _release_weight(layer)
    return weight_dq, weight_elements


def _free(t: torch.Tensor) -> None:
    """Free a tensor's storage in place (whoever else holds the tensor object, e.g. the exporter's graph, holds an
    empty one from now on)."""
    t.data = torch.empty(0, dtype=t.dtype)


def _release_module(module: nn.Module) -> None:
    """Free every parameter and buffer of ``module`` (its quantization settings, plain attributes, stay)."""
    for t in [*module.parameters(), *module.buffers()]:
        _free(t)


def _release_weight(layer: nn.Module) -> None:
    """Free a layer's float weight (and frozen codes) once the graph holds its integer form."""
    _free(layer.weight)
    if getattr(layer, "frozen", None) is not None:
        layer.frozen = None  # type: ignore[assignment]
    if getattr(layer, "rule_codes", None) is not None:
        layer.rule_codes = None  # type: ignore[assignment]


def _bcast(scale: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    shape = [1] * ndim
    shape[axis] = scale.size
    return scale.reshape(shape)


def _scale_of(dq_output: str, b: _Builder) -> float:
    node = next(n for n in reversed(b.nodes) if n.output[0] == dq_output)
    init = next(i for i in b.inits if i.name == node.input[1])
    return float(tensor_value(init, b.writer.path.parent if b.writer is not None else None))


def _drop_unused(model: onnx.ModelProto) -> None:
    used = {i for n in model.graph.node for i in n.input}
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def trained_encodings_in_graph(model: onnx.ModelProto) -> int:
    """How many INT4 weight initializers the graph holds (a quick read-back for tests and reports)."""
    return sum(1 for i in model.graph.initializer if i.data_type == TensorProto.INT4)


__all__ = ["RULE", "QdqReport", "QuantMixin", "aligned", "apply_rule_to_trained_biases", "apply_rule_to_weights",
           "build_qdq", "calibrate_ranges", "widened"]
