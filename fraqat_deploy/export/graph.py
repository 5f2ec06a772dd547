"""PyTorch -> float ONNX, and finding in the graph the node of each quantized layer.

The torch.onnx (dynamo) exporter records every node's module path in its metadata
(``pkg.torch.onnx.name_scopes``), which maps a layer of the PyTorch model to its MatMul / Gemm / Conv node
without guessing from generated tensor names.
"""

from __future__ import annotations

import ast
import contextlib
import io
import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from torch import nn

from fraqat_deploy import onnx_io
from fraqat_deploy.errors import ConfigError
from fraqat_deploy.export.half import Source, lazy_initializers
from fraqat_deploy.models.base import Component
from fraqat_deploy.onnx_io import save_model

OPSET = 21
WEIGHT_OPS = ("MatMul", "Gemm", "Conv")
SCOPES_KEY = "pkg.torch.onnx.name_scopes"


@dataclass
class LayerNode:
    layer: str  # module path in the component's module
    node: onnx.NodeProto
    weight: str  # initializer name
    data_input: str  # the activation input tensor
    channel_axis: int  # the output-channel axis of the initializer as stored


def export_float(component: Component, path: Path, sources: dict[str, Source] | None = None) -> onnx.ModelProto:
    """Static-shape float ONNX of ``component`` at opset 21 (weights stored as they are in the module).

    A module of ``onnx_io.STREAM_BYTES`` or more has its weights written by the exporter straight into
    ``<name>.onnx.data`` (no in-memory protobuf copy of them), and the graph comes back without them: its
    tensors are read from the file (relative to ``path``'s folder) when needed.

    ``sources``: the module's parameters are placeholders (``half.HalfExport.tracing``) and each initializer's
    float32 value is computed from its source as the graph is written; the exporter's optimizer then runs on
    those lazy values, as ``torch.onnx.export(optimize=True)`` runs it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    stream = onnx_io.module_bytes(component.module) >= onnx_io.STREAM_BYTES
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        try:
            lazy = sources is not None  # optimized and named below, in the exporter's order, on lazy values
            program = torch.onnx.export(
                component.module.eval(), component.sample, dynamo=True, opset_version=OPSET,
                input_names=None if lazy else component.input_names,
                output_names=None if lazy else component.output_names, external_data=False,
                optimize=not lazy, verbose=False,
            )
            if lazy:
                lazy_initializers(program.model, sources)
                program.optimize()
                _rename(program.model.graph.inputs, component.input_names)
                _rename(program.model.graph.outputs, component.output_names)
        except Exception as e:  # the exporter raises many types; the user needs the op and the component
            raise ConfigError(f"cannot export component '{component.name}' to ONNX: {str(e).splitlines()[0]}",
                              "rerun with --debug for the exporter's report") from e
    if stream:
        data = onnx_io.data_file(path)
        data.unlink(missing_ok=True)
        program.save(str(path), external_data=True)
        del program
        model = onnx.load(str(path), load_external_data=False)
    else:
        model = program.model_proto
        del program
    _square_instead_of_pow(model, path.parent)
    _materialize_batch_broadcast(model, path.parent)
    if stream:
        onnx_io.save_graph(model, path)
    else:
        save_model(model, path)
    return model


def _rename(values, names: list[str]) -> None:  # type: ignore[no-untyped-def]
    """Name the graph's inputs or outputs as ``torch.onnx.export(input_names=..., output_names=...)`` does."""
    for value, name in zip(values, names, strict=False):
        value.metadata_props["pkg.torch.onnx.original_node_name"] = str(value.name)
        value.name = name


def _square_instead_of_pow(model: onnx.ModelProto, base_dir: Path) -> None:
    """``Pow(x, 2)`` -> ``Mul(x, x)``: a quantized exponent of 2 is not exactly 2, and x^1.99997 of a negative x
    is NaN."""
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        exponent = inits.get(node.input[1]) if node.op_type == "Pow" else None
        if exponent is not None and math.prod(exponent.dims) == 1 \
                and float(onnx_io.tensor_value(exponent, base_dir).reshape(())) == 2.0:
            node.op_type = "Mul"
            node.input[1] = node.input[0]


