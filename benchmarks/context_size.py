"""What makes an HTP context binary bigger than its weights: two probes, compiled for the target by the QNN HTP
compiler in onnxruntime-qnn.

1. ``chain``: N 16-bit Adds in a row on a ``[2, T, 1152]`` tensor (no weights at all): the binary's size against N
   and T shows a per-operation cost that grows with the activation size.
2. ``sana``: the real-width Sana 600M transformer (benchmarks/configs, seeded random weights) cut to a few layers,
   PTQ'd and exported with the guidance batch of 2 in one graph and with one row (``export --guidance-batch``):
   bytes per weight and compile time of each.

    python benchmarks/context_size.py                      # both probes (about 10 min on 2 cores)
    python benchmarks/context_size.py --probes chain

Results: ``benchmarks/results/context_size.{json,md}``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
WIDTH = 1152  # Sana 600M's hidden size


def chain_graph(path: Path, n: int, tokens: int) -> None:
    """x [2, tokens, WIDTH] -> n x (Add a uint16 constant, requantize to uint16) -> y."""
    inits = [numpy_helper.from_array(np.array(1e-3, np.float32), "s"),
             numpy_helper.from_array(np.array(32768, np.uint16), "z"),
             numpy_helper.from_array(np.full((1, 1, WIDTH), 3, np.uint16), "c_int"),
             numpy_helper.from_array(np.array(1e-4, np.float32), "c_s")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q0"]),
             helper.make_node("DequantizeLinear", ["q0", "s", "z"], ["d0"]),
             helper.make_node("DequantizeLinear", ["c_int", "c_s", "z"], ["c"])]
    for i in range(n):
        nodes += [helper.make_node("Add", [f"d{i}", "c"], [f"a{i}"]),
                  helper.make_node("QuantizeLinear", [f"a{i}", "s", "z"], [f"q{i + 1}"]),
                  helper.make_node("DequantizeLinear", [f"q{i + 1}", "s", "z"], [f"d{i + 1}"])]
    nodes.append(helper.make_node("Identity", [f"d{n}"], ["y"]))
    shape = [2, tokens, WIDTH]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.save(model, str(path))


def chain_probe(work: Path, target: str) -> list[dict[str, Any]]:
    from fraqat_deploy.compile.local import compile_onnx

    rows = []
    for tokens in (64, 1024):
        for n in (50, 200):
            folder = work / f"chain-{n}-{tokens}"
            folder.mkdir(parents=True, exist_ok=True)
            chain_graph(folder / "chain.onnx", n, tokens)
            r = compile_onnx(folder / "chain.onnx", folder / "ctx", target)
            rows.append({"adds": n, "tokens": tokens, "activation_bytes": 2 * tokens * WIDTH * 2,
                         "context_binary_bytes": r["context_binary_bytes"], "compile_seconds": r["seconds"]})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def _real_size():
    spec = importlib.util.spec_from_file_location("real_size", ROOT / "benchmarks" / "real_size.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["real_size"] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def sana_probe(work: Path, target: str, layers: int, seed: int) -> list[dict[str, Any]]:
    from fraqat_deploy.compile.local import compile_onnx
    from fraqat_deploy.export import export_run

    real_size = _real_size()
    config = real_size.load_config
    real_size.load_config = lambda name: config(name) | ({"num_layers": layers}
                                                         if name == "sana600m_transformer" else {})
    folder, run = work / "sana" / "model", work / "sana" / "run"
    real_size.build_sana_folder("transformer", folder, seed)
    subprocess.run([sys.executable, "-m", "fraqat_deploy.cli", "train", "sana", "--source", str(folder), "--out",
                    str(run), "--schedule", "ptq", "--n-train", "4", "--n-val", "2", "--calib-samples", "4"],
                   check=True, stdout=subprocess.DEVNULL)
    rows = []
    for guidance_batch in (2, 1):
        export_run(run, components=["transformer"], n_calibration=2, guidance_batch=guidance_batch)
        r = compile_onnx(run / "export" / "transformer.onnx", work / "sana" / f"ctx-{guidance_batch}", target)
        weights = r["weights"]
        rows.append({"layers": layers, "guidance_batch": guidance_batch, "nodes": r["coverage"]["nodes"],
                     "htp_fraction": r["coverage"]["htp_fraction"], "weights": weights["elements"],
                     "context_binary_bytes": r["context_binary_bytes"],
                     "bytes_per_weight": weights["bytes_per_weight"], "compile_seconds": r["seconds"]})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def render(data: dict[str, Any]) -> str:
    out = ["# HTP context binary size", "",
           f"Target {data['target']}, onnxruntime-qnn {data['onnxruntime']}. Compile times are this machine's "
           "(2 cores, shared), not the phone's.", ""]
    if data.get("chain"):
        out += ["## 16-bit Adds in a row, no weights", "",
                "| Adds | activation [2, T, 1152], T | context binary | per extra Add |", "|---|---|---|---|"]
        by_t: dict[int, list[dict[str, Any]]] = {}
        for r in data["chain"]:
            by_t.setdefault(r["tokens"], []).append(r)
        for tokens, rows in by_t.items():
            rows.sort(key=lambda r: r["adds"])
            grown = rows[-1]["context_binary_bytes"] - rows[0]["context_binary_bytes"]
            per = grown / (rows[-1]["adds"] - rows[0]["adds"])
            for r in rows:
                out.append(f"| {r['adds']} | {tokens} | {r['context_binary_bytes'] / 1024:.0f} KiB | "
                           f"{per / 1024:.1f} KiB |")
        out += ["", "Each operation costs the binary space that grows with the size of the tensor it works on (the "
                "compiler splits big tensors into tiles and records each tile's work), not only its weights.", ""]
    if data.get("sana"):
        out += ["## Sana 600M transformer at its real width, a few layers", "",
                "| layers | guidance batch per call | nodes | weights | context binary | bytes / weight | compile |",
                "|---|---|---|---|---|---|---|"]
        for r in data["sana"]:
            out.append(f"| {r['layers']} | {r['guidance_batch']} | {r['nodes']} | {r['weights'] / 1e6:.1f} M | "
                       f"{r['context_binary_bytes'] / 2**20:.1f} MiB | {r['bytes_per_weight']:.3f} | "
                       f"{r['compile_seconds']:.0f} s |")
        out += ["", "One row per call halves every activation: the same weights, less per-operation data, a faster "
                "compile. The whole model's figures are in the real-size table (README)."]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    import onnxruntime

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", nargs="+", choices=("chain", "sana"), default=["chain", "sana"])
    parser.add_argument("--layers", type=int, default=2, help="transformer layers of the sana probe")
    parser.add_argument("--target", default="s25u")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "context_size.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    data |= {"target": args.target, "onnxruntime": onnxruntime.__version__}
    with tempfile.TemporaryDirectory(prefix="context-size-") as tmp:
        work = args.work or Path(tmp)
        if "chain" in args.probes:
            data["chain"] = chain_probe(work, args.target)
        if "sana" in args.probes:
            data["sana"] = sana_probe(work, args.target, args.layers, args.seed)
    path.write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / "context_size.md").write_text(render(data))
    print(render(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
