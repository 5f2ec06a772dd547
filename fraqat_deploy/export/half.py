"""Export of a module that holds 16-bit (bfloat16 / float16) weights, with the Q/DQ result of a float32 load of the
same weights and without ever holding a float32 copy of the module.

Every 16-bit value is exactly a float32 one, so what the float32 path computes from a weight can be computed from
the 16-bit weight upcast, one tensor at a time:

* the rule's INT8 codes and scales of each untrained Linear / Conv2d, and a trained layer's frozen codes and scales,
  are computed from that layer's weight upcast (the float32 path's numbers; a layer trained from a 16-bit
  checkpoint holds its float32 master weight, ``train.trainer.float32_masters``, used as it is); the layer then
  keeps only its codes (int8, a quarter of a float32 copy) and its weight becomes a placeholder (a float32 zero
  broadcast to the weight's shape: no memory);
* the fake-quant reference (and its noise floor) runs in float32: trained layers dequantize their codes in float32
  (``QuantMixin.quantized_weight``), a rule layer's dequantized weight is made from its codes for its own call only
  (never rounded to 16 bits), and the remaining 16-bit parameters (embeddings) are upcast as their module runs
  (``models.half.compute_in_fp32``);
* the float32 ONNX graph is traced with every 16-bit parameter swapped for a placeholder, and its initializers are
  lazy tensors (``onnx_ir.LazyTensor``) that compute each value when the graph is written to its external data
  file, one at a time: the dequantized weights from the codes, the other 16-bit parameters upcast; the
  transposes the optimizer would fold (MatMul keeps ``W^T``) are folded lazily too. The exporter's optimizer
  then runs as ``torch.onnx.export(optimize=True)`` runs it, so the graph is the float32 path's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn

from fraqat_deploy.models.half import HALF, ROWS_IN_FP32, keep_half
from fraqat_deploy.quant import quantize_weight
from fraqat_deploy.quant.modules import is_quant_layer

Source = Callable[[], torch.Tensor]


_quiet = [0]


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """What is computed inside is a weight: ``export.reference_floor`` does not move it."""
    _quiet[0] += 1
    try:
        yield
    finally:
        _quiet[0] -= 1


def is_quiet() -> bool:
    return _quiet[0] > 0


def prepared(module: nn.Module) -> bool:
    """Whether ``module`` was prepared by a ``HalfExport`` whose codes it still holds (a student shared by two graphs
    is exported twice: the second export starts from the codes, its weights are placeholders by then)."""
    return any(getattr(m, "rule_codes", None) is not None for m in module.modules())


def placeholder(shape: torch.Size) -> nn.Parameter:
    """A float32 parameter of ``shape`` that holds one value (zero, broadcast): what tracing needs of a weight."""
    return nn.Parameter(torch.zeros((), dtype=torch.float32).expand(shape), requires_grad=False)


class HalfExport:
    """A 16-bit module prepared for export (see the module's docstring). ``sources``: for each parameter name the
    graph may use, the float32 value its initializer must hold."""

    def __init__(self, module: nn.Module, rule_bits: int) -> None:
        keep_half(module)  # norms, biases and buffers in float32 (the trained biases are rounded in place later)
        self.module = module
        self.sources: dict[str, Source] = {}
        self.rule_layers: dict[str, nn.Module] = {}
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        for name, m in module.named_modules():
            if is_quant_layer(m):
                self._trained(m)
            elif isinstance(m, (nn.Linear, nn.Conv2d)):
                self._rule(m, rule_bits)
                self.rule_layers[name] = m
        self._name_sources()

    def _trained(self, layer: nn.Module) -> None:
        if layer.frozen is None:  # type: ignore[union-attr]
            weight = layer.weight
            layer.weight = nn.Parameter(weight.detach().float(), requires_grad=False)
            layer.freeze()  # type: ignore[operator]  # codes and scales of the float32 values
            del weight
        layer.sync_encodings()  # type: ignore[operator]
        layer.learned = {}
        layer.weight = placeholder(layer.weight.shape)
        layer.mode = "export"

        def dequantized(layer: nn.Module = layer) -> torch.Tensor:
            q, scale, offset = layer.frozen  # type: ignore[misc]
            return (q * scale + offset).to(torch.float32)  # as QuantMixin.export_form makes W_b

        layer.half_source = dequantized  # type: ignore[assignment]

    def _rule(self, m: nn.Module, bits: int) -> None:
        if getattr(m, "rule_codes", None) is None:  # (a module exported before keeps its codes: see prepared)
            q, scale, _ = quantize_weight(m.weight.detach().float(), bits, "narrow", "channel")
            m.rule_codes = (q.to(torch.int8), scale)  # type: ignore[assignment]
            m.weight = placeholder(m.weight.shape)

        def dequantized(m: nn.Module = m) -> torch.Tensor:
            q, scale = m.rule_codes  # type: ignore[misc]
            return q.to(torch.float32) * scale  # as qdq.apply_rule_to_weights writes it

        m.half_source = dequantized  # type: ignore[assignment]
        self._rule_hooks(m)

    def _name_sources(self) -> None:
        self.sources.clear()
        for mod_name, m in self.module.named_modules(remove_duplicate=False):
            for name, p in m._parameters.items():
                if p is None:
                    continue
                full = f"{mod_name}.{name}" if mod_name else name
                if name == "weight" and hasattr(m, "half_source"):
                    self.sources[full] = m.half_source
                elif p.dtype in HALF:
                    self.sources[full] = lambda p=p: p.detach().float()

    @contextlib.contextmanager
    def tracing(self) -> Iterator[dict[str, Source]]:
        """Every parameter that has a source is a placeholder (rule layers' hooks off): the module as the
        exporter should see it, with no weight data."""
        hooks, self._hooks = self._hooks, []
        for h in hooks:
            h.remove()
        swapped: list[tuple[nn.Module, str, nn.Parameter]] = []
        # the class's own forward is the float32 path's graph once the weight is float32 (models/half.py)
        patched = {m: m.__dict__.pop("forward") for m in self.module.modules() if "forward" in m.__dict__
                   and getattr(m, ROWS_IN_FP32, False)}
        for m in self.module.modules():
            for name, p in list(m._parameters.items()):
                if p is not None and p.dtype in HALF:
                    swapped.append((m, name, p))
                    m._parameters[name] = placeholder(p.shape)
        try:
            yield self.sources
        finally:
            for m, name, p in swapped:
                m._parameters[name] = p
            for m, forward in patched.items():
                m.forward = forward
            for m in self.rule_layers.values():
                self._rule_hooks(m)

    def _rule_hooks(self, m: nn.Module) -> None:
        """A rule layer's dequantized weight exists while the layer runs, in float32."""

        def before(mod: nn.Module, args: object) -> None:
            with quiet():  # a weight, not an op's output: the noise floor leaves it alone
                mod._parameters["weight"] = mod.half_source()  # type: ignore[operator]

        def after(mod: nn.Module, args: object, output: object) -> None:
            mod._parameters["weight"] = placeholder(mod._parameters["weight"].shape)

        self._hooks += [m.register_forward_pre_hook(before), m.register_forward_hook(after, always_call=True)]

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []


def lazy_initializers(model, sources: dict[str, Source]) -> int:  # type: ignore[no-untyped-def]
    """Give the initializers of ``model`` (an ``onnx_ir`` model traced on placeholders) lazy float32 values from
    ``sources``, and fold each ``Transpose`` of one of them into a lazy transposed initializer (the fold the
    exporter's optimizer makes, without computing it now). Returns how many initializers became lazy."""
    import onnx_ir as ir

    graph = model.graph
    count = 0
    for name, value in list(graph.initializers.items()):
        source = sources.get(name)
        if source is None:
            continue
        value.const_value = _lazy(lambda s=source: s().numpy(), list(value.shape), name)
        count += 1
    for node in list(graph):
        if node.op_type != "Transpose" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 1:
            continue
        source_value = node.inputs[0]
        if source_value is None or not source_value.is_initializer() \
                or not isinstance(source_value.const_value, ir.LazyTensor) or len(source_value.uses()) != 1:
            continue
        perm_attr = node.attributes.get("perm")
        perm = list(perm_attr.as_ints()) if perm_attr is not None else None
        inner = source_value.const_value
        out = node.outputs[0]
        shape = list(np.empty(tuple(source_value.shape), dtype=np.bool_).transpose(perm).shape)
        folded = ir.Value(name=out.name, shape=ir.Shape(shape), type=ir.TensorType(ir.DataType.FLOAT))
        folded.const_value = _lazy(lambda t=inner, p=perm: np.ascontiguousarray(t.numpy().transpose(p)), shape,
                                   out.name)
        out.replace_all_uses_with(folded)
        graph.remove(node, safe=True)
        graph.initializers.pop(source_value.name)
        graph.register_initializer(folded)
    return count


def _lazy(make: Callable[[], np.ndarray], shape: list[int], name: str):  # type: ignore[no-untyped-def]
    import onnx_ir as ir

    return ir.LazyTensor(lambda: ir.tensor(make()), dtype=ir.DataType.FLOAT, shape=ir.Shape(shape), name=name)
