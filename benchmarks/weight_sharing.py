"""Can the Gemma-2 prefill and decode graphs ship as one weight-shared QNN context binary? A probe of the
onnxruntime-qnn wheel on this machine.

ONNX Runtime's QNN EP writes one context binary for several graphs when their compile sessions run in one process,
in sequence, with the session config ``ep.share_ep_contexts=1`` (and ``ep.stop_share_ep_contexts=1`` on the last):
the last session writes a single ``.bin`` holding every graph, static tensors of the same name and value stored
once, and every ``*_ctx.onnx`` points at it (x86_64 hosts only). This probe measures, for each pair of graphs:

1. the context binaries compiled one graph at a time (today's ``compile``) against the shared group's one binary;
2. whether the host HTP simulator opens the shared pair (each open in a child process: a crash of the native
   library must not take the probe down), with and without ``ep.share_ep_contexts=1`` at load; the control is a
   group of one graph (the same session flags, one graph in the binary);
3. when it opens: the greedy tokens of the shared pair on the simulator against the separate pair and the CPU Q/DQ
   models (tiny-Gemma only).
4. the cause, narrowed: one model cut in two partitions by a CPU operator (two QNN graphs in one context binary
   without weight sharing) opened on the simulator, and the same model compiled as a group of one (the session flags
   turn the HTP weight-sharing context option on).

Pairs: ``matmul`` (two one-MatMul Q/DQ graphs with one 64x64 INT8 weight of the same name and value, 8 rows and
1 row) and ``tiny-gemma`` (a short FraQAT run, exported: the real prefill + decode graphs at tiny size; or
``--run`` an exported tiny-Gemma run).

    python benchmarks/weight_sharing.py                 # about 2 min on 2 cores
    python benchmarks/weight_sharing.py --run runs/g1

Results: ``benchmarks/results/weight_sharing.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
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
GRAPHS = ("prefill", "decode")
PROMPTS = ["def main():\n    ", "import os\nimport sys\n\nclass Foo", "x"]


# ---------------------------------------------------------------- the graphs


def matmul_pair(folder: Path) -> Path:
    """Two Q/DQ graphs, x [rows, 64] @ W (INT8, per tensor): the same initializer names and values."""
    folder.mkdir(parents=True, exist_ok=True)
    weight = np.random.default_rng(0).integers(-8, 8, size=(64, 64)).astype(np.int8)
    for name, rows in (("prefill", 8), ("decode", 1)):
        inits = [numpy_helper.from_array(weight, "w_q"), numpy_helper.from_array(np.array(0.01, np.float32), "w_s"),
                 numpy_helper.from_array(np.array(0, np.int8), "w_z"),
                 numpy_helper.from_array(np.array(0.02, np.float32), "a_s"),
                 numpy_helper.from_array(np.array(128, np.uint8), "a_z"),
                 numpy_helper.from_array(np.array(0.05, np.float32), "o_s"),
                 numpy_helper.from_array(np.array(128, np.uint8), "o_z")]
        nodes = [helper.make_node("QuantizeLinear", ["x", "a_s", "a_z"], ["xq"], name="q_in"),
                 helper.make_node("DequantizeLinear", ["xq", "a_s", "a_z"], ["xd"], name="dq_in"),
                 helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["wd"], name="dq_w"),
                 helper.make_node("MatMul", ["xd", "wd"], ["y"], name="matmul"),
                 helper.make_node("QuantizeLinear", ["y", "o_s", "o_z"], ["yq"], name="q_out"),
                 helper.make_node("DequantizeLinear", ["yq", "o_s", "o_z"], ["out"], name="dq_out")]
        graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, 64])],
                                  [helper.make_tensor_value_info("out", TensorProto.FLOAT, [rows, 64])], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
        model.ir_version = 10
        onnx.save(model, str(folder / f"{name}.onnx"))
    return folder


def two_partitions(folder: Path) -> Path:
    """One Q/DQ model, MatMul -> Erf (float, left to the CPU) -> MatMul: two HTP partitions, so two QNN graphs in
    the one context binary of one compile session."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "a_s"),
             numpy_helper.from_array(np.array(128, np.uint8), "a_z")]
    nodes = []
    for i, (src, dst) in enumerate((("x", "m1"), ("m2", "out"))):
        inits += [numpy_helper.from_array(rng.integers(-8, 8, size=(64, 64)).astype(np.int8), f"w{i}"),
                  numpy_helper.from_array(np.array(0.01, np.float32), f"w{i}_s"),
                  numpy_helper.from_array(np.array(0, np.int8), f"w{i}_z")]
        nodes += [helper.make_node("QuantizeLinear", [src, "a_s", "a_z"], [f"x{i}q"], name=f"q_in{i}"),
                  helper.make_node("DequantizeLinear", [f"x{i}q", "a_s", "a_z"], [f"x{i}d"], name=f"dq_in{i}"),
                  helper.make_node("DequantizeLinear", [f"w{i}", f"w{i}_s", f"w{i}_z"], [f"w{i}d"], name=f"dq_w{i}"),
                  helper.make_node("MatMul", [f"x{i}d", f"w{i}d"], [f"y{i}"], name=f"matmul{i}"),
                  helper.make_node("QuantizeLinear", [f"y{i}", "a_s", "a_z"], [f"y{i}q"], name=f"q_out{i}"),
                  helper.make_node("DequantizeLinear", [f"y{i}q", "a_s", "a_z"], [dst], name=f"dq_out{i}")]
        if i == 0:
            nodes.append(helper.make_node("Erf", ["m1"], ["m2"], name="erf_on_cpu"))
    graph = helper.make_graph(nodes, "two_partitions", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [4, 64])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.save(model, str(folder / "partitions.onnx"))
    return folder / "partitions.onnx"


