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
    for name, record in parity.items():  # the W4A8 transformer included (a naive export misses by ~30%)
        assert record["passed"], (name, record["outputs"])
        # this random-initialised model's last layer amplifies rounding: its bound follows its own quantization
        # error (the trained digits model below is held to the plain 2%)
        assert all(o["rel"] <= max(0.02, 2.5 * o["quantization_rel"]) for o in record["outputs"].values())
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = compile_run(exported, "s25u")
    assert all(r["cached"] for r in again["records"].values())
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name in mtimes and not p.name.endswith(".json")} \
        == {k: v for k, v in mtimes.items() if not k.endswith(".json")}


def test_a_graph_over_the_protobuf_limit_uses_external_data(exported: Path, tmp_path: Path, monkeypatch, capsys):
    """With the 2 GB limit lowered to nothing, every graph of the export goes through the external-data path a real
    Sana takes (float graph, calibration probe, Q/DQ graph, checker, compile, HTP parity) and comes out the same;
    its progress line names each step (minutes each at real size)."""
    import shutil

    from fraqat_deploy import onnx_io, ui
    from fraqat_deploy.export import export_run

    monkeypatch.setattr(ui, "LOG_PERIOD_S", 0.0)
    monkeypatch.setitem(ui._settings, "log_progress", True)

    run = tmp_path / "big"
    shutil.copytree(exported, run, ignore=shutil.ignore_patterns("export", "compile", "bench"))
    monkeypatch.setattr(onnx_io, "EXTERNAL_DATA_BYTES", 1)
    monkeypatch.setattr(onnx_io, "STREAM_BYTES", 1)  # and the streaming export a real Sana takes
    export_run(run, "sana", components=["transformer"])
    log = capsys.readouterr().err
    for what in ("calibration inputs (FP sampling runs)", "transformer: float graph",
                 "transformer: fake-quant reference", "transformer: Q/DQ graph", "transformer: CPU parity"):
        assert what in log, (what, log)
    out = run / "export"
    for name in ("transformer.onnx", "transformer.float.onnx"):
        assert (out / f"{name}.data").stat().st_size > 0, name
        inline = onnx.load(str(out / name), load_external_data=False)
        # every tensor over the inline size moved out (INT4/INT8/INT32 too: packed raw bytes, not int32_data)
        stayed = [t.name for t in inline.graph.initializer
                  if t.data_location != onnx.TensorProto.EXTERNAL and t.ByteSize() > 2 * onnx_io.INLINE_TENSOR_BYTES]
        assert stayed == [], (name, stayed[:5])
    big = onnx.load(str(out / "transformer.onnx"))
    small = onnx.load(str(exported / "export" / "transformer.onnx"))
    assert [n.op_type for n in big.graph.node] == [n.op_type for n in small.graph.node]
    small_inits = {i.name: numpy_helper.to_array(i) for i in small.graph.initializer}
    for init in big.graph.initializer:
        np.testing.assert_array_equal(numpy_helper.to_array(init), small_inits[init.name], err_msg=init.name)
    assert json.loads((out / "parity.json").read_text())["components"]["transformer"]["velocity"]["passed"]

    result = compile_run(run, "s25u")
    assert result["records"]["transformer"]["coverage"]["cpu_fallback"] == 0
    parity = json.loads((run / "compile" / "s25u" / "htp_parity.json").read_text())["components"]["transformer"]
    assert parity["passed"], parity


class _PositionThenNorm(torch.nn.Module):
    """x + a position embedding broadcast over the batch, then LayerNorm: Sana's patch embedding -> norm1."""

    def __init__(self, tokens: int = 16, channels: int = 32) -> None:
        super().__init__()
        self.pos = torch.nn.Parameter(torch.randn(1, tokens, channels) * 0.5)
        self.norm = torch.nn.LayerNorm(channels, elementwise_affine=False, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.pos)


def _qdq_of_position_then_norm(tmp_path: Path) -> Path:
    from fraqat_deploy.export import export_component
    from fraqat_deploy.models.base import Component

    torch.manual_seed(0)
    calibration = [(torch.randn(2, 16, 32) * 0.7,) for _ in range(3)]
    export_component(Component("pe_norm", _PositionThenNorm().eval(), ["x"], ["y"], calibration), tmp_path)
    return tmp_path / "pe_norm.onnx"


def test_batch_broadcast_constants_are_materialized_for_the_htp(tmp_path: Path):
    """QNN's HTP computes Add(x[2, T, C], const[1, T, C]) -> LayerNormalization wrongly (found on digits-Sana's
    first LayerNorm); the export stores such constants at the batch size, and the HTP then agrees with the CPU."""
    from fraqat_deploy.compile.local import compile_onnx, htp_parity

    qdq = _qdq_of_position_then_norm(tmp_path)
    model = onnx.load(str(qdq))
    add = next(n for n in model.graph.node if n.op_type == "Add")
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name: i for i in model.graph.initializer}
    constant = next(inits[producers[i].input[0]] for i in add.input
                    if i in producers and producers[i].input[0] in inits)
    assert list(constant.dims) == [2, 16, 32]
    compile_onnx(qdq, tmp_path / "compiled", "s25u")
    x = np.random.default_rng(1).normal(0, 0.7, (2, 16, 32)).astype(np.float32)
    parity = htp_parity(tmp_path / "compiled" / "pe_norm_ctx.onnx", qdq, {"x": x})
    assert parity["passed"] and parity["outputs"]["y"]["rel"] < 0.02, parity["outputs"]


