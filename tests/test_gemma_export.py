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


def test_bench_on_the_simulator(run: Path):
    """bench --device sim on the compiled tiny-Gemma: the host keeps the cache, the simulated HTP runs both graphs;
    the text comes back decoded, with tokens per second (simulator figures)."""
    pytest.importorskip("onnxruntime_qnn")
    from fraqat_deploy.device.protocol import validate

    if not (run / "compile" / "s25u" / "compile.json").is_file():
        assert runner.invoke(app, ["compile", "tiny-gemma", "--run", str(run), "--device", "s25u"]).exit_code == 0
    result = runner.invoke(app, ["bench", "tiny-gemma", "--run", str(run), "--device", "sim", "--runs", "2",
                                 "--warmup", "1", "--max-new-tokens", "5", "--prompt", "def main("])
    assert result.exit_code == 0, result.output
    stage = json.loads((run / "run.json").read_text())["stages"]["bench/sim"]
    data = json.loads((run / "bench" / "sim" / stage["id"] / "result.json").read_text())
    validate("result", data)
    (output,) = data["outputs"]
    assert output["text"].startswith("def main(") and 1 <= len(output["tokens"]) <= 5
    assert output["tokens_per_second"] > 0
    timings = data["timings_ms"]["components"]
    assert timings["prefill"]["n"] == 2 and timings["decode"]["n"] == 2 * (len(output["tokens"]) - 1)
