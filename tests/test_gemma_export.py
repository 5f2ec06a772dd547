"""Gemma-2 as deployed: the prefill and decode graphs against transformers' own model, the host's greedy loop,
and the chain train -> export -> compile for the S25 Ultra on tiny-Gemma (CPU parity, HTP coverage and parity)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from typer.testing import CliRunner

from fraqat_deploy.cli import app
from fraqat_deploy.errors import ConfigError
from fraqat_deploy.models import LoadedModel, get_adapter
from fraqat_deploy.models.gemma_graphs import (
    KvCache,
    build_graphs,
    default_context,
    graph_spec,
    greedy_decode,
    prefill_feed,
    recording,
    session_runner,
    text_decode_feed,
    torch_runner,
)

runner = CliRunner()
PROMPTS = ["def main():\n    ", "import os\nimport sys\n\nclass Foo", "x"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def embedded() -> LoadedModel:
    return get_adapter("tiny-gemma").load()


@torch.no_grad()
def _hf_logits(lm: torch.nn.Module, ids: list[int]) -> np.ndarray:
    return lm(input_ids=torch.tensor([ids]), use_cache=False).logits[0].numpy()


def test_greedy_through_the_graphs_equals_generate(embedded: LoadedModel):
    adapter = get_adapter("tiny-gemma")
    spec = graph_spec(embedded.student, context=default_context(embedded))
    assert (spec.context, spec.prompt_length, spec.sliding_window) == (128, 64, None)  # the window covers C
    run = torch_runner(build_graphs(embedded.student, spec), spec)
    tokenizer = embedded.parts["tokenizer"]
    # the last prompt is longer than one prefill: its tail goes through the decode graph
    prompts = [*PROMPTS, "import os\n" * 7]
    for prompt in prompts:
        ids = tokenizer(prompt)["input_ids"]
        new = greedy_decode(run, spec, ids, max_new_tokens=24, eos_id=tokenizer.eos_token_id)
        assert prompt + tokenizer.decode(new, skip_special_tokens=True) == \
            adapter.generate(embedded, [prompt], max_new_tokens=24)[0], prompt
    assert len(tokenizer(prompts[-1])["input_ids"]) > spec.prompt_length
    with pytest.raises(ConfigError, match="context"):
        greedy_decode(run, spec, [1] * (spec.context + 1), max_new_tokens=1)


def test_graph_logits_match_transformers(embedded: LoadedModel):
    """Prefill with right and with left padding, then decode step by step: the logits of transformers' model."""
    lm = embedded.student
    spec = graph_spec(lm, context=default_context(embedded))
    run = torch_runner(build_graphs(lm, spec), spec)
    tokenizer = embedded.parts["tokenizer"]
    ids = tokenizer(PROMPTS[1])["input_ids"]
    full = ids + tokenizer("    def __init__(self):\n")["input_ids"][1:]
    reference = _hf_logits(lm, full)
    scale = float(np.abs(reference).max())

    right = run("prefill", prefill_feed(spec, ids))
    assert np.abs(right["logits"][0, : len(ids)] - reference[: len(ids)]).max() < 1e-4 * scale
    n, pad = spec.prompt_length, spec.prompt_length - len(ids)
    left = {"input_ids": np.array([[0] * pad + ids]), "attention_mask": np.array([[0] * pad + [1] * len(ids)]),
            "position_ids": np.array([[0] * pad + list(range(len(ids)))])}
    left_out = run("prefill", left)
    assert np.abs(left_out["logits"][0, pad:] - reference[: len(ids)]).max() < 1e-4 * scale
    assert np.abs(left_out["key_3"][:, :, pad:] - right["key_3"][:, :, : len(ids)]).max() < 1e-4
    assert left_out["logits"].shape == (1, n, spec.vocab) and right["value_0"].shape == (1, spec.kv_heads, n, 32)

    cache = KvCache(spec)
    cache.write(right, 0, len(ids))
    cache.length = len(ids)
    for position in range(len(ids), len(full)):
        out = run("decode", cache.decode_feed(full[position], position))
        assert out["key_0"].shape == (1, spec.kv_heads, 1, spec.head_dim)
        cache.write(out, position, 1)
        cache.length += 1
        assert np.abs(out["logits"][0, 0] - reference[position]).max() < 1e-4 * scale, position


