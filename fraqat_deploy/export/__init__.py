"""Export a trained run's components to Q/DQ ONNX that reproduces its quantization, with a parity check.

``export_run`` writes, under ``<run>/export/``: ``<component>.onnx`` (Q/DQ, opset 21), ``<component>.float.onnx``
(the same graph before quantization, for inspection), ``<component>.inputs.npz`` (sample and calibration
inputs), ``parity.json`` and ``export.json``.

Parity: every output of the Q/DQ model on ONNX Runtime's CPU provider against the PyTorch fake-quant model (the
trained student plus the export rule's INT8 weights, and its trained layers' biases rounded to the INT32 grid
the graph stores them on; ``bias_rounding_out_steps`` in ``export.json`` records the largest such change) on the
same sample input. With ``s`` the step of an 8-bit
encoding of the reference output's range (activations are 8-bit throughout a W4A8 graph, so one rounding step
of a trained tensor is the unit of disagreement), an output passes when its mean absolute error is at most
``1 s`` and its largest at most ``4 s``. A uint16 tensor read by a trained 8-bit input is on a grid aligned with
that encoding, so the requantization is exact (``qdq.aligned``); what remains is the uint16 rounding of untrained
tensors, which moves the inputs of later ops and so can move a trained 8-bit tensor by one step where a value sits
on a rounding boundary.

In a deep chain of 8-bit tensors (a language model's layers) such a step moves the next 8-bit tensors, and the
output moves by more than the fixed tolerance, on the reference alone: its *noise floor*, measured by running the
reference ``FLOOR_DRAWS`` times with its float inputs and every untrained op's output moved by a random fraction
of a uint16 step of the tensor's range (the rounding the rule adds there; trained layers compute as they are).
An output also passes when its mean and largest errors are within ``FLOOR_FACTOR`` times the floor's (the largest
over the draws); an export bug (a wrong encoding, a missing layer) is tens of steps off either way.
"""

from __future__ import annotations

import copy
import inspect
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch.overrides import TorchFunctionMode

from fraqat_deploy.compile.htp import cpu_session
from fraqat_deploy.errors import ConfigError, InputError
from fraqat_deploy.export.graph import OPSET, export_float
from fraqat_deploy.export.half import HalfExport
from fraqat_deploy.export.half import is_quiet as half_weight_in_making
from fraqat_deploy.export.half import prepared as half_prepared
from fraqat_deploy.export.qdq import (
    FIXED_OUTPUTS,
    RULE,
    RULE_WEIGHT_BITS,
    apply_rule_to_trained_biases,
    apply_rule_to_weights,
    build_qdq,
)
from fraqat_deploy.models.base import Component
from fraqat_deploy.models.half import has_half
from fraqat_deploy.models.htp_forms import htp_forms
from fraqat_deploy.onnx_io import data_file, release_memory, return_big_blocks, save_model
from fraqat_deploy.quant import quant_layers
from fraqat_deploy.runs import RunDir, sha256_file, write_json_atomic
from fraqat_deploy.train.load import load_trained
from fraqat_deploy.ui import task

MEAN_STEPS_TOL = 1.0
MAX_STEPS_TOL = 4.0
FLOOR_DRAWS = 4
FLOOR_FACTOR = 2.0


def parity_metrics(got: np.ndarray, ref: np.ndarray, floor: dict[str, float] | None = None) -> dict[str, Any]:
    """Errors of ``got`` against ``ref`` in 8-bit steps; ``floor`` (mean_steps, max_steps): the reference's noise
    floor (see the module's docstring)."""
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    step = max(float(ref.max() - ref.min()), 1e-12) / 255.0
    mean_steps, max_steps = float(diff.mean()) / step, float(diff.max()) / step
    within_tol = mean_steps <= MEAN_STEPS_TOL and max_steps <= MAX_STEPS_TOL
    within_floor = floor is not None and mean_steps <= FLOOR_FACTOR * floor["mean_steps"] \
        and max_steps <= FLOOR_FACTOR * floor["max_steps"]
    metrics = {
        "max_abs": float(diff.max()), "mean_abs": float(diff.mean()),
        "rel": float(diff.mean() / max(float(np.abs(ref).mean()), 1e-12)), "step_8bit": step,
        "mean_steps": mean_steps, "max_steps": max_steps,
        "passed": bool(np.isfinite(got).all() and (within_tol or within_floor)),
    }
    if floor is not None:
        metrics |= {"floor_mean_steps": floor["mean_steps"], "floor_max_steps": floor["max_steps"],
                    "passed_on": "tolerance" if within_tol else "noise floor" if within_floor else None}
    return metrics


