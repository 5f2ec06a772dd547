"""Compile a run's exported components for a target, and check each on the host HTP simulator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fraqat_deploy.compile.local import compile_cached, htp_parity
from fraqat_deploy.errors import ConfigError, InputError
from fraqat_deploy.export import load_inputs
from fraqat_deploy.runs import RunDir, read_json, write_json_atomic
from fraqat_deploy.targets import get_target
from fraqat_deploy.ui import task


def read_export(run: Path) -> dict[str, Any]:
    path = Path(run) / "export" / "export.json"
    if not path.is_file():
        raise InputError(f"{run} has no export", f"export it first: fraqat-deploy export <model> --run {run}")
    return read_json(path, f"export again: fraqat-deploy export <model> --run {run}")


#: how many of the exported calibration inputs HTP parity runs (the first is often the "" prompt, whose tokens
#: are all alike and hide layout errors)
PARITY_ROWS = 4


def input_rows(path: Path, limit: int = PARITY_ROWS) -> list[dict[str, np.ndarray]]:
    with np.load(path) as data:
        indices = sorted({int(key.split("/", 1)[0]) for key in data.files if "/" in key})
    return [load_inputs(path, i) for i in indices[:limit]] or [load_inputs(path)]


def worst_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One parity record over several inputs: each output's worst row; passed only if every row passed."""
    merged = dict(rows[0])
    merged["outputs"] = {name: max((r["outputs"][name] for r in rows), key=lambda o: (not o["passed"], o["rel"]))
                         for name in rows[0]["outputs"]}
    merged["rows"] = len(rows)
    merged["passed"] = all(r["passed"] for r in rows)
    merged["simulator_seconds"] = round(sum(r["simulator_seconds"] for r in rows), 4)
    return merged


def skipped_parity() -> dict[str, Any]:
    """The parity record of a component whose HTP parity was not run (``--parity-rows 0``)."""
    return {"skipped": True, "passed": None, "outputs": {}, "rows": 0,
            "reason": "not run: --parity-rows 0 (the HTP simulator emulates the NPU on the host; a real-size "
                      "component takes hours there)"}


def compile_run(run: Path, device: str, *, allow_cpu_fallback: bool = False, components: list[str] | None = None,
                force: bool = False, parity_rows: int = PARITY_ROWS) -> dict[str, Any]:
    """Compile every exported component for ``device`` (a target alias) with the local QNN HTP compiler; then run
    each context binary on the HTP simulator against its Q/DQ model on the CPU (``htp_parity.json``) on the first
    ``parity_rows`` exported inputs (0: no parity run, recorded as skipped)."""
    if parity_rows < 0:
        raise ConfigError(f"--parity-rows {parity_rows} is negative", "give 0 (skip HTP parity) or more rows")
    target = get_target(device)
    exported = read_export(run)
    names = list(exported["components"])
    unknown = sorted(set(components or []) - set(names))
    if unknown:
        raise ConfigError(f"unknown component(s) {', '.join(unknown)}", f"use: {', '.join(names)}")
    rd = RunDir(run)
    stage = f"compile/{target.alias}"
    out = rd.stage_dir(stage)
    rd.update_stage(stage, "running", target=target.alias, backend="local")
    export_dir = Path(run) / "export"
    records, parity = {}, {}
    chosen = {n: i for n, i in exported["components"].items() if not components or n in components}
    try:
        with task(f"compile ({target.alias})" + (" + HTP parity" if parity_rows else ""), len(chosen)) as tick:
            for name, info in chosen.items():
                tick(0, info=name)
                records[name] = compile_cached(export_dir / info["onnx"], out, target,
                                               allow_cpu_fallback=allow_cpu_fallback, force=force)
                float_onnx = export_dir / info["float_onnx"] if info.get("float_onnx") else None
                float_onnx = float_onnx if float_onnx and float_onnx.is_file() else None
                rows = [htp_parity(out / f"{Path(info['onnx']).stem}_ctx.onnx", export_dir / info["onnx"], inputs,
                                   target=target, float_onnx=float_onnx)
                        for inputs in (input_rows(export_dir / info["inputs"], parity_rows) if parity_rows else [])]
                parity[name] = worst_row(rows) if rows else skipped_parity()
                tick(info=f"{name} done")
    except Exception:
        rd.update_stage(stage, "failed")
        raise
    write_json_atomic(out / "htp_parity.json", {
        "what": "compiled context binary on the host HTP simulator vs the Q/DQ model on ONNX Runtime's CPU provider",
        "tolerance": "per output and input row: within 2 output steps everywhere, or mean relative error <= "
                     "max(2%, 2.5 x the Q/DQ model's own error against its float graph) with the largest "
                     "error <= max(10% of the output's peak, 2.5 x the Q/DQ model's own largest error)",
        "components": parity,
    })
    failed = [n for n, p in parity.items() if p["passed"] is False]
    if failed:
        worst = {n: max(o["rel"] for o in parity[n]["outputs"].values()) for n in failed}
        rd.update_stage(stage, "failed", components=list(records), htp_parity_failed=failed,
                        reason="HTP parity: " + ", ".join(f"{n} {r:.1%} rel" for n, r in worst.items()))
        raise ConfigError(
            "the simulated HTP departs from the CPU Q/DQ model for "
            + ", ".join(f"{n} ({r:.1%} rel)" for n, r in worst.items()) + f" (see {out / 'htp_parity.json'})",
            f"find where with `fraqat-deploy debug-htp --run {run} --component {failed[0]}`; the context binaries "
            "are kept")
    rd.update_stage(stage, "done", components=list(records), htp_parity_failed=failed)
    return {"target": target.alias, "records": records, "parity": parity, "out": out, "failed": failed}