def test_sliding_window_and_grouped_heads_match_transformers():
    """A Gemma-2 whose sliding window (5) is shorter than the context: the decode graph takes a second mask, and
    every layer type still gives transformers' logits (2 query heads per key/value head)."""
    adapter = get_adapter("gemma")
    config = copy.deepcopy(adapter.tiny_config)
    config["model"]["sliding_window"] = 5
    model = adapter.load_from_spec({"adapter": "gemma", "kind": "tiny", "seed": 3, "config": config})
    lm = model.student
    assert lm.config.layer_types == ["sliding_attention", "full_attention"]
    spec = graph_spec(lm, context=24, prompt_length=8)
    assert spec.sliding_window == 5 and spec.sliding_layers == (0,) and "sliding_mask" in spec.decode_inputs()
    run = torch_runner(build_graphs(lm, spec), spec)
    ids = torch.randint(3, spec.vocab, (spec.context,), generator=torch.Generator().manual_seed(0)).tolist()
    reference = _hf_logits(lm, ids)
    cache = KvCache(spec)
    out = run("prefill", prefill_feed(spec, ids[: spec.prompt_length]))
    got = [out["logits"][0]]
    cache.write(out, 0, spec.prompt_length)
    cache.length = spec.prompt_length
    for position in range(spec.prompt_length, spec.context):
        out = run("decode", cache.decode_feed(ids[position], position))
        cache.write(out, position, 1)
        cache.length += 1
        got.append(out["logits"][0])
    logits = np.concatenate(got)
    assert np.abs(logits - reference).max() < 1e-5 * float(np.abs(reference).max())
    without = graph_spec(lm, context=5)  # the window covers the whole context: one mask
    assert without.sliding_window is None and "sliding_mask" not in without.decode_inputs()


def test_components_are_calibrated_on_text(embedded: LoadedModel):
    prefill, decode = get_adapter("tiny-gemma").components(embedded, n_calibration=3)
    spec = prefill.info
    assert (prefill.name, decode.name) == ("prefill", "decode") and prefill.holds_student and decode.holds_student
    assert spec["context"] == 128 and spec["prompt_length"] == 64 and decode.info == spec
    assert decode.input_names[:3] == ["input_ids", "position_ids", "attention_mask"]
    assert len(prefill.calibration) == len(decode.calibration) == 3
    bos = embedded.parts["tokenizer"].bos_token_id
    for ids, _, _ in prefill.calibration:
        assert int(ids[0, 0]) == bos and ids.shape == (1, 64)
    # the sample prompt is a full prefill; the others are shorter (padded)
    assert [int(row[2].sum()) for row in prefill.calibration][0] == 64
    assert min(int(row[2].sum()) for row in prefill.calibration) < 64
    positions = [int(row[1]) for row in decode.calibration]
    assert [int(row[2].sum()) for row in decode.calibration] == positions  # the cache holds every earlier token
    assert positions[0] == 127 and len(set(positions)) == 3  # the sample: a full cache
    for (_, _, mask), row in zip(prefill.calibration, decode.calibration, strict=True):
        assert int(row[1]) >= int(mask.sum())  # decoded after its prefill
        empty = row[3][:, :, int(row[1]) :]  # slots past the position (none at a full cache)
        assert (empty.numel() == 0 or float(empty.abs().max()) == 0.0) and float(row[3].abs().max()) > 0.0


def test_text_decode_feed_is_the_deployed_loops_call(embedded: LoadedModel):
    """The calibration's decode input at position p (one prefill of length p) is the call the deployed loop makes
    for the last token of a (p + 1)-token prompt (a prefill of N, then decode calls)."""
    spec = graph_spec(embedded.student, context=default_context(embedded))
    tokens = embedded.parts["tokenizer"]("import os\n" * 10)["input_ids"][:90]
    assert len(tokens) == 90 > spec.prompt_length
    log: list = []
    greedy_decode(recording(torch_runner(build_graphs(embedded.student, spec), spec), log), spec, tokens,
                  max_new_tokens=1)
    deployed = log[-1][1]
    assert log[-1][0] == "decode" and int(deployed["position_ids"][0, 0]) == 89
    forced = text_decode_feed(embedded.student, spec, tokens)
    assert set(forced) == set(deployed)
    for name, value in deployed.items():
        scale = max(float(np.abs(value).max()), 1.0)
        assert np.abs(forced[name].astype(np.float64) - value).max() <= 1e-4 * scale, name
    with pytest.raises(ConfigError, match="outside 1..127"):
        text_decode_feed(embedded.student, spec, tokens[:1])


