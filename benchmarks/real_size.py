"""Real-size benchmark: the CLI on seeded random-weight models at the real configurations.

Builds, from the config files in ``benchmarks/configs/`` (configuration facts; no downloaded weights), the local
model folders a user with downloaded weights would have, then runs the CLI on them as a user would, one component
at a time: ``train --schedule ptq`` (calibrate and round), ``export --component C``, ``compile --component C
--device s25u``. Per stage it measures wall time and the peak resident memory of the whole process tree (sampled
from ``/proc`` every 0.2 s), and reads the sizes, coverage, bytes per weight and parity the CLI recorded.

Each component gets its own folder: the component at its real configuration, the other parts of the pipeline as
small stand-ins of the right interface widths (a real user's folder holds all three at full size; the stand-ins
keep the measurement to the component and the run within a 24 GiB, 2-core machine). The calibration trajectories
use 2 sampler steps instead of 20 (only where the calibration inputs come from changes, not the graphs).

    python benchmarks/real_size.py --model sana600m                     # every component, every stage
    python benchmarks/real_size.py --model sana600m --component transformer --stages export,compile
    python benchmarks/real_size.py --table-only --readme                 # rewrite the tables from the JSON

Results: ``benchmarks/results/real_size.json`` (merged per model/component/stage) and ``real_size.md``; with
``--readme`` the table also goes into README.md between the ``real-size`` markers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "benchmarks" / "configs"
RESULTS = ROOT / "benchmarks" / "results"
README_BEGIN, README_END = "<!-- real-size:begin -->", "<!-- real-size:end -->"
GIB = 1 << 30
#: issue targets: export peak RSS <= 3x the component's fp32 weights; compiled bytes per weight of INT4 components
RSS_FACTOR_TARGET = 3.0
BYTES_PER_WEIGHT_TARGET = 0.6
STAGES = ("build", "ptq", "export", "compile", "parity", "collect")
#: what runs without --stages: "collect" only records an export run outside the benchmark (it would replace the
#: export stage's own measurement)
DEFAULT_STAGES = STAGES[:-1]

#: model -> component -> (what is real in its folder, the adapter, whether its weights are INT4 after PTQ)
MODELS: dict[str, dict[str, dict[str, Any]]] = {
    "sana600m": {
        "transformer": {"adapter": "sana", "int4": True},
        "text_encoder": {"adapter": "sana", "int4": False},
        "vae_decoder": {"adapter": "sana", "int4": False},
    },
    # the LLM deploys as two graphs around one student, exported in one process (the prefill graph first, the
    # decode graph from the same prepared student) and compiled together: one export record, one row per graph
    "gemma2b": {
        "llm": {"adapter": "gemma", "int4": True, "graphs": ["prefill", "decode"]},
    },
}


def load_config(name: str) -> dict[str, Any]:
    """A config file of ``benchmarks/configs`` without its ``_source`` note."""
    data = json.loads((CONFIGS / f"{name}.json").read_text())
    return {k: v for k, v in data.items() if not k.startswith("_")}


# -- building the local folders ---------------------------------------------------------------------------------

def _stand_in_text_encoder(hidden: int) -> dict[str, Any]:
    return {"hidden_size": hidden, "intermediate_size": 256, "num_hidden_layers": 1, "num_attention_heads": 2,
            "num_key_value_heads": 1, "head_dim": 64, "query_pre_attn_scalar": 64, "max_position_embeddings": 512}


def _stand_in_transformer(caption_channels: int, latent_channels: int) -> dict[str, Any]:
    return {"in_channels": latent_channels, "out_channels": latent_channels, "num_attention_heads": 2,
            "attention_head_dim": 16, "num_layers": 1, "num_cross_attention_heads": 2, "cross_attention_head_dim": 16,
            "cross_attention_dim": 32, "caption_channels": caption_channels, "mlp_ratio": 2.5, "sample_size": 32,
            "patch_size": 1}


def _stand_in_vae(latent_channels: int) -> dict[str, Any]:
    return {"in_channels": 3, "latent_channels": latent_channels, "attention_head_dim": 8,
            "encoder_block_types": "ResBlock", "decoder_block_types": "ResBlock",
            "encoder_block_out_channels": [8, 16, 32], "decoder_block_out_channels": [8, 16, 32],
            "encoder_layers_per_block": [1, 1, 1], "decoder_layers_per_block": [1, 1, 1],
            "encoder_qkv_multiscales": [[], [], []], "decoder_qkv_multiscales": [[], [], []]}


@contextlib.contextmanager
def _default_dtype(dtype: Any) -> Iterator[None]:
    import torch

    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def build_sana_folder(component: str, folder: Path, seed: int) -> dict[str, Any]:
    """A diffusers Sana pipeline folder with ``component`` real (seeded random weights) and stand-ins around it,
    saved one part at a time so that only one real part is in memory."""
    import torch
    from diffusers import AutoencoderDC, FlowMatchEulerDiscreteScheduler, SanaTransformer2DModel
    from transformers import Gemma2Config, Gemma2Model

    from fraqat_deploy.models.base import write_settings
    from fraqat_deploy.models.tokenizers import BOS_ID, EOS_ID, PAD_ID, build_caption_tokenizer

    text_cfg = load_config("gemma2_2b")
    transformer_cfg = load_config("sana600m_transformer")
    vae_cfg = load_config("dcae_f32c32")
    sampler = load_config("sana600m_sampler")
    tokenizer = build_caption_tokenizer()
    if component != "text_encoder":
        text_cfg = _stand_in_text_encoder(text_cfg["hidden_size"])
        text_cfg["vocab_size"] = len(tokenizer)
    # else the real 256k embedding table; our small tokenizer only uses its first rows
    if component != "transformer":
        transformer_cfg = _stand_in_transformer(text_cfg["hidden_size"], vae_cfg["latent_channels"])
    if component != "vae_decoder":
        vae_cfg = _stand_in_vae(vae_cfg["latent_channels"])
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder / "tokenizer")
    FlowMatchEulerDiscreteScheduler(shift=sampler["flow_shift"]).save_pretrained(folder / "scheduler")
    params = {}
    # one seed per part; each part is saved and freed before the next is built
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # the real Sana text encoder ships in bf16: built (straight in bf16, no fp32 copy on the way) and saved so;
        # the toolkit loads it as bf16 (models/half.py)
        dtype = torch.bfloat16 if component == "text_encoder" else torch.float32
        with _default_dtype(dtype):
            te = Gemma2Model(Gemma2Config(pad_token_id=PAD_ID, eos_token_id=EOS_ID, bos_token_id=BOS_ID,
                                          attn_implementation="eager", **text_cfg))
        params["text_encoder"] = sum(p.numel() for p in te.parameters())
        te.save_pretrained(folder / "text_encoder", safe_serialization=True, max_shard_size="2GB")
        del te
        torch.manual_seed(seed + 1)
        tr = SanaTransformer2DModel(**transformer_cfg)
        params["transformer"] = sum(p.numel() for p in tr.parameters())
        tr.save_pretrained(folder / "transformer")
        del tr
        torch.manual_seed(seed + 2)
        vae = AutoencoderDC(**vae_cfg)
        params["vae"] = sum(p.numel() for p in vae.parameters())
        params["vae_decoder"] = sum(p.numel() for p in vae.decoder.parameters())
        vae.save_pretrained(folder / "vae")
        del vae
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "SanaPipeline", "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "Gemma2Model"], "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
        "transformer": ["diffusers", "SanaTransformer2DModel"], "vae": ["diffusers", "AutoencoderDC"]}, indent=2))
    # calibration trajectories of 2 steps (the real 20 only change where the calibration inputs come from)
    write_settings(folder, "sana", {"sampler": {"steps": 2, "guidance": sampler["guidance"],
                                                "max_tokens": sampler["max_tokens"]}})
    return {"parameters": params, "real": component, "folder_bytes": _tree_bytes(folder)}


def build_gemma_folder(folder: Path, seed: int) -> dict[str, Any]:
    """A transformers Gemma-2 2B causal-LM folder (bf16 as shipped) with a small tokenizer of ours."""
    import torch
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from fraqat_deploy.models.tokenizers import BOS_ID, EOS_ID, PAD_ID, build_caption_tokenizer

    tokenizer = build_caption_tokenizer()
    folder.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with _default_dtype(torch.bfloat16):  # built straight in bf16: no 10.5 GB fp32 copy on the way
            model = Gemma2ForCausalLM(Gemma2Config(pad_token_id=PAD_ID, eos_token_id=EOS_ID, bos_token_id=BOS_ID,
                                                   attn_implementation="eager", **load_config("gemma2_2b")))
        n = sum(p.numel() for p in model.parameters())
        model.save_pretrained(folder, safe_serialization=True, max_shard_size="2GB")
    tokenizer.save_pretrained(folder)
    return {"parameters": {"llm": n}, "real": "llm", "folder_bytes": _tree_bytes(folder)}


def _tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# -- measuring a CLI stage --------------------------------------------------------------------------------------

def _children(pid: int) -> list[int]:
    try:
        return [int(c) for t in os.listdir(f"/proc/{pid}/task")
                for c in Path(f"/proc/{pid}/task/{t}/children").read_text().split()]
    except OSError:
        return []


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
        except OSError:
            continue
        todo.extend(_children(p))
    return total


def run_measured(cmd: list[str], log: Path, timeout: float | None = None, env: dict[str, str] | None = None
                 ) -> dict[str, Any]:
    """Run ``cmd`` with output to ``log``; wall time, peak RSS of its process tree, exit code (None: timed out)."""
    started = time.monotonic()
    peak = 0
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        timed_out = False
        while proc.poll() is None:
            peak = max(peak, tree_rss(proc.pid))
            if timeout is not None and time.monotonic() - started > timeout:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                timed_out = True
                break
            time.sleep(0.2)
    tail = log.read_text(errors="replace").strip().splitlines()[-3:]
    return {"cmd": " ".join(cmd[2:] if cmd[:2] == [sys.executable, "-m"] else cmd),
            "seconds": round(time.monotonic() - started, 1), "peak_rss_bytes": peak,
            "exit_code": None if timed_out else proc.returncode, "timed_out": timed_out,
            "log_tail": tail if (timed_out or proc.returncode) else []}


def _cli() -> list[str]:
    exe = shutil.which("fraqat-deploy", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "fraqat_deploy.cli"]


def _files(folder: Path, names: list[str]) -> dict[str, int]:
    return {n: (folder / n).stat().st_size for n in names if (folder / n).is_file()}


def export_facts(run: Path, component: str) -> dict[str, Any]:
    out = run / "export"
    facts: dict[str, Any] = {"files": _files(out, [f"{component}.float.onnx", f"{component}.float.onnx.data",
                                                   f"{component}.onnx", f"{component}.onnx.data",
                                                   f"{component}.inputs.npz"])}
    manifest = out / "export.json"
    if manifest.is_file():
        rec = json.loads(manifest.read_text())["components"].get(component, {})
        facts["parity"] = {o: {k: m[k] for k in ("mean_steps", "max_steps", "passed")}
                           for o, m in rec.get("parity", {}).items()}
        facts["weight_elements"] = rec.get("qdq", {}).get("weight_elements")
        facts["memory"] = rec.get("memory")
    elif (out / "parity.json").is_file():
        facts["parity"] = json.loads((out / "parity.json").read_text())["components"].get(component)
    return facts


def compile_facts(run: Path, component: str, target: str) -> dict[str, Any]:
    out = run / "compile" / target
    facts: dict[str, Any] = {}
    if (out / "compile.json").is_file():
        rec = json.loads((out / "compile.json").read_text()).get("components", {}).get(component)
        if rec:
            facts |= {"compile_seconds": rec.get("seconds"), "context_binary_bytes": rec["context_binary_bytes"],
                      "bytes_per_weight": rec["weights"].get("bytes_per_weight"), "coverage": {
                          k: rec["coverage"][k] for k in ("nodes", "htp", "cpu_boundary", "cpu_fallback",
                                                          "htp_fraction")}}
    if (out / "htp_parity.json").is_file():
        par = json.loads((out / "htp_parity.json").read_text())["components"].get(component)
        if par:
            facts["htp_parity"] = {"passed": par["passed"],
                                   "rel": max((o["rel"] for o in par["outputs"].values()), default=None)}
    return facts


# -- Gemma-2-2B's 256k vocabulary head on the HTP -----------------------------------------------------------------

def lm_head_graph(path: Path, tokens: int, vocab: int, hidden: int, seed: int) -> int:
    """The LLM's head as the export writes it: uint16 hidden state ``[N, hidden]`` (the last layer keeps 16-bit
    activations) -> Gemm (``transB=1``) with INT4 per-output-channel weights ``[vocab, hidden]`` (axis 0; random
    codes, packed two per byte straight from random bytes) -> uint16 logits ``[N, vocab]``. Returns the weight
    count. (With a uint8 input and uint16 output the HTP refuses the INT4 weight's DequantizeLinear, which falls
    back to the CPU: the export converts the input to 16 bits first.)"""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from fraqat_deploy.export.graph import OPSET
    from fraqat_deploy.onnx_io import save_model

    rng = np.random.default_rng(seed)
    packed = rng.integers(0, 256, size=hidden * vocab // 2, dtype=np.uint8).tobytes()
    inits = [
        helper.make_tensor("w_int", TensorProto.INT4, [vocab, hidden], packed, raw=True),
        numpy_helper.from_array((rng.random(vocab, dtype=np.float32) * 0.02 + 0.01), "w_scale"),
        helper.make_tensor("w_zp", TensorProto.INT4, [vocab], bytes((vocab + 1) // 2), raw=True),
        numpy_helper.from_array(np.array(8.0 / 32768, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(32768, np.uint16), "x_zp"),
        numpy_helper.from_array(np.array(30.0 / 32768, np.float32), "y_scale"),
        numpy_helper.from_array(np.array(32768, np.uint16), "y_zp"),
    ]
    del packed
    nodes = [
        helper.make_node("QuantizeLinear", ["hidden", "x_scale", "x_zp"], ["x_q"], name="x_Q"),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zp"], ["x_dq"], name="x_DQ"),
        helper.make_node("DequantizeLinear", ["w_int", "w_scale", "w_zp"], ["w_dq"], axis=0, name="w_DQ"),
        helper.make_node("Gemm", ["x_dq", "w_dq"], ["logits_f"], transB=1, name="lm_head"),
        helper.make_node("QuantizeLinear", ["logits_f", "y_scale", "y_zp"], ["y_q"], name="y_Q"),
        helper.make_node("DequantizeLinear", ["y_q", "y_scale", "y_zp"], ["logits"], name="y_DQ"),
    ]
    graph = helper.make_graph(nodes, "lm_head", [helper.make_tensor_value_info("hidden", TensorProto.FLOAT,
                                                                             [tokens, hidden])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [tokens, vocab])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 10
    save_model(model, path, check=True, keep=False)
    return hidden * vocab


def host_cpu_seconds(path: Path, tokens: int, hidden: int, repeats: int = 5) -> dict[str, Any]:
    """The Q/DQ head graph on ONNX Runtime's CPU provider of this host: median seconds per call (this machine's CPU,
    not the phone's; it says what keeping the head off the NPU costs in kind, not in milliseconds on the phone)."""
    import numpy as np

    from fraqat_deploy.compile.htp import cpu_session

    session = cpu_session(path)
    feed = {"hidden": np.random.default_rng(0).standard_normal((tokens, hidden)).astype(np.float32)}
    session.run(None, feed)  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - started)
    return {"median_seconds": round(float(np.median(times)), 4), "repeats": repeats,
            "threads": int(os.environ.get("OMP_NUM_THREADS", "0")) or None}