#: torch functions that only move data (the Q/DQ graph keeps their input's encoding: nothing is rounded)
_DATA_MOVES = frozenset({"view", "reshape", "transpose", "permute", "unsqueeze", "squeeze", "expand", "flatten",
                         "contiguous", "__getitem__", "float", "to", "type_as", "clone", "detach", "unflatten"})

#: torch functions whose output encoding the rule fixes (``qdq.FIXED_OUTPUTS``): their step, whatever the range
_FIXED_STEPS = {"tanh": FIXED_OUTPUTS["Tanh"].scale, "sigmoid": FIXED_OUTPUTS["Sigmoid"].scale}


class _Uint16Jitter(TorchFunctionMode):
    """Moves every float tensor a torch op computes (outside the trained layers) by a random fraction of a uint16
    step of its own range: the rounding the rule adds after every untrained op."""

    def __init__(self, generator: torch.Generator) -> None:
        super().__init__()
        self.generator = generator
        self.inside_trained = 0

    def jitter(self, x: torch.Tensor, step: float | None = None) -> torch.Tensor:
        if step is None:
            step = float(x.max() - x.min()) / 65535.0 if x.numel() > 1 else 0.0
        if step <= 0.0:
            return x
        noise = torch.rand(x.shape, generator=self.generator, dtype=torch.float32) - 0.5
        return x + (noise * step).to(x.dtype)

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", "")
        if self.inside_trained or name in _DATA_MOVES or half_weight_in_making():
            return out
        if isinstance(out, torch.Tensor) and out.is_floating_point() and not isinstance(out, torch.nn.Parameter):
            return self.jitter(out, _FIXED_STEPS.get(name))
        return out


@torch.no_grad()
def reference_floor(module: torch.nn.Module, sample: tuple[torch.Tensor, ...], layers: dict[str, torch.nn.Module],
                    refs: list[torch.Tensor], draws: int = FLOOR_DRAWS) -> list[dict[str, float]]:
    """Per output, the largest mean and max 8-bit steps the reference moves by when the graph's float inputs and
    every untrained op's output move within a uint16 step (seeded draws; trained layers compute as they are)."""
    floors = [{"mean_steps": 0.0, "max_steps": 0.0} for _ in refs]
    for draw in range(draws):
        mode = _Uint16Jitter(torch.Generator().manual_seed(draw))

        def enter(*_: Any, mode: _Uint16Jitter = mode) -> None:
            mode.inside_trained += 1

        def leave(*_: Any, mode: _Uint16Jitter = mode) -> None:
            mode.inside_trained -= 1

        hooks = [h for layer in layers.values()
                 for h in (layer.register_forward_pre_hook(enter), layer.register_forward_hook(leave))]
        try:
            moved_inputs = tuple(mode.jitter(t) if t.is_floating_point() else t for t in sample)
            with mode:
                moved = module(*moved_inputs)
        finally:
            for hook in hooks:
                hook.remove()
        moved = [moved] if isinstance(moved, torch.Tensor) else list(moved)
        for floor, m, r in zip(floors, moved, refs, strict=True):
            metrics = parity_metrics(m.float().cpu().numpy(), r.float().cpu().numpy())
            floor["mean_steps"] = max(floor["mean_steps"], metrics["mean_steps"])
            floor["max_steps"] = max(floor["max_steps"], metrics["max_steps"])
    return floors


def save_inputs(component: Component, path: Path) -> None:
    arrays = {}
    for i, row in enumerate(component.calibration):
        for name, t in zip(component.input_names, row, strict=True):
            arrays[f"{i}/{name}"] = t.detach().cpu().numpy()
    np.savez(path, **arrays)


def load_inputs(path: Path, index: int = 0) -> dict[str, np.ndarray]:
    """The ``index``-th input set saved by ``save_inputs`` (0: the sample)."""
    if not path.is_file():
        raise InputError(f"no sample inputs at {path}", "export the run again: fraqat-deploy export <model> --run R")
    with np.load(path) as data:
        prefix = f"{index}/"
        return {k[len(prefix):]: data[k] for k in data.files if k.startswith(prefix)}