# ---------------------------------------------------------------- train -> export -> compile


@pytest.fixture(scope="module")
def run(exported_tiny_gemma: Path) -> Path:
    return exported_tiny_gemma


def test_export_parity_and_graph(run: Path):
    parity = json.loads((run / "export" / "parity.json").read_text())["components"]
    assert set(parity) == {"prefill", "decode"}
    for name, outputs in parity.items():
        assert set(outputs) == {"logits"} | {f"{kind}_{i}" for i in range(4) for kind in ("key", "value")}
        for output, m in outputs.items():
            assert m["passed"], (name, output, m)
            # within the fixed tolerance, or within twice the reference's own noise floor (export/__init__.py)
            assert (m["mean_steps"] <= 1 and m["max_steps"] <= 4) or (
                m["mean_steps"] <= 2 * m["floor_mean_steps"] and m["max_steps"] <= 2 * m["floor_max_steps"])
    manifest = json.loads((run / "export" / "export.json").read_text())["components"]
    assert manifest["decode"]["info"]["context"] == 128
    assert manifest["decode"]["input_shapes"]["past_key_0"] == [1, 2, 127, 32]
    for name in ("prefill", "decode"):
        model = onnx.load(str(run / "export" / f"{name}.onnx"))
        ops = {n.op_type for n in model.graph.node}
        assert not ops & {"GatherND", "ScatterND", "Sin", "Cos", "Reciprocal", "Pow"}, ops
        int4 = [i for i in model.graph.initializer
                if i.data_type == onnx.TensorProto.INT4 and i.name.endswith(".weight_int")]
        assert len(int4) == manifest[name]["qdq"]["trained_layers"] == 4 * 7 + 1  # the 4 layers' and lm_head
        # a Gather of a table (RoPE's cos / sin, the embedding) keeps the table's encoding: the HTP refused Gemma-2-2B's
        # sin-table Gather calibrated to zero point 32767 beside its table's 32768
        producer = {o: n for n in model.graph.node for o in n.output}
        consumers = {i: n for n in model.graph.node for i in n.input}
        inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer
                 if i.data_location != onnx.TensorProto.EXTERNAL}
        gathers = [n for n in model.graph.node if n.op_type == "Gather"
                   and producer.get(n.input[0]) is not None and producer[n.input[0]].op_type == "DequantizeLinear"]
        assert len(gathers) >= 2  # cos and sin at least
        for g in gathers:
            dq, q = producer[g.input[0]], consumers[g.output[0]]
            assert q.op_type == "QuantizeLinear"
            assert [inits[x].tolist() for x in dq.input[1:]] == [inits[x].tolist() for x in q.input[1:]], g.name