def lm_head_probe(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Compile Gemma-2-2B's head (``[1, N, 2304] x [2304, 256000]``) for the target, one graph per prompt length
    asked, each under its own time limit: does it compile, how long, how big. With ``--lm-head-slices K`` the graph
    is one of K equal vocabulary slices (``[2304, 256000 / K]``; the K graphs are alike, so one measures them all)."""
    cfg = load_config("gemma2_2b")
    out: dict[str, Any] = {}
    slices = args.lm_head_slices
    if cfg["vocab_size"] % slices:
        raise SystemExit(f"--lm-head-slices {slices} does not divide the vocabulary {cfg['vocab_size']}")
    vocab = cfg["vocab_size"] // slices
    (work / "logs").mkdir(parents=True, exist_ok=True)
    for tokens in args.lm_head_tokens:
        key = f"n{tokens}" if slices == 1 else f"n{tokens}-slice{slices}"
        folder = work / "gemma2b" / "lm_head" / key
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        weights = lm_head_graph(folder / "lm_head.onnx", tokens, vocab, cfg["hidden_size"], args.seed)
        # compile, then one call on the host HTP simulator against the CPU Q/DQ model (does it run, and right)
        code = (f"import json, numpy as np; from fraqat_deploy.compile.local import compile_onnx, htp_parity; "
                f"r = compile_onnx({str(folder / 'lm_head.onnx')!r}, {str(folder / 'ctx')!r}, {args.target!r}); "
                f"out = {{k: r[k] for k in ('context_binary_bytes', 'coverage', 'weights', 'seconds')}}; "
                f"print(json.dumps(out), flush=True); "
                f"feed = {{'hidden': np.random.default_rng(0).standard_normal(({tokens}, {cfg['hidden_size']}))"
                f".astype(np.float32)}}; "
                f"p = htp_parity({str(folder / 'ctx')!r} + '/' + r['ctx_onnx'], {str(folder / 'lm_head.onnx')!r}, "
                f"feed, target={args.target!r}); "
                f"o = p['outputs']['logits']; "
                f"out['htp_run'] = {{'passed': o['passed'], 'rel': o['rel'], 'why': o['why'], "
                f"'simulator_seconds': p['simulator_seconds']}}; print(json.dumps(out))")
        rec = run_measured([sys.executable, "-c", code], work / "logs" / f"lm_head-{key}.log",
                           timeout=args.compile_timeout)
        lines = (work / "logs" / f"lm_head-{key}.log").read_text().strip().splitlines()
        if rec["exit_code"] == 0 and lines:
            rec |= json.loads(lines[-1])
        out[key] = rec | {"tokens": tokens, "slices": slices, "vocab": vocab, "weights_count": weights,
                          "qdq_bytes": _tree_bytes(folder) - _tree_bytes(folder / "ctx")
                          if (folder / "ctx").is_dir() else _tree_bytes(folder),
                          "host_cpu": host_cpu_seconds(folder / "lm_head.onnx", tokens, cfg["hidden_size"])}
        data = load_results()
        data.setdefault("gemma2b_lm_head", {})[key] = out[key]
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "real_size.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return out


# -- the benchmark ----------------------------------------------------------------------------------------------

def run_component(model: str, component: str, stages: list[str], work: Path, args: argparse.Namespace
                  ) -> dict[str, Any]:
    spec = MODELS[model][component]
    folder, run, logs = work / model / component / "model", work / model / component / "run", work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    key, export_options = component, []
    chosen = variant(component, args)
    if chosen is not None:  # a variant: its own record and run, from the component's PTQ run
        key, export_options, folder_name = chosen
        base, run = run, work / model / component / folder_name
        if "ptq" not in stages and not run.exists():
            shutil.copytree(base, run, ignore=shutil.ignore_patterns("export", "compile"))
    saved = load_results().get(model, {})
    # a new variant's record starts from its component's model and PTQ run (not its stages or note)
    result = saved.get(key) or {k: v for k, v in saved.get(component, {}).items()
                                if k in ("build", "ptq", "fp32_weight_bytes")}
    result |= {"adapter": spec["adapter"], "int4": spec["int4"], "model": model}
    env = os.environ | {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    cli = _cli()
    if "build" in stages:
        shutil.rmtree(folder, ignore_errors=True)
        started = time.monotonic()
        built = build_gemma_folder(folder, args.seed) if model == "gemma2b" \
            else build_sana_folder(component, folder, args.seed)
        result["build"] = built | {"seconds": round(time.monotonic() - started, 1)}
        save_result(model, key, result)
    params = result.get("build", {}).get("parameters", {}).get(component)
    if params:
        result["fp32_weight_bytes"] = 4 * params
    if "ptq" in stages:
        shutil.rmtree(run, ignore_errors=True)
        result["ptq"] = run_measured(cli + ["train", spec["adapter"], "--source", str(folder), "--out", str(run),
                                            "--schedule", "ptq", "--n-train", "4", "--n-val", "2",
                                            "--calib-samples", "4", "--batch-size", "2"],
                                     logs / f"{model}-{component}-ptq.log", env=env)
        save_result(model, key, result)
    graphs = spec.get("graphs")
    which = [] if graphs else ["--component", component]  # a model of several graphs: all of them, one command
    if "export" in stages:
        result["export"] = run_measured(cli + ["export", spec["adapter"], "--run", str(run), *which,
                                               "--calib-samples", str(args.calib_samples)] + export_options,
                                        logs / f"{model}-{component}-export.log",
                                        timeout=args.export_timeout, env=env)
        result["export"] |= per_graph(graphs, component, lambda g: export_facts(run, g))
        save_result(model, key, result)
    if "collect" in stages:  # an export that ran without the runner's time limit, followed by a watcher
        measured = json.loads(Path(args.export_measured).read_text()) if args.export_measured else {}
        status = json.loads((run / "run.json").read_text()).get("stages", {}).get("export", {}).get("status")
        result["export"] = {
            "cmd": f"fraqat-deploy export {spec['adapter']} --run {run} --component {component}",
            "seconds": measured.get("seconds"), "peak_rss_bytes": measured.get("peak_rss_bytes"),
            "exit_code": {"done": 0, "failed": 1}.get(status), "timed_out": False,
            "unfinished": status not in ("done", "failed"), "export_stage_status": status,
            "measured_by": "the kernel's high-water mark (VmHWM) of the export process, read every 2 s until it "
                           "ended (the process runs no children)", "log_tail": []} | export_facts(run, component)
        save_result(model, key, result)
    if "compile" in stages:
        # the compile alone; HTP parity on the simulator is its own stage (below), under its own time limit
        result["compile"] = run_measured(cli + ["compile", spec["adapter"], "--run", str(run), *which,
                                                "--device", args.target, "--parity-rows", "0"],
                                         logs / f"{model}-{component}-compile.log", timeout=args.compile_timeout,
                                         env=env)
        result["compile"] |= per_graph(graphs, component, lambda g: compile_facts(run, g, args.target))
        save_result(model, key, result)
    if "parity" in stages:  # the same command with one parity row: the cached context binary, then the simulator
        if graphs and args.graph:  # some graphs of the component only (the others: hours on the simulator)
            graphs = [g for g in graphs if g in args.graph]
            which = [a for g in graphs for a in ("--component", g)]
        measured = run_measured(cli + ["compile", spec["adapter"], "--run", str(run), *which,
                                       "--device", args.target, "--parity-rows", "1"],
                                logs / f"{model}-{component}-parity.log", timeout=args.parity_timeout, env=env)
        if graphs:  # one record per graph, kept across runs of some graphs (--graph)
            kept = (result.get("parity") or {}).get("graphs", {})
            result["parity"] = {"graphs": kept | {g: measured | {
                "htp_parity": compile_facts(run, g, args.target).get("htp_parity")} for g in graphs}}
        else:
            result["parity"] = measured | {"htp_parity": compile_facts(run, component, args.target).get("htp_parity")}
        save_result(model, key, result)
    return result


def per_graph(graphs: list[str] | None, component: str, facts: Any) -> dict[str, Any]:
    """``facts(name)`` of the component, or of each of its graphs under ``"graphs"``."""
    return facts(component) if not graphs else {"graphs": {g: facts(g) for g in graphs}}


def graph_rows(component: str, r: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(row label, file base name, record) of each table row of a component: one, or one per graph (its export and
    compile stage cells are the one command's, its files, parity and compiled figures its own)."""
    base = component.split(",")[0]  # a variant row ("transformer, guidance batch 1") has its files
    graphs = MODELS.get(r.get("model", ""), {}).get(base, {}).get("graphs")
    if not graphs:
        return [(component, base, r)]
    rows = []
    for g in graphs:
        view = dict(r)
        for stage in ("export", "compile", "parity"):
            if r.get(stage):
                view[stage] = {k: v for k, v in r[stage].items() if k != "graphs"} \
                    | (r[stage].get("graphs") or {}).get(g, {})
        rows.append((f"{component}: {g}", g, view))
    return rows


def variant(component: str, args: argparse.Namespace) -> tuple[str, list[str], str] | None:
    """(record key, export options, run folder) of the export variant asked for, or None."""
    if args.guidance_batch is not None:
        n = args.guidance_batch
        return f"{component}, guidance batch {n}", ["--guidance-batch", str(n)], f"run-gb{n}"
    if args.embedding is not None:
        where = args.embedding
        return f"{component}, embedding on the {where}", ["--embedding", where], f"run-embedding-{where}"
    return None


def load_results() -> dict[str, Any]:
    path = RESULTS / "real_size.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def save_result(model: str, component: str, result: dict[str, Any]) -> None:
    data = load_results()
    data.setdefault(model, {})[component] = result
    RESULTS.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS / "real_size.json.tmp"
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(RESULTS / "real_size.json")


# -- the table ---------------------------------------------------------------------------------------------------

def _gib(n: float | None) -> str:
    return "–" if not n else f"{n / GIB:.2f} GiB"


def _stage_cell(stage: dict[str, Any] | None) -> str:
    if not stage:
        return "not run"
    state = "timed out" if stage.get("timed_out") else "not finished" if stage.get("unfinished") \
        else "ok" if stage.get("exit_code") == 0 else f"failed ({stage.get('exit_code')})"
    seconds = "time not recorded" if stage.get("seconds") is None else f"{stage['seconds']:.0f} s"
    peak = stage.get("peak_rss_bytes")
    return f"{state}: {seconds}, " + (f"peak {_gib(peak)}" if peak else "peak not recorded")


def _parity_cell(stage: dict[str, Any] | None) -> str:
    """HTP parity of one input on the host simulator (the ``parity`` stage)."""
    if not stage:
        return "not run"
    hp = stage.get("htp_parity") or {}
    if hp.get("passed") is not None and stage.get("exit_code") is not None:
        return f"{'ok' if hp['passed'] else 'FAIL'} ({hp['rel']:.2%} rel, 1 input): {stage['seconds']:.0f} s"
    return _stage_cell(stage) + " (simulator)"


#: outputs named in an export parity cell; a graph with more (Gemma-2's keys and values) shows the worst of the rest
PARITY_CELL_OUTPUTS = 3


def _export_parity_cell(export: dict[str, Any]) -> str:
    par = export.get("parity")
    if not par:
        return "–"

    def cell(name: str, m: dict[str, Any]) -> str:
        return f"{name} {m['mean_steps']:.2f}/{m['max_steps']:.2f} steps {'ok' if m['passed'] else 'FAIL'}"

    if len(par) <= PARITY_CELL_OUTPUTS:
        return "; ".join(cell(o, m) for o, m in par.items())
    main = "logits" if "logits" in par else next(iter(par))  # the LLM's: its logits first
    first, rest = (main, par[main]), [(o, m) for o, m in par.items() if o != main]
    worst = max(rest, key=lambda item: item[1]["max_steps"])
    failed = sum(not m["passed"] for _, m in rest)
    return (f"{cell(*first)}; worst of the other {len(rest)}: {cell(*worst)}"
            + (f" ({failed} FAIL)" if failed else " (all ok)"))


def verdicts(model: str, component: str, r: dict[str, Any]) -> list[str]:
    """Each target of the issue: met, or the gap with the figure."""
    out = []
    fp32 = r.get("fp32_weight_bytes")
    export = r.get("export")
    if export and fp32 and export.get("exit_code") == 0 and export.get("peak_rss_bytes") is None:
        out.append("export memory: peak not recorded")
    elif export and fp32 and export.get("exit_code") == 0:
        factor = export["peak_rss_bytes"] / fp32
        limit = f"≤ {RSS_FACTOR_TARGET:g}× fp32 weights"
        cap = 8 * 10**9 if (model, component) == ("sana600m", "transformer") else 24 * GIB
        ok = factor <= RSS_FACTOR_TARGET and export["peak_rss_bytes"] <= cap
        out.append(f"export peak {factor:.2f}× fp32 weights ({limit}, ≤ {cap / 1e9:.1f} GB): "
                   + ("met" if ok else "NOT met"))
    elif export and fp32 and (export.get("timed_out") or export.get("unfinished")):
        how = "stopped by the benchmark's time limit" if export.get("timed_out") else "not finished when collected"
        out.append(f"export {how} after {export['seconds']:.0f} s, peak so far "
                   f"{export['peak_rss_bytes'] / fp32:.2f}× fp32 weights ({_gib(export['peak_rss_bytes'])}): "
                   + ("NOT met" if export["peak_rss_bytes"] > RSS_FACTOR_TARGET * fp32 else "not decided"))
    else:
        out.append("export memory: not measured")
    comp = r.get("compile") or {}
    if comp.get("bytes_per_weight") is not None:
        if r.get("int4"):
            ok = comp["bytes_per_weight"] <= BYTES_PER_WEIGHT_TARGET
            out.append(f"compiled {comp['bytes_per_weight']:.3f} B/weight (INT4 target ≤ {BYTES_PER_WEIGHT_TARGET}):"
                       f" {'met' if ok else 'NOT met'}")
        else:
            out.append(f"compiled {comp['bytes_per_weight']:.3f} B/weight (INT8 rule weights)")
    if comp:
        secs = comp.get("compile_seconds")
        out.append(f"compile finishes: met, {secs:.0f} s" if secs is not None else "compile finishes: NOT met")
    else:
        out.append("compile: not run")
    return out


def render_table(data: dict[str, Any]) -> str:
    lines = ["| model / component | fp32 weights | PTQ | export | Q/DQ files | export parity | compile | context "
             "binary | B/weight | HTP coverage | HTP parity |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for model in MODELS:
        comps = {c: data.get(model, {}).get(c) for c in MODELS[model]}
        comps |= {k: v for k, v in data.get(model, {}).items() if k not in comps and k.split(",")[0] in comps}
        for component, rec in comps.items():
            if not rec:
                lines.append(f"| {model} / {component} | " + " | ".join(["not run"] * 10) + " |")
                notes.append(f"- **{model} / {component}**: not run in this session (no time left after the "
                             f"transformer on this machine).")
                continue
            for i, (label, base, r) in enumerate(graph_rows(component, rec | {"model": model})):
                export, comp = r.get("export") or {}, r.get("compile") or {}
                files = export.get("files", {})
                qdq = files.get(f"{base}.onnx", 0) + files.get(f"{base}.onnx.data", 0)
                cov = comp.get("coverage")
                bpw = comp.get("bytes_per_weight")
                cells = [f"{model} / {label}", _gib(r.get("fp32_weight_bytes")), _stage_cell(r.get("ptq")),
                         _stage_cell(r.get("export")), _gib(qdq) if qdq else "–", _export_parity_cell(export),
                         _stage_cell(r.get("compile")), _gib(comp.get("context_binary_bytes")),
                         "–" if bpw is None else f"{bpw:.3f}",
                         f"{cov['htp_fraction']:.1%} ({cov['cpu_fallback']} CPU fallback)" if cov else "–",
                         _parity_cell(r.get("parity"))]
                lines.append("| " + " | ".join(cells) + " |")
                notes.append(f"- **{model} / {label}**: " + "; ".join(verdicts(model, component.split(",")[0], r))
                             + ("." if not r.get("note") or i else f". {r['note']}"))  # a note once
    head = data.get("gemma2b_lm_head", {})
    if head:
        notes.append("")
        notes.append("Gemma-2-2B's head alone (`--lm-head-probe`: `[N, 2304] x [256000, 2304]^T` as the export "
                     "writes a Linear, INT4 per channel, uint16 in and out), compiled for the target:")
        for h in head.values():
            cov = h.get("coverage")
            bpw = (h.get("weights") or {}).get("bytes_per_weight")
            part = "" if h.get("slices", 1) == 1 else f", one of {h['slices']} slices (`[2304, {h['vocab']}]`)"
            cpu = h.get("host_cpu") or {}
            notes.append(f"- N = {h['tokens']}{part}: compile {_stage_cell(h)}"
                         + (f"; on this host's CPU (ORT) {cpu['median_seconds'] * 1e3:.0f} ms per call"
                            if cpu.get("median_seconds") is not None else "")
                         + (f"; context binary {_gib(h['context_binary_bytes'])}, {bpw:.3f} B/weight, "
                            f"{cov['htp_fraction']:.0%} on the HTP" if cov and bpw is not None else "")
                         + (f"; runs on the HTP simulator ({h['htp_run']['simulator_seconds']:.0f} s there), "
                            f"{'within' if h['htp_run']['passed'] else 'NOT within'} HTP parity of the CPU Q/DQ model "
                            f"({h['htp_run']['why']})" if h.get("htp_run") else "")
                         + (f"; {h['log_tail'][-1]}" if h.get("log_tail") else ""))
    return "\n".join(lines + [""] + notes) + "\n"


def write_tables(readme: bool) -> str:
    data = load_results()
    table = render_table(data)
    (RESULTS / "real_size.md").write_text("# Real-size benchmark\n\n" + table)
    if readme:
        path = ROOT / "README.md"
        text = path.read_text()
        if README_BEGIN not in text or README_END not in text:
            raise SystemExit(f"README.md has no {README_BEGIN} / {README_END} markers: add them where the table goes")
        head, rest = text.split(README_BEGIN, 1)
        _, tail = rest.split(README_END, 1)
        path.write_text(f"{head}{README_BEGIN}\n{table}{README_END}{tail}")
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="sana600m")
    parser.add_argument("--component", action="append", help="only these components (repeat)")
    parser.add_argument("--stages", default=",".join(DEFAULT_STAGES),
                        help=f"comma-separated, of {', '.join(STAGES)} (default: all but collect)")
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("FRAQAT_REAL_SIZE_WORK",
                                                                          "/tmp/fraqat-real-size")))
    parser.add_argument("--target", default="s25u")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--export-measured", help="collect: JSON with seconds and peak_rss_bytes of the export")
    parser.add_argument("--export-timeout", type=float, default=None, help="seconds per export stage")
    parser.add_argument("--compile-timeout", type=float, default=3600.0, help="seconds per compile stage")
    parser.add_argument("--parity-timeout", type=float, default=1800.0,
                        help="seconds for the HTP-simulator parity run of one input")
    parser.add_argument("--guidance-batch", type=int, choices=(1, 2), default=None,
                        help="sana: export --guidance-batch N, recorded as its own row from the component's PTQ run")
    parser.add_argument("--calib-samples", type=int, default=8, help="export --calib-samples (the CLI's default)")
    parser.add_argument("--table-only", action="store_true", help="only rewrite the tables from the JSON")
    parser.add_argument("--readme", action="store_true", help="also rewrite the README table")
    parser.add_argument("--lm-head-probe", action="store_true", help="compile Gemma-2-2B's 256k head alone")
    parser.add_argument("--lm-head-tokens", type=int, nargs="+", default=[1], help="its prompt lengths N")
    parser.add_argument("--lm-head-slices", type=int, default=1,
                        help="compile one of K equal vocabulary slices of the head instead of the whole")
    parser.add_argument("--note", help="a note kept with the component's result")
    parser.add_argument("--embedding", choices=("graph", "host"), default=None,
                        help="gemma2b: export --embedding W, recorded as its own row from the component's PTQ run")
    parser.add_argument("--graph", action="append",
                        help="parity stage of a model of several graphs (gemma2b: prefill, decode): only these")
    args = parser.parse_args(argv)
    if args.lm_head_probe:
        print(json.dumps(lm_head_probe(args.work, args), indent=1, default=str))
        return 0
    if args.note:
        for component in args.component or list(MODELS[args.model]):
            chosen = variant(component, args)
            key = component if chosen is None else chosen[0]
            result = load_results().get(args.model, {}).get(key, {})
            save_result(args.model, key, result | {"note": args.note})
    if not args.table_only:
        stages = [s.strip() for s in args.stages.split(",") if s.strip()]
        bad = sorted(set(stages) - set(STAGES))
        if bad:
            parser.error(f"unknown stage(s) {', '.join(bad)}; use {', '.join(STAGES)}")
        components = args.component or list(MODELS[args.model])
        bad = sorted(set(components) - set(MODELS[args.model]))
        if bad:
            parser.error(f"unknown component(s) {', '.join(bad)} of {args.model}; use {', '.join(MODELS[args.model])}")
        for component in components:
            print(f"== {args.model} / {component}: {', '.join(stages)}", flush=True)
            result = run_component(args.model, component, stages, args.work, args)
            print(json.dumps({k: v for k, v in result.items() if k != "build"}, indent=1, default=str), flush=True)
    print(write_tables(args.readme))
    return 0


if __name__ == "__main__":
    sys.exit(main())
