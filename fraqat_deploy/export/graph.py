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
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from torch import nn

from fraqat_deploy.errors import ConfigError
from fraqat_deploy.models.base import Component

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


def export_float(component: Component, path: Path) -> onnx.ModelProto:
    """Static-shape float ONNX of ``component`` at opset 21 (weights stored as they are in the module)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        try:
            program = torch.onnx.export(
                component.module.eval(), component.sample, dynamo=True, opset_version=OPSET,
                input_names=component.input_names, output_names=component.output_names, external_data=False,
                optimize=True, verbose=False,
            )
        except Exception as e:  # the exporter raises many types; the user needs the op and the component
            raise ConfigError(f"cannot export component '{component.name}' to ONNX: {str(e).splitlines()[0]}",
                              "rerun with --debug for the exporter's report") from e
    model = program.model_proto
    _square_instead_of_pow(model)
    onnx.save(model, str(path))
    return model


def _square_instead_of_pow(model: onnx.ModelProto) -> None:
    """``Pow(x, 2)`` -> ``Mul(x, x)``: a quantized exponent of 2 is not exactly 2, and x^1.99997 of a negative x
    is NaN."""
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Pow" and node.input[1] in inits and inits[node.input[1]].size == 1 \
                and float(inits[node.input[1]]) == 2.0:
            node.op_type = "Mul"
            node.input[1] = node.input[0]


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