def test_the_htp_broadcast_trap_is_still_there(tmp_path: Path):
    """The same graph with the constant left at [1, T, C]: the HTP departs. If a QNN release fixes this, this test
    says so and the workaround in export/graph.py can go."""
    from fraqat_deploy.compile.htp import cpu_session, htp_session
    from fraqat_deploy.targets import get_target

    qdq = _qdq_of_position_then_norm(tmp_path)
    model = onnx.load(str(qdq))
    for init in model.graph.initializer:
        if list(init.dims) == [2, 16, 32]:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init)[:1], init.name))
    broadcast = tmp_path / "broadcast.onnx"
    onnx.save(model, str(broadcast))
    x = np.random.default_rng(1).normal(0, 0.7, (2, 16, 32)).astype(np.float32)
    cpu = cpu_session(broadcast).run(None, {"x": x})[0]
    htp = htp_session(broadcast, get_target("s25u")).run(None, {"x": x})[0]
    assert np.abs(cpu - htp).mean() / np.abs(cpu).mean() > 0.10


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
    wrong = runner.invoke(app, ["export", "gemma", "--run", str(exported)])
    assert wrong.exit_code != 0 and "holds a 'sana' model" in wrong.output


def test_ptq_straight_from_the_fp_model(tmp_path: Path):
    out = tmp_path / "ptq"
    result = runner.invoke(app, ["compile", "sana", "--tiny", "--device", "s25u", "--out", str(out),
                                 "--component", "transformer"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "run.json").read_text())["stages"]["train"]["schedule"] == "ptq"
    assert (out / "compile" / "s25u" / "transformer_ctx.onnx").is_file()


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("digits") / "d1"
    train(TrainConfig(model="digits", out=run, schedule="fractional", steps=18, n_train=48, n_val=16,
                      calib_samples=16), show_progress=False)
    return run


def test_digits_exports_and_compiles_for_s25u_within_parity(digits_run: Path):
    """The acceptance path on the embedded model: every component of a FraQAT W4A8 digits-Sana passes export
    parity, goes wholly to the HTP for soc 69 and matches the CPU Q/DQ model on the simulator within 2%."""
    exported = runner.invoke(app, ["export", "digits", "--run", str(digits_run)])
    assert exported.exit_code == 0, exported.output
    compiled = runner.invoke(app, ["compile", "digits", "--run", str(digits_run), "--device", "s25u"])
    assert compiled.exit_code == 0, compiled.output
    out = digits_run / "compile" / "s25u"
    records = json.loads((out / "compile.json").read_text())["components"]
    assert set(records) == {"text_encoder", "transformer", "vae_decoder"}
    for name, rec in records.items():
        assert rec["coverage"]["cpu_fallback"] == 0 and rec["coverage"]["htp_fraction"] == 1.0, name
    for name, record in json.loads((out / "htp_parity.json").read_text())["components"].items():
        assert record["rows"] == 4, name  # several inputs: the "" prompt alone hides layout errors
        for output, m in record["outputs"].items():
            # the W4A8 transformer's worst row is held to what quantization itself costs, the others to 2%
            bound = m["quantization_rel"] if name == "transformer" else 0.02
            assert m["passed"] and m["rel"] < bound, (name, output, m)
    assert json.loads((digits_run / "run.json").read_text())["stages"]["compile/s25u"]["status"] == "done"
    unknown = runner.invoke(app, ["compile", "digits", "--run", str(digits_run), "--device", "pixel9"])
    assert unknown.exit_code != 0 and "s25u" in unknown.output and len(unknown.output.strip().splitlines()) == 1


def test_htp_parity_failure_fails_the_compile_and_keeps_the_binaries(digits_run: Path, monkeypatch):
    """A component over the parity tolerance ends the compile with a non-zero exit naming debug-htp; the context
    binaries and htp_parity.json stay for inspection."""
    import fraqat_deploy.compile.run as compile_run_module

    real = compile_run_module.htp_parity

    def strict(*args, **kwargs):  # a tolerance no real HTP run meets: every output fails
        return real(*args, **(kwargs | {"rel_tol": 0.0, "steps_tol": 0.0, "noise_factor": 0.0}))

    monkeypatch.setattr(compile_run_module, "htp_parity", strict)
    result = runner.invoke(app, ["compile", "digits", "--run", str(digits_run), "--device", "s24u"])
    assert result.exit_code != 0 and "debug-htp" in result.output, result.output
    out = digits_run / "compile" / "s24u"
    assert (out / "transformer_ctx.onnx").is_file() and (out / "htp_parity.json").is_file()
    assert json.loads((digits_run / "run.json").read_text())["stages"]["compile/s24u"]["status"] == "failed"