def tiny_gemma_run(folder: Path) -> Path:
    """A short FraQAT W4A8 tiny-Gemma run, exported (the tests' ``exported_tiny_gemma``)."""
    from fraqat_deploy.export import export_run
    from fraqat_deploy.train import TrainConfig, train

    run = folder / "g1"
    train(TrainConfig(model="tiny-gemma", out=run, schedule="fractional", steps=9, batch_size=4, n_train=16,
                      n_val=4, calib_samples=8), show_progress=False)
    export_run(run, "tiny-gemma")
    return run


def shared_weights(export_dir: Path) -> dict[str, int]:
    """Rank >= 2 initializers of the two graphs, those with the same name and value in both, and those's bytes at
    their stored width (INT4: half a byte)."""
    models = [onnx.load(str(export_dir / f"{g}.onnx")) for g in GRAPHS]
    tensors = [{t.name: t for t in m.graph.initializer if len(t.dims) >= 2} for m in models]
    same = [n for n in tensors[0].keys() & tensors[1].keys()
            if np.array_equal(numpy_helper.to_array(tensors[0][n], str(export_dir)),
                              numpy_helper.to_array(tensors[1][n], str(export_dir)))]
    width = {TensorProto.INT4: 0.5, TensorProto.UINT4: 0.5, TensorProto.INT8: 1, TensorProto.UINT8: 1,
             TensorProto.INT16: 2, TensorProto.UINT16: 2, TensorProto.FLOAT16: 2, TensorProto.FLOAT: 4}
    nbytes = sum(int(np.prod(tensors[0][n].dims)) * width.get(tensors[0][n].data_type, 4) for n in same)
    return {"prefill": len(tensors[0]), "decode": len(tensors[1]), "same_name_and_value": len(same),
            "same_bytes": int(nbytes)}


# ---------------------------------------------------------------- children (one process each)


def child_compile(inputs: list[Path], out: Path, target: str, shared: bool) -> dict[str, Any]:
    """Compile ``inputs`` into ``out``: one at a time, or as one weight-sharing group (in this order)."""
    import onnxruntime as ort

    from fraqat_deploy.compile.htp import native_noise_filtered, session_options
    from fraqat_deploy.compile.local import compile_onnx
    from fraqat_deploy.targets import get_target

    out.mkdir(parents=True, exist_ok=True)
    if not shared:
        for path in inputs:
            compile_onnx(path, out, target, allow_cpu_fallback=True)  # the two-partition model's Erf
    else:
        for i, path in enumerate(inputs):
            so = session_options(get_target(target), allow_cpu_fallback=True)
            so.add_session_config_entry("ep.share_ep_contexts", "1")
            if i == len(inputs) - 1:
                so.add_session_config_entry("ep.stop_share_ep_contexts", "1")
            compiler = ort.ModelCompiler(so, str(path), embed_compiled_data_into_model=False)
            with native_noise_filtered():
                compiler.compile_to_file(str(out / f"{path.stem}_ctx.onnx"))
    refs, nodes = {}, {}
    for path in inputs:
        ctx = onnx.load(str(out / f"{path.stem}_ctx.onnx"), load_external_data=False)
        refs[path.stem] = sorted({helper.get_attribute_value(a).decode() for n in ctx.graph.node
                                  if n.op_type == "EPContext" for a in n.attribute if a.name == "ep_cache_context"})
        nodes[path.stem] = sum(n.op_type == "EPContext" for n in ctx.graph.node)
    bins = sorted(out.glob("*.bin"))
    return {"binaries": {b.name: b.stat().st_size for b in bins}, "bytes": sum(b.stat().st_size for b in bins),
            "references": refs, "ep_context_nodes": nodes}