def test_compile_for_s25u_all_on_the_htp_and_greedy_on_the_simulator(run: Path):
    pytest.importorskip("onnxruntime_qnn")
    from fraqat_deploy.compile.htp import cpu_session, htp_session
    from fraqat_deploy.targets import get_target

    result = runner.invoke(app, ["compile", "tiny-gemma", "--run", str(run), "--device", "s25u"])
    assert result.exit_code == 0, result.output
    out = run / "compile" / "s25u"
    for name, rec in json.loads((out / "compile.json").read_text())["components"].items():
        assert rec["soc_model"] == 69 and rec["coverage"]["cpu_fallback"] == 0, name
        assert rec["coverage"]["htp_fraction"] == 1.0, name
    parity = json.loads((out / "htp_parity.json").read_text())["components"]
    for name, record in parity.items():
        assert record["passed"], (name, record["outputs"])
        # HTP vs CPU Q/DQ: requantization rounding flips single steps; with min/max activation ranges (the default
        # since issue 13, wider than mean ± 3 std) a flipped step is larger, measured 2.4% (prefill) and 3.6%
        # (decode) on the logits. The greedy tokens below must still be identical.
        assert record["outputs"]["logits"]["rel"] < 0.05, name

    # the host loop drives ONNX Runtime sessions as it drives the torch graphs: CPU Q/DQ and the simulated HTP
    info = json.loads((run / "export" / "export.json").read_text())["components"]["decode"]["info"]
    spec = graph_spec(get_adapter("tiny-gemma").load().student, context=info["context"],
                      prompt_length=info["prompt_length"])
    cpu = session_runner({c: cpu_session(run / "export" / f"{c}.onnx") for c in ("prefill", "decode")})
    htp = session_runner({c: htp_session(out / f"{c}_ctx.onnx", get_target("s25u"), allow_cpu_fallback=True)
                          for c in ("prefill", "decode")})
    tokenizer = get_adapter("tiny-gemma").load().parts["tokenizer"]
    def logged(run, log):  # keeps each call's logits
        def call(component, feed):
            out = run(component, feed)
            log.append((component, out["logits"]))
            return out
        return call

    for prompt in PROMPTS:
        ids = tokenizer(prompt)["input_ids"]
        cpu_log, htp_log = [], []
        on_cpu = greedy_decode(logged(cpu, cpu_log), spec, ids, max_new_tokens=6)
        on_htp = greedy_decode(logged(htp, htp_log), spec, ids, max_new_tokens=6)
        assert len(on_cpu) == len(on_htp) == 6, prompt
        if on_cpu[0] != on_htp[0]:
            # the same prompt calls until the first token: a different first token is allowed only for a near tie,
            # the CPU's winner ahead of the HTP's by no more than twice the HTP's largest logit error there
            k = max(0, len(ids) - spec.prompt_length)
            (name, cpu_logits), (_, htp_logits) = cpu_log[k], htp_log[k]
            pos = min(len(ids), spec.prompt_length) - 1 if name == "prefill" else -1
            row, hrow = cpu_logits[0, pos], htp_logits[0, pos]
            margin = float(row[on_cpu[0]] - row[on_htp[0]])
            assert margin <= 2 * float(np.abs(row - hrow).max()), (prompt, on_cpu[0], on_htp[0], margin)


def _bench_sim(run: Path, *, runs: int, warmup: int) -> Path:
    """Compile the run for s25u if not yet, bench it on the simulator (5 new tokens of "def main("): its folder."""
    if not (run / "compile" / "s25u" / "compile.json").is_file():
        assert runner.invoke(app, ["compile", "tiny-gemma", "--run", str(run), "--device", "s25u"]).exit_code == 0
    result = runner.invoke(app, ["bench", "tiny-gemma", "--run", str(run), "--device", "sim", "--runs", str(runs),
                                 "--warmup", str(warmup), "--max-new-tokens", "5", "--prompt", "def main("])
    assert result.exit_code == 0, result.output
    stage = json.loads((run / "run.json").read_text())["stages"]["bench/sim"]
    return run / "bench" / "sim" / stage["id"]


def test_bench_on_the_simulator(run: Path):
    """bench --device sim on the compiled tiny-Gemma: the host keeps the cache, the simulated HTP runs both graphs;
    the text comes back decoded, with tokens per second (simulator figures)."""
    pytest.importorskip("onnxruntime_qnn")
    from fraqat_deploy.device.protocol import validate

    data = json.loads((_bench_sim(run, runs=2, warmup=1) / "result.json").read_text())
    validate("result", data)
    (output,) = data["outputs"]
    assert output["text"].startswith("def main(") and 1 <= len(output["tokens"]) <= 5
    assert output["tokens_per_second"] > 0
    timings = data["timings_ms"]["components"]
    assert timings["prefill"]["n"] == 2 and timings["decode"]["n"] == 2 * (len(output["tokens"]) - 1)


# ---------------------------------------------------------------- --embedding host