#: elementwise operators whose constant operand is materialized along the batch axis
_BROADCAST_OPS = ("Add", "Sub", "Mul", "Div")


def _materialize_batch_broadcast(model: onnx.ModelProto, base_dir: Path) -> None:
    """A constant operand of an elementwise operator that broadcasts along the batch axis (``[1, ...]`` against a
    batch of N) is stored at the full batch size.

    Found on the host HTP simulator (QNN 2.51, soc 69): ``Add(x[2, T, C], pos_embed[1, T, C]) -> LayerNormalization``
    computes the second batch element wrongly (37% off) while each operator alone, and the same graph with the
    constant tiled to ``[2, T, C]``, is exact. The cost is N copies of such constants (position embeddings,
    small biases)."""
    from onnx import numpy_helper

    inferred = onnx_io.infer_shapes(model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type not in _BROADCAST_OPS or len(node.input) != 2:
            continue
        out_shape = shapes.get(node.output[0])
        if not out_shape or out_shape[0] <= 1:
            continue
        for k, name in enumerate(node.input):
            init = inits.get(name)
            if init is None or len(init.dims) != len(out_shape) or init.dims[0] != 1:
                continue
            value = onnx_io.tensor_value(init, base_dir)
            tiled_name = f"{name}_x{out_shape[0]}"
            if tiled_name not in inits:
                tiled = numpy_helper.from_array(value.repeat(out_shape[0], axis=0), tiled_name)
                model.graph.initializer.append(tiled)
                inits[tiled_name] = tiled
            node.input[k] = tiled_name
    used = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    gone = {i.name for i in model.graph.initializer} - used
    keep = [i for i in model.graph.initializer if i.name not in gone]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    infos = [v for v in model.graph.value_info if v.name not in gone]
    del model.graph.value_info[:]
    model.graph.value_info.extend(infos)


def _scopes(node: onnx.NodeProto) -> list[str]:
    for prop in node.metadata_props:
        if prop.key == SCOPES_KEY:
            try:
                return list(ast.literal_eval(prop.value))
            except (ValueError, SyntaxError):
                return []
    return []


def weight_layer_nodes(model: onnx.ModelProto, layers: dict[str, nn.Module], *, required: bool = True
                       ) -> dict[str, LayerNode]:
    """The MatMul / Gemm / Conv node of every named Linear / Conv2d layer, and how its weight is stored.

    ``required``: every layer must be in the graph (a trained layer missing from its component is a bug;
    an unused one, such as the VAE encoder in the decoder graph, is not)."""
    inits = {i.name: i for i in model.graph.initializer}
    found: dict[str, LayerNode] = {}
    for node in model.graph.node:
        if node.op_type not in WEIGHT_OPS:
            continue
        scopes = _scopes(node)
        names = [s for s in scopes if s in layers]
        if not names or len(node.input) < 2 or node.input[1] not in inits:
            continue
        name = names[-1]
        module = layers[name]
        dims = tuple(inits[node.input[1]].dims)
        out_features = module.weight.shape[0]
        if node.op_type == "MatMul":
            axis = len(dims) - 1  # stored transposed: [in, out]
        elif node.op_type == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            axis = 0 if trans_b else 1
        else:
            axis = 0
        if dims[axis] != out_features:
            raise ConfigError(f"layer '{name}': weight {dims} does not store {out_features} outputs on axis {axis}",
                              "report this export as a bug")
        if name in found:
            raise ConfigError(f"layer '{name}' maps to two ONNX nodes", "report this export as a bug")
        found[name] = LayerNode(name, node, node.input[1], node.input[0], axis)
    missing = sorted(set(layers) - set(found))
    if missing and required:
        raise ConfigError(f"no ONNX node found for layer(s) {', '.join(missing[:4])}",
                          "the exporter folded or renamed them; report this export as a bug")
    return found


def consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out