def _shares_parameters(module: torch.nn.Module, others: list[torch.nn.Module]) -> bool:
    mine = {p.data_ptr() for p in module.parameters()}
    return any(p.data_ptr() in mine for other in others for p in other.parameters())


def export_component(component: Component, out: Path, *, owned: bool = False, release: bool = True,
                     step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """One component: HTP forms, the rule's weights, float export, Q/DQ, parity. Returns its record.

    ``owned``: the export may change ``component.module`` (no copy of the module is made); otherwise it works on
    a copy. ``release``: the module it works on has its quantized layers' float weights freed as their integer
    form is taken; without it the module stays ready for the next component that shares it (Gemma-2's prefill and
    decode graphs around one student: each step below is done once on the shared layers, so the second export
    starts from the first one's codes, and no copy of a 2.6B student is made). ``step`` hears the name of each step
    as it starts (minutes each at real size: the progress line shows them).

    Memory, in order (a big model never holds two copies of its float weights): the float graph is written with
    its weights in external data straight from the exporter and read back without them; the fake-quant reference
    and its noise floor are computed while the module is whole; the Q/DQ pass then reads each float tensor from
    the file when it needs it and drops each layer's float weight once its integer form is taken; calibration
    reduces every tensor to its min / max as it is produced (see ``calibrate_ranges``)."""
    started = time.perf_counter()
    step = step or (lambda _: None)
    return_big_blocks()
    step("float graph")
    module = (component.module if owned else copy.deepcopy(component.module)).eval()
    forms = htp_forms(module)
    # 16-bit weights (a Gemma-2 checkpoint as shipped): the same Q/DQ result, computed a tensor at a time in
    # float32, without a float32 copy of the module (export/half.py)
    half = HalfExport(module, RULE_WEIGHT_BITS) if has_half(module) or half_prepared(module) else None
    if half is None:
        apply_rule_to_weights(module)
    layers = quant_layers(module)
    if half is None:
        for layer in layers.values():
            layer.export_form()
    bias_rounding = apply_rule_to_trained_biases(layers)
    work = Component(component.name, module, component.input_names, component.output_names,
                     component.calibration, component.holds_student)
    float_path, qdq_path = out / f"{component.name}.float.onnx", out / f"{component.name}.onnx"
    if half is None:
        float_model = export_float(work, float_path)
    else:
        with half.tracing() as sources:
            float_model = export_float(work, float_path, sources)
    save_inputs(component, out / f"{component.name}.inputs.npz")

    step("fake-quant reference and its noise floor")
    for layer in layers.values():
        layer.mode = "frozen"  # the fake-quant reference: same weights, trained activation encodings
    with torch.no_grad():
        ref = module(*work.sample)
    refs = [r.detach().float().cpu().numpy() for r in ([ref] if isinstance(ref, torch.Tensor) else list(ref))]
    floors = reference_floor(module, work.sample, layers, [torch.from_numpy(r) for r in refs])
    del ref
    step("Q/DQ graph (calibration probe)")
    streamed = data_file(float_path).is_file()  # a big float graph: the Q/DQ one is written as it is built too
    qdq_model, report = build_qdq(float_model, module, work.input_names, work.calibration,
                                  base_dir=float_path.parent, release=release,
                                  data_path=data_file(qdq_path) if streamed else None)
    del float_model
    release_memory()
    try:
        save_model(qdq_model, qdq_path, check=True, keep=False)
    except onnx.checker.ValidationError as e:
        raise ConfigError(f"the Q/DQ graph of '{component.name}' is invalid: {str(e).splitlines()[0]}",
                          "report this export as a bug") from None
    del qdq_model
    if half is not None:
        half.close()
    step("CPU parity")
    session = cpu_session(qdq_path)
    feed = {n: t.detach().cpu().numpy() for n, t in zip(work.input_names, work.sample, strict=True)}
    outputs = session.run(work.output_names, feed)
    del session
    parity = {name: parity_metrics(got, r, floor)
              for name, got, r, floor in zip(work.output_names, outputs, refs, floors, strict=True)}
    return {
        "onnx": qdq_path.name, "float_onnx": float_path.name, "inputs": f"{component.name}.inputs.npz",
        "input_names": work.input_names, "output_names": work.output_names,
        "input_shapes": {n: list(t.shape) for n, t in zip(work.input_names, work.sample, strict=True)},
        "holds_student": component.holds_student, "info": component.info, "htp_forms": forms, "qdq": report.to_dict(),
        "sha256": sha256_file(qdq_path), "parity": parity,
        "bias_rounding_out_steps": bias_rounding, "seconds": round(time.perf_counter() - started, 2),
    }


def export_run(run: Path, model: str | None = None, *, components: list[str] | None = None,
               n_calibration: int = 8, seed: int = 0, guidance_batch: int | None = None,
               embedding: str | None = None) -> dict[str, Any]:
    """Export every component of a trained run (or the chosen ones). Fails loudly when parity does not hold,
    after writing ``parity.json``. ``guidance_batch``: rows per transformer call of a Sana model (its default: 2).
    ``embedding``: where a Gemma model's embedding lookup runs, "graph" or "host" (the table is written beside
    the graphs, recorded under the manifest's ``files``); None: the adapter's default for the model's size."""
    trained = load_trained(run, model)
    adapter = trained.adapter
    options: dict[str, Any] = {}
    parameters = inspect.signature(adapter.components).parameters
    for name, value, flag, family in (("guidance_batch", guidance_batch, "--guidance-batch", "Sana"),
                                      ("embedding", embedding, "--embedding", "Gemma-2")):
        if value is None:
            continue
        if name not in parameters:
            raise ConfigError(f"{flag} applies to the {family} models, not '{adapter.name}'", f"drop {flag}")
        options[name] = value
    # the export owns the loaded student: no copy (a real transformer is GBs); the FP model's own student is only
    # needed to make the calibration inputs
    all_components = adapter.components(trained.fp, trained.student, n_calibration=n_calibration, seed=seed,
                                        **options)
    del trained
    names = [c.name for c in all_components]
    unknown = sorted(set(components or []) - set(names))
    if unknown:
        raise ConfigError(f"unknown component(s) {', '.join(unknown)}", f"use: {', '.join(names)}")
    # components not asked for are dropped before the first export (their modules are freed)
    pending = [c for c in all_components if not components or c.name in components]
    del all_components
    rd = RunDir(run)
    out = rd.stage_dir("export")
    rd.update_stage("export", "running", components=names if not components else components)
    # host-side files first (Gemma's embedding table): written from the modules before any export changes them
    writers = {name: writer for c in pending for name, writer in c.files.items()}
    files = {name: writer(out) for name, writer in writers.items()}
    del writers
    for c in pending:
        c.files = {}
    records = {}
    with task("export (Q/DQ ONNX, CPU parity)", len(pending)) as tick:
        while pending:
            component = pending.pop(0)
            tick(0, info=component.name)
            # the export owns every module; one shared with a later component keeps its weights until that one
            release = not _shares_parameters(component.module, [c.module for c in pending])
            records[component.name] = export_component(
                component, out, owned=True, release=release,
                step=lambda what, name=component.name: tick(0, info=f"{name}: {what}"))
            tick(info=f"{component.name} done")
            del component
    parity = {name: rec["parity"] for name, rec in records.items()}
    write_json_atomic(out / "parity.json", {
        "reference": "PyTorch fake-quant model (trained encodings + the export rule's INT8 weights)",
        "tolerance": {"mean_steps": MEAN_STEPS_TOL, "max_steps": MAX_STEPS_TOL,
                      "step": "8-bit step of the reference output's range",
                      "or_within_noise_floor": FLOOR_FACTOR,
                      "noise_floor": f"the reference against itself with every untrained tensor moved within a "
                                     f"uint16 step (largest of {FLOOR_DRAWS} draws)"},
        "components": parity,
    })
    manifest = {"opset": OPSET, "rule": RULE, "adapter": adapter.name, "calibration_inputs": n_calibration,
                "components": records}
    if files:
        manifest["files"] = files
    write_json_atomic(out / "export.json", manifest)
    failed = [f"{c}/{o} ({m['mean_steps']:.2f} mean, {m['max_steps']:.2f} max steps)"
              for c, outs in parity.items() for o, m in outs.items() if not m["passed"]]
    if failed:
        rd.update_stage("export", "failed", reason=f"parity: {', '.join(failed)}")
        raise ConfigError(f"export parity does not hold for {', '.join(failed)} (see {out / 'parity.json'})",
                          "run `fraqat-deploy debug-htp` style comparisons, or report this export as a bug")
    rd.update_stage("export", "done", components=list(records))
    rd.record_outputs("export", [out / r["onnx"] for r in records.values()] + [out / "parity.json"]
                      + [out / f["file"] for f in files.values()])
    return manifest