def child_load(ctx_models: list[Path], target: str, share: bool, tokens_of: Path | None) -> dict[str, Any]:
    """Open the ctx models on the host HTP simulator in order; with ``tokens_of`` (an exported tiny-Gemma run),
    also run the greedy loop on them."""
    import onnxruntime as ort

    from fraqat_deploy.compile.htp import session_options
    from fraqat_deploy.targets import get_target

    sessions = {}
    for i, path in enumerate(ctx_models):
        so = session_options(get_target(target), allow_cpu_fallback=True)
        if share:
            so.add_session_config_entry("ep.share_ep_contexts", "1")
            if i == len(ctx_models) - 1:
                so.add_session_config_entry("ep.stop_share_ep_contexts", "1")
        print(f"opening {path.name}", file=sys.stderr, flush=True)
        sessions[path.stem.removesuffix("_ctx")] = ort.InferenceSession(str(path), so)
    record: dict[str, Any] = {"opened": sorted(sessions)}
    if tokens_of is not None:
        record["tokens"] = greedy_tokens(tokens_of, sessions)
    return record


def greedy_tokens(run: Path, sessions: dict[str, Any] | None) -> list[list[int]]:
    """Greedy tokens of PROMPTS through ``sessions`` (None: the CPU Q/DQ models of the run's export)."""
    from fraqat_deploy.compile.htp import cpu_session
    from fraqat_deploy.models import get_adapter
    from fraqat_deploy.models.gemma_graphs import graph_spec, greedy_decode, session_runner

    if sessions is None:
        sessions = {g: cpu_session(run / "export" / f"{g}.onnx") for g in GRAPHS}
    info = json.loads((run / "export" / "export.json").read_text())["components"]["decode"]["info"]
    loaded = get_adapter("tiny-gemma").load()
    spec = graph_spec(loaded.student, context=info["context"], prompt_length=info["prompt_length"])
    tokenizer = loaded.parts["tokenizer"]
    runner = session_runner(sessions)
    return [greedy_decode(runner, spec, tokenizer(p)["input_ids"], max_new_tokens=6) for p in PROMPTS]