def test_host_embedding_graphs_decode_as_the_graph_form(embedded: LoadedModel, tmp_path: Path):
    """The PyTorch graphs fed float16 table rows (inputs_embeds) give the greedy tokens of the graphs that look the
    ids up themselves; a spec that takes inputs_embeds refuses to run without a table."""
    from fraqat_deploy.models.gemma_graphs import TableFile, write_embedding_table

    lm = embedded.student
    spec = graph_spec(lm, context=default_context(embedded))
    host = graph_spec(lm, context=default_context(embedded), embedding="host")
    assert host.prefill_inputs()[0] == host.decode_inputs()[0] == "inputs_embeds"
    assert host.to_dict()["embedding"] == "host" and spec.to_dict()["embedding"] == "graph"
    record = write_embedding_table(lm.model.embed_tokens, host.vocab, tmp_path / "embedding.npy", block=7)
    table = np.load(tmp_path / "embedding.npy")
    assert table.dtype == np.float16 and table.shape == (host.vocab, lm.config.hidden_size)
    assert record["shape"] == list(table.shape) and record["bytes"] == (tmp_path / "embedding.npy").stat().st_size
    # the module's output (Gemma-2's sqrt(hidden) scaling included), rounded to float16
    with torch.no_grad():
        rows = lm.model.embed_tokens(torch.arange(host.vocab)).numpy()
    assert np.array_equal(table, rows.astype(np.float16)) and np.abs(rows).max() > 1.0
    graph_run = torch_runner(build_graphs(lm, spec), spec)
    host_run = torch_runner(build_graphs(lm, host), host)
    tokenizer = embedded.parts["tokenizer"]
    for prompt in [*PROMPTS, "import os\n" * 7]:
        ids = tokenizer(prompt)["input_ids"]
        assert greedy_decode(host_run, host, ids, max_new_tokens=24, embedding=TableFile(tmp_path / "embedding.npy")) \
            == greedy_decode(graph_run, spec, ids, max_new_tokens=24), prompt
    with pytest.raises(ConfigError, match="inputs_embeds"):
        greedy_decode(host_run, host, [1, 2], max_new_tokens=1)


