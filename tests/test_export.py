"""Export to Q/DQ ONNX and local compile: exact encodings read back from the graph, parity, the HTP forms,
compile coverage and HTP parity on the host simulator, and the errors."""

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
from fraqat_deploy.compile.run import compile_run
from fraqat_deploy.errors import ConfigError
from fraqat_deploy.models import get_adapter
from fraqat_deploy.models.htp_forms import HtpLinearAttnProcessor, htp_forms
from fraqat_deploy.quant import quant_layers
from fraqat_deploy.train import TrainConfig, train
from fraqat_deploy.train.load import load_trained

runner = CliRunner()


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("export") / "run"
    train(TrainConfig(model="sana", out=run, tiny=True, schedule="8:1,4:2", steps=12, n_train=32, n_val=8,
                      calib_samples=16), show_progress=False)
    result = runner.invoke(app, ["export", "sana", "--run", str(run)])
    assert result.exit_code == 0, result.output
    return run


def test_linear_attention_form_equals_diffusers():
    torch.manual_seed(0)
    model = get_adapter("sana").load(None, tiny=True)
    attn = model.student.transformer_blocks[0].attn1
    x = torch.randn(2, 64, attn.to_q.in_features) * 3
    with torch.no_grad():
        reference = attn(x)
        attn.processor = HtpLinearAttnProcessor()
        ours = attn(x)
    assert float((ours - reference).abs().max()) < 1e-5


def test_htp_forms_keep_every_component_output():
    model = get_adapter("sana").load(None, tiny=True)
    for component in get_adapter("sana").components(model, n_calibration=2):
        module = copy.deepcopy(component.module)
        with torch.no_grad():
            before = component.module(*component.sample)
            assert htp_forms(module) >= (1 if component.name != "vae_decoder" else 0)
            after = module(*component.sample)
        assert float((after - before).abs().max()) < 1e-5, component.name


def _producer(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output}


def test_trained_quantization_is_in_the_graph_exactly(exported: Path):
    trained = load_trained(exported)
    layers = quant_layers(trained.student)
    model = onnx.load(str(exported / "export" / "transformer.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    prod = _producer(model)
    ops = {n.op_type for n in model.graph.node}
    assert "Reciprocal" not in ops and "Pow" not in ops  # the HTP forms
    int4 = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT4 and i.name.endswith("_int")]
    assert len(int4) == len(layers)
    checked = 0
    for node in model.graph.node:
        if node.op_type not in ("Gemm", "Conv") or not node.input[1].endswith(".weight_dq"):
            continue
        name = node.input[1].removesuffix(".weight_dq").removeprefix("transformer.")
        if name not in layers:
            continue
        layer = layers[name]
        q, scale, _ = layer.weight_codes()
        dq_w = prod[node.input[1]]
        codes = inits[dq_w.input[0]].astype(np.int32)
        assert np.array_equal(codes.reshape(q.shape), q.numpy())  # Gemm transB / Conv: stored as [out, in, ...]
        onnx_scales = inits[dq_w.input[1]].reshape(-1)
        assert np.all(onnx_scales == np.float32(float(scale)))  # per-tensor scale, repeated per channel
        dq_x = prod[node.input[0]]
        assert float(inits[dq_x.input[1]]) == np.float32(layer.act_encoding.scale)
        assert int(inits[dq_x.input[2]]) == layer.act_encoding.zero_point
        assert inits[dq_x.input[2]].dtype == (np.uint8 if layer.act_encoding.bits == 8 else np.uint16)
        q_out = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == node.output[0])
        assert float(inits[q_out.input[1]]) == np.float32(layer.out_encoding.scale)
        assert int(inits[q_out.input[2]]) == layer.out_encoding.zero_point
        checked += 1
    assert checked == len(layers)


def test_parity_and_manifest(exported: Path):
    parity = json.loads((exported / "export" / "parity.json").read_text())
    assert set(parity["components"]) == {"text_encoder", "transformer", "vae_decoder"}
    for outputs in parity["components"].values():
        for m in outputs.values():
            assert m["passed"] and m["mean_steps"] <= 1.0 and m["max_steps"] <= 4.0
    text_model = onnx.load(str(exported / "export" / "text_encoder.onnx"))
    assert "GatherND" not in {n.op_type for n in text_model.graph.node}
    manifest = json.loads((exported / "run.json").read_text())
    assert manifest["stages"]["export"]["status"] == "done"


def test_compile_for_s25u_and_htp_parity(exported: Path):
    result = runner.invoke(app, ["compile", "sana", "--run", str(exported), "--device", "s25u"])
    assert result.exit_code == 0, result.output
    out = exported / "compile" / "s25u"
    records = json.loads((out / "compile.json").read_text())["components"]
    assert set(records) == {"text_encoder", "transformer", "vae_decoder"}
    for name, rec in records.items():
        assert rec["soc_model"] == 69 and rec["coverage"]["cpu_fallback"] == 0, name
        assert rec["context_binary_bytes"] > 0 and (out / f"{name}_ctx.onnx").is_file()
    parity = json.loads((out / "htp_parity.json").read_text())["components"]
    assert parity["text_encoder"]["passed"] and parity["vae_decoder"]["passed"]
    # the W4A8 transformer: far from the ~30% of a naive export, not yet inside the 2% bound (see README)
    assert parity["transformer"]["outputs"]["velocity"]["rel"] < 0.10
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = compile_run(exported, "s25u")
    assert all(r["cached"] for r in again["records"].values())
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name in mtimes and not p.name.endswith(".json")} \
        == {k: v for k, v in mtimes.items() if not k.endswith(".json")}


def test_debug_htp_names_a_tensor(exported: Path):
    result = runner.invoke(app, ["debug-htp", "--run", str(exported), "--component", "vae_decoder",
                                 "--rel-tol", "0.0"])
    assert result.exit_code == 0, result.output
    assert "first divergence:" in result.output


def test_errors(exported: Path, tmp_path: Path):
    unknown = runner.invoke(app, ["compile", "sana", "--run", str(exported), "--device", "pixel9"])
    assert unknown.exit_code != 0 and "s25u" in unknown.output and len(unknown.output.strip().splitlines()) == 1
    no_export = runner.invoke(app, ["compile", "sana", "--run", str(tmp_path), "--device", "s25u"])
    assert no_export.exit_code != 0 and "export" in no_export.output
    with pytest.raises(ConfigError, match="cannot be exported yet"):
        get_adapter("gemma").components(get_adapter("gemma").load(None, tiny=True))
    wrong = runner.invoke(app, ["export", "gemma", "--run", str(exported)])
    assert wrong.exit_code != 0 and "holds a 'sana' model" in wrong.output


def test_ptq_straight_from_the_fp_model(tmp_path: Path):
    out = tmp_path / "ptq"
    result = runner.invoke(app, ["compile", "sana", "--tiny", "--device", "s25u", "--out", str(out),
                                 "--component", "transformer"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "run.json").read_text())["stages"]["train"]["schedule"] == "ptq"
    assert (out / "compile" / "s25u" / "transformer_ctx.onnx").is_file()