def in_child(args: list[str], result: Path) -> dict[str, Any]:
    """Run this script's ``--child`` in a process of its own; a native crash comes back as its signal."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, __file__, "--child", *args, "--result", str(result)],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode == 0 and result.is_file():
        return json.loads(result.read_text()) | {"ok": True}
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "LIBNATIVE" not in line]
    died = (f"killed by {signal.Signals(-proc.returncode).name}" if proc.returncode < 0
            else f"exit code {proc.returncode}")
    return {"ok": False, "failure": died, "last_stderr": lines[-3:]}


# ---------------------------------------------------------------- the probe


def probe_pair(name: str, export_dir: Path, work: Path, target: str, run: Path | None) -> dict[str, Any]:
    inputs = [str(export_dir / f"{g}.onnx") for g in GRAPHS]
    record: dict[str, Any] = {"pair": name, "weights": shared_weights(export_dir)}
    for mode in ("separate", "shared"):
        out = work / f"{name}-{mode}"
        record[mode] = in_child(["compile", mode, target, str(out), *inputs], work / f"{name}-{mode}.json")
    # the control: a group of one graph (the same session flags, one graph in its binary)
    one = work / f"{name}-group-of-one"
    record["group_of_one"] = in_child(["compile", "shared", target, str(one), inputs[-1]], work / f"{name}-one.json")
    ctx = lambda folder, graphs: [str(folder / f"{g}_ctx.onnx") for g in graphs]  # noqa: E731
    token_args = [str(run)] if run is not None else []
    loads = {
        "separate": ("load", "noshare", target, *ctx(work / f"{name}-separate", GRAPHS)),
        "shared, ep.share_ep_contexts=1 at load": ("load", "share", target, *ctx(work / f"{name}-shared", GRAPHS)),
        "shared, no session flag at load": ("load", "noshare", target, *ctx(work / f"{name}-shared", GRAPHS)),
        "group of one": ("load", "noshare", target, *ctx(one, GRAPHS[-1:])),
    }
    record["load"] = {}
    for label, child_args in loads.items():
        extra = ["--tokens-of", *token_args] if token_args and label != "group of one" else []
        record["load"][label] = in_child([*child_args, *extra], work / f"{name}-load-{len(record['load'])}.json")
        print(f"{name}: {label}: {record['load'][label]}", flush=True)
    if run is not None:
        record["cpu_tokens"] = greedy_tokens(run, None)
    return record


def probe_partitions(work: Path, target: str) -> dict[str, Any]:
    """Two QNN graphs in one binary from one session: opened without and with the weight-sharing option."""
    model = two_partitions(work / "partitions")
    record: dict[str, Any] = {}
    for mode, label in (("separate", "without weight sharing"), ("shared", "with weight sharing")):
        out = work / f"partitions-{mode}"
        compiled = in_child(["compile", mode, target, str(out), str(model)], work / f"partitions-{mode}.json")
        opened = in_child(["load", "noshare", target, str(out / "partitions_ctx.onnx")],
                          work / f"partitions-{mode}-load.json")
        record[label] = {"compile": compiled, "load": opened}
        print(f"two partitions, {label}: {record[label]}", flush=True)
    return record


def render(data: dict[str, Any]) -> str:
    v = data["versions"]
    out = ["# One weight-shared QNN context binary for two graphs", "",
           f"onnxruntime {v.get('onnxruntime')}, onnxruntime-qnn {v.get('onnxruntime_qnn')} (QNN "
           f"{v.get('qnn_build')}), target {data['target']}, host {data['host']}. "
           "Reproduce: `python benchmarks/weight_sharing.py`.", "",
           "| pair | rank-2 weights (same name and value) | their bytes | separate binaries | shared binary | saved | "
           "shared / separate | one .bin for both ctx models | simulator opens the shared pair | "
           "control: group of one opens |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in data["pairs"]:
        sep, sh = r["separate"], r["shared"]
        one_bin = sh.get("ok") and len({b for refs in sh["references"].values() for b in refs}) == 1
        opens = [f"{label.removeprefix('shared, ')}: {'yes' if rec['ok'] else rec['failure']}"
                 for label, rec in r["load"].items() if label.startswith("shared")]
        w = r["weights"]
        if not (sep.get("ok") and sh.get("ok")):
            out.append(f"| {r['pair']} | compile failed: {sep} {sh} |||||||||")
            continue
        out.append(f"| {r['pair']} | {w['prefill']} / {w['decode']} ({w['same_name_and_value']}) | "
                   f"{w['same_bytes']:,} B | {sep['bytes']:,} B | {sh['bytes']:,} B | "
                   f"{sep['bytes'] - sh['bytes']:,} B | "
                   f"{sh['bytes'] / sep['bytes']:.2f} | {'yes' if one_bin else 'no'} | "
                   f"{'; '.join(opens)} | {'yes' if r['load']['group of one']['ok'] else 'no'} |")
    for r in data["pairs"]:
        tokens = {label: rec.get("tokens") for label, rec in r["load"].items() if rec.get("tokens")}
        if "cpu_tokens" in r:
            same = {label: t == r["cpu_tokens"] for label, t in tokens.items()}
            out += ["", f"{r['pair']}: greedy tokens (6 per prompt, {len(PROMPTS)} prompts) identical to the CPU Q/DQ "
                    f"models: " + (", ".join(f"{k}: {'yes' if s else 'no'}" for k, s in same.items()) or "none ran")]
    if "partitions" in data:
        out += ["", "One model cut in two HTP partitions by a CPU Erf (two QNN graphs in one binary, one compile "
                "session), opened on the simulator:"]
        for label, r in data["partitions"].items():
            c = r["compile"]
            graphs = sum(c.get("ep_context_nodes", {}).values())
            out.append(f"- {label}: {graphs} EPContext nodes, {c.get('bytes', 0):,} B: "
                       + ("opens" if r["load"]["ok"] else r["load"]["failure"]))
    out += ["", "A crash is the simulator's native library dying inside `contextCreateFromBinary` (the last log line "
            "reads `Max spill fill buffer size: 0`); ONNX Runtime's own QNN tests load a weight-shared pair only on "
            "aarch64 devices (`QnnContextShareAcrossSessions`)."]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        *args, _, result = argv[1:]
        kind, rest = args[0], args[1:]
        if kind == "compile":
            mode, target, out, *inputs = rest
            record = child_compile([Path(p) for p in inputs], Path(out), target, mode == "shared")
        else:
            tokens_of = None
            if "--tokens-of" in rest:
                at = rest.index("--tokens-of")
                tokens_of, rest = Path(rest[at + 1]), rest[:at]
            share, target, *models = rest
            record = child_load([Path(p) for p in models], target, share == "share", tokens_of)
        Path(result).write_text(json.dumps(record))
        return 0

    import platform

    from fraqat_deploy.compile.htp import qnn_versions

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="s25u")
    parser.add_argument("--run", type=Path, default=None, help="an exported tiny-Gemma run (default: train one)")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="weight-sharing-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        run = args.run or tiny_gemma_run(work)
        pairs = [probe_pair("matmul", matmul_pair(work / "matmul"), work, args.target, None),
                 probe_pair("tiny-gemma", run / "export", work, args.target, run)]
        partitions = probe_partitions(work, args.target)
    data = {"target": args.target, "host": platform.machine(), "versions": qnn_versions(), "pairs": pairs,
            "partitions": partitions}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "weight_sharing.json").write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / "weight_sharing.md").write_text(render(data))
    print(render(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