def test_parity_rows_chooses_or_skips_the_simulator_run(digits_run: Path):
    """`--parity-rows N` runs HTP parity on the first N exported inputs; 0 skips it (a real-size component takes
    hours on the simulator), recorded as skipped, not as passed, and the compile stage is still done."""
    if not (digits_run / "compile" / "s25u" / "compile.json").is_file():
        assert runner.invoke(app, ["export", "digits", "--run", str(digits_run)]).exit_code == 0
    one = runner.invoke(app, ["compile", "digits", "--run", str(digits_run), "--device", "s25u", "--parity-rows", "1",
                              "--component", "vae_decoder"])
    assert one.exit_code == 0, one.output
    parity = json.loads((digits_run / "compile" / "s25u" / "htp_parity.json").read_text())["components"]
    assert parity["vae_decoder"]["rows"] == 1 and parity["vae_decoder"]["passed"] is True
    skipped = runner.invoke(app, ["compile", "digits", "--run", str(digits_run), "--device", "s25u",
                                  "--parity-rows", "0"])
    assert skipped.exit_code == 0 and "skipped" in skipped.output, skipped.output
    parity = json.loads((digits_run / "compile" / "s25u" / "htp_parity.json").read_text())["components"]
    assert set(parity) == {"text_encoder", "transformer", "vae_decoder"}
    assert all(p["skipped"] and p["passed"] is None and not p["outputs"] for p in parity.values()), parity
    assert json.loads((digits_run / "run.json").read_text())["stages"]["compile/s25u"]["status"] == "done"
    negative = runner.invoke(app, ["compile", "digits", "--run", str(digits_run), "--parity-rows", "-1"])
    assert negative.exit_code != 0 and "--parity-rows" in negative.output


def test_calib_samples_sets_the_calibration_inputs(exported: Path, tmp_path: Path):
    """`export --calib-samples N` makes N calibration inputs (the FP model's own runs; fewer is faster at real
    size) and records the count."""
    import shutil

    run = tmp_path / "few"
    shutil.copytree(exported, run, ignore=shutil.ignore_patterns("export", "compile", "bench"))
    result = runner.invoke(app, ["export", "sana", "--run", str(run), "--component", "vae_decoder",
                                 "--calib-samples", "3"])
    assert result.exit_code == 0, result.output
    assert json.loads((run / "export" / "export.json").read_text())["calibration_inputs"] == 3
    with np.load(run / "export" / "vae_decoder.inputs.npz") as rows:
        assert sorted({k.split("/")[0] for k in rows.files}) == ["0", "1", "2"]
    zero = runner.invoke(app, ["export", "sana", "--run", str(run), "--calib-samples", "0"])
    assert zero.exit_code != 0 and "--calib-samples" in zero.output


def test_embedding_placement_is_a_gemma_option(digits_run: Path):
    """``--embedding`` (where Gemma-2's embedding lookup runs) on a Sana model: one line naming the fix, nothing
    written."""
    bad = runner.invoke(app, ["export", "digits", "--run", str(digits_run), "--embedding", "host"])
    assert bad.exit_code != 0 and len(bad.output.strip().splitlines()) == 1, bad.output
    assert "--embedding applies to the Gemma-2 models, not 'digits'" in bad.output and "drop --embedding" in bad.output
    assert not (digits_run / "export" / "embedding.npy").exists()


def test_guidance_batch_1_exports_a_one_row_transformer_that_draws_the_same_image(digits_run: Path, tmp_path: Path):
    """``export --guidance-batch 1``: the transformer graph takes one row (the host calls it for each half of the
    guidance batch), passes export parity, compiles wholly to the HTP, and the pipeline on its CPU Q/DQ graphs
    draws what the PyTorch student draws; a Gemma run refuses the option in one line."""
    import shutil

    from fraqat_deploy.quality.sources import exported_components, onnx_cpu_outputs

    run = tmp_path / "g1"
    shutil.copytree(digits_run, run, ignore=shutil.ignore_patterns("export", "compile"))
    exported = runner.invoke(app, ["export", "digits", "--run", str(run), "--guidance-batch", "1"])
    assert exported.exit_code == 0, exported.output
    manifest = json.loads((run / "export" / "export.json").read_text())
    shapes = manifest["components"]["transformer"]["input_shapes"]
    assert shapes["latent"][0] == 1 and shapes["prompt_embeds"][0] == 1, shapes
    compiled = runner.invoke(app, ["compile", "digits", "--run", str(run), "--device", "s25u", "--component",
                                   "transformer"])
    assert compiled.exit_code == 0, compiled.output
    trained = load_trained(run)
    pairs = [("a handwritten digit seven", 5)]
    image = onnx_cpu_outputs(trained, exported_components(run), pairs)[0].numpy()
    ref = trained.adapter.generate(trained.fp, [pairs[0][0]], seed=5, student=trained.student)[0].numpy()
    assert np.abs(image - ref).mean() < 0.01
    bad = runner.invoke(app, ["export", "digits", "--run", str(run), "--guidance-batch", "3"])
    assert bad.exit_code != 0 and "--guidance-batch" in bad.output and len(bad.output.strip().splitlines()) == 1