def _vocab_gathers(model: onnx.ModelProto, vocab: int) -> list[str]:
    """Gather nodes whose data is a [vocab, ...] table (an initializer, through a DequantizeLinear or not)."""
    shapes = {i.name: list(i.dims) for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    found = []
    for node in model.graph.node:
        if node.op_type != "Gather":
            continue
        data = node.input[0]
        while data in producers and producers[data].op_type in ("DequantizeLinear", "Cast", "Identity"):
            data = producers[data].input[0]
        if shapes.get(data, [0])[0] == vocab and len(shapes[data]) == 2:
            found.append(node.name)
    return found


@pytest.fixture(scope="module")
def host_run(exported_tiny_gemma_host: Path) -> Path:
    return exported_tiny_gemma_host


def test_export_embedding_host_on_the_command_line(exported_tiny_gemma: Path, tmp_path: Path):
    """``export --embedding host`` through the CLI names the table it wrote; an unknown placement is one line."""
    import shutil

    run = tmp_path / "g1"
    shutil.copytree(exported_tiny_gemma, run, ignore=shutil.ignore_patterns("export", "compile", "bench"))
    bad = runner.invoke(app, ["export", "tiny-gemma", "--run", str(run), "--embedding", "phone"])
    assert bad.exit_code != 0 and "embedding placement 'phone'" in bad.output
    assert len(bad.output.strip().splitlines()) == 1, bad.output
    result = runner.invoke(app, ["export", "tiny-gemma", "--run", str(run), "--embedding", "host", "--calib-samples",
                                 "2"])
    assert result.exit_code == 0, result.output
    assert "embedding.npy" in result.output and (run / "export" / "embedding.npy").is_file()


def test_host_embedding_export(host_run: Path, exported_tiny_gemma: Path):
    from fraqat_deploy.export import load_inputs
    from fraqat_deploy.runs import sha256_file
    from fraqat_deploy.train.load import load_trained

    manifest = json.loads((host_run / "export" / "export.json").read_text())
    for name, rec in manifest["components"].items():
        for output, m in rec["parity"].items():
            assert m["passed"], (name, output, m)
        assert rec["info"]["embedding"] == "host" and rec["input_names"][0] == "inputs_embeds"
    shapes = manifest["components"]["prefill"]["input_shapes"]
    trained = load_trained(host_run)
    hidden, vocab = trained.student.config.hidden_size, trained.student.config.vocab_size
    assert shapes["inputs_embeds"] == [1, 64, hidden] and "input_ids" not in shapes
    assert manifest["components"]["decode"]["input_shapes"]["inputs_embeds"] == [1, 1, hidden]
    record = manifest["files"]["embedding"]
    path = host_run / "export" / record["file"]
    table = np.load(path, mmap_mode="r")
    assert (record["dtype"], record["shape"]) == ("float16", [vocab, hidden])
    assert table.dtype == np.float16 and table.shape == (vocab, hidden)
    assert record["sha256"] == sha256_file(path) and record["bytes"] == path.stat().st_size
    # the table is the trained student's embedding output, rounded to float16
    with torch.no_grad():
        rows = trained.student.model.embed_tokens(torch.arange(vocab)).float().numpy()
    assert np.array_equal(np.asarray(table), rows.astype(np.float16))
    # every calibration input the graphs (and the torch reference) were given is a row of that table, exactly
    for name in ("prefill", "decode"):
        embeds = load_inputs(host_run / "export" / f"{name}.inputs.npz")["inputs_embeds"].reshape(-1, hidden)
        assert embeds.dtype == np.float32
        assert all((np.asarray(table, dtype=np.float32) == row).all(axis=1).any() for row in embeds), name
    # no Gather over the [vocab, hidden] table in the host graphs; the default graphs have one each
    graph_vocab = json.loads((exported_tiny_gemma / "export" / "export.json").read_text())
    assert "files" not in graph_vocab
    for name in ("prefill", "decode"):
        assert _vocab_gathers(onnx.load(str(host_run / "export" / f"{name}.onnx")), vocab) == [], name
        assert len(_vocab_gathers(onnx.load(str(exported_tiny_gemma / "export" / f"{name}.onnx")), vocab)) == 1
    assert (host_run / "export" / "prefill.onnx").stat().st_size < \
        (exported_tiny_gemma / "export" / "prefill.onnx").stat().st_size


def test_host_embedding_compiles_for_s25u_and_decodes_as_the_graph_form(host_run: Path, exported_tiny_gemma: Path):
    """The host form compiles wholly to the HTP with HTP parity; on ONNX Runtime CPU (Q/DQ) and on the simulator its
    greedy tokens are the default form's on the same prompts, but for a near tie (as between CPU and HTP above)."""
    pytest.importorskip("onnxruntime_qnn")
    from fraqat_deploy.compile.htp import cpu_session, htp_session
    from fraqat_deploy.device.pipeline import gemma_spec
    from fraqat_deploy.models.gemma_graphs import TableFile
    from fraqat_deploy.targets import get_target

    result = runner.invoke(app, ["compile", "tiny-gemma", "--run", str(host_run), "--device", "s25u"])
    assert result.exit_code == 0, result.output
    out = host_run / "compile" / "s25u"
    for name, rec in json.loads((out / "compile.json").read_text())["components"].items():
        assert rec["coverage"]["cpu_fallback"] == 0 and rec["coverage"]["htp_fraction"] == 1.0, name
    for name, record in json.loads((out / "htp_parity.json").read_text())["components"].items():
        assert record["passed"] and record["rows"] >= 1, name

    def spec_of(run):
        info = json.loads((run / "export" / "export.json").read_text())["components"]["decode"]["info"]
        return gemma_spec({"spec": info})

    host, graph = spec_of(host_run), spec_of(exported_tiny_gemma)
    assert host.host_embedding and not graph.host_embedding
    table = TableFile(host_run / "export" / "embedding.npy")
    tokenizer = get_adapter("tiny-gemma").load().parts["tokenizer"]

    def logged(run, log):
        def call(component, feed):
            out = run(component, feed)
            log.append(out["logits"])
            return out
        return call

    runs = {"cpu": lambda run, c: cpu_session(run / "export" / f"{c}.onnx")}
    if (exported_tiny_gemma / "compile" / "s25u" / "compile.json").is_file():
        runs["htp"] = lambda run, c: htp_session(run / "compile" / "s25u" / f"{c}_ctx.onnx", get_target("s25u"),
                                                 allow_cpu_fallback=True)
    for where, session in runs.items():
        on_host = session_runner({c: session(host_run, c) for c in ("prefill", "decode")})
        on_graph = session_runner({c: session(exported_tiny_gemma, c) for c in ("prefill", "decode")})
        for prompt in PROMPTS:
            ids = tokenizer(prompt)["input_ids"]
            host_log, graph_log = [], []
            a = greedy_decode(logged(on_host, host_log), host, ids, max_new_tokens=8, embedding=table)
            b = greedy_decode(logged(on_graph, graph_log), graph, ids, max_new_tokens=8)
            assert len(a) == len(b) == 8, (where, prompt)
            if a != b:
                # the first difference must be a near tie: the graph form's winner ahead of the host form's by no
                # more than twice the largest difference of the two forms' logits at that call
                k = next(i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y)
                call = max(0, len(ids) - host.prompt_length) + k
                pos = min(len(ids), host.prompt_length) - 1 if call == 0 else -1
                row, hrow = graph_log[call][0, pos], host_log[call][0, pos]
                margin = float(row[b[k]] - row[a[k]])
                assert margin <= 2 * float(np.abs(row - hrow).max()), (where, prompt, a, b, margin)


def test_bench_on_the_simulator_with_the_host_table(host_run: Path):
    """bench --device sim pushes the table beside the models, names it in the request, and the engine feeds its rows:
    the tokens of the host loop over the same simulated graphs."""
    pytest.importorskip("onnxruntime_qnn")
    from fraqat_deploy.compile.htp import htp_session
    from fraqat_deploy.device.pipeline import gemma_spec
    from fraqat_deploy.device.protocol import validate
    from fraqat_deploy.models.gemma_graphs import TableFile
    from fraqat_deploy.targets import get_target

    out = _bench_sim(host_run, runs=1, warmup=0)
    data = json.loads((out / "result.json").read_text())
    validate("result", data)
    request = json.loads((out / "request.json").read_text())
    record = json.loads((host_run / "export" / "export.json").read_text())["files"]["embedding"]
    assert request["pipeline"]["spec"]["embedding"] == "host"
    assert request["model"]["embedding"]["sha256"] == record["sha256"]
    pushed = host_run / "bench" / "sim" / ".device" / request["model"]["embedding"]["path"]
    assert pushed.is_file() and pushed.stat().st_size == record["bytes"]
    spec = gemma_spec(request["pipeline"])
    htp = session_runner({c: htp_session(host_run / "compile" / "s25u" / f"{c}_ctx.onnx", get_target("s25u"),
                                         allow_cpu_fallback=True) for c in ("prefill", "decode")})
    tokenizer = get_adapter("tiny-gemma").load().parts["tokenizer"]
    expected = greedy_decode(htp, spec, tokenizer("def main(")["input_ids"], max_new_tokens=5,
                             eos_id=tokenizer.eos_token_id, embedding=TableFile(host_run / "export" / "embedding.npy"))
    assert data["outputs"][0]["tokens"] == expected and expected


def test_the_table_of_a_bf16_embedding_is_written_a_block_at_a_time(embedded: LoadedModel, tmp_path: Path):
    """A bfloat16 embedding (Gemma-2 as shipped, loaded by ``keep_half``): the table holds the float32 load's rows
    rounded to float16, and no float tensor of the table's size is ever made (each block is looked up in 16 bits)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from fraqat_deploy.models.gemma_graphs import write_embedding_table
    from fraqat_deploy.models.half import keep_half

    lm = keep_half(copy.deepcopy(embedded.student).to(torch.bfloat16))
    # a float32 load of the same weights: the bfloat16 values, times the float32 sqrt(hidden)
    reference = lm.model.embed_tokens.weight.detach().float().numpy() * np.float32(lm.config.hidden_size ** 0.5)
    embed = lm.model.embed_tokens
    assert embed.weight.dtype == torch.bfloat16
    vocab, hidden = embed.weight.shape

    class Largest(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor) and t.is_floating_point():
                    Largest.largest = max(Largest.largest, t.numel())
            return out

    with Largest():
        record = write_embedding_table(embed, vocab, tmp_path / "embedding.npy", block=16)
    table = np.load(tmp_path / "embedding.npy")
    assert record["shape"] == [vocab, hidden] and table.dtype == np.float16
    assert np.array_equal(table, reference.astype(np.float16))
    assert 0 < Largest.largest <= 16 * hidden < vocab * hidden, Largest.largest
