"""Local compile for the S25 Ultra's HTP (soc_model 69), HTP parity and the first-divergence search.

Everything runs for real: onnxruntime-qnn's HTP graph preparer writes the context binaries and the host HTP
simulator runs them. The models are built here, tiny, so the whole file takes seconds:
- ``mlp``: a torch MLP exported with the dynamo exporter (opset 21) and quantized by ONNX Runtime's QNN helper
  (uint16 activations, uint8 weights);
- ``int4``: an int4 per-channel DequantizeLinear(axis=1) -> MatMul with uint16 activations;
- ``det``: a quantized MatMul followed by ``Det``, which the QNN EP does not support;
- ``rms_recip`` / ``rms_div``: an RMSNorm written as Sqrt -> Reciprocal -> Mul (the HTP departs from the CPU at
  the Reciprocal, as docs/htp-notes.md records in Sana) and as Sqrt -> Div (it does not).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fraqat_deploy.compile import (
    compile_cached,
    compile_onnx,
    debug,
    first_divergence,
    format_divergence,
    htp_parity,
    local,
    parity_verdict,
    qnn_versions,
)
from fraqat_deploy.errors import ConfigError, InputError
from fraqat_deploy.targets import get_target

# The QNN wheel exists for x86_64 / aarch64 Linux and Windows only (fraqat_deploy.compile imports it lazily).
pytest.importorskip("onnxruntime_qnn")

S25U = get_target("s25u")


# ---------------------------------------------------------------- fixtures


def _save(model: onnx.ModelProto, path: Path) -> Path:
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def _quantize_for_qnn(float_path: Path, out_path: Path, input_shape: tuple[int, ...]) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.RandomState(0)
            self.batches = iter([{"x": rng.randn(*input_shape).astype(np.float32)} for _ in range(8)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    config = get_qnn_qdq_config(
        str(float_path), Reader(), activation_type=QuantType.QUInt16, weight_type=QuantType.QUInt8
    )
    quantize(str(float_path), str(out_path), config)
    return out_path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "mlp": _mlp(root),
        "int4": _int4(root),
        "det": _det(root),
        "rms_recip": _rms(root, reciprocal=True),
        "rms_div": _rms(root, reciprocal=False),
    }


def _mlp(root: Path) -> Path:
    import torch

    class MLP(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Linear(16, 32)
            self.b = torch.nn.Linear(32, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(torch.nn.functional.gelu(self.a(x)))

    torch.manual_seed(0)
    float_path = root / "mlp_fp.onnx"
    torch.onnx.export(
        MLP().eval(),
        (torch.randn(1, 4, 16),),
        str(float_path),
        dynamo=True,
        opset_version=21,
        input_names=["x"],
        output_names=["y"],
    )
    return _quantize_for_qnn(float_path, root / "mlp.onnx", (1, 4, 16))


def _int4(root: Path) -> Path:
    k, n = 16, 8
    rng = np.random.RandomState(0)
    weights = rng.randint(-8, 8, size=(k, n))
    scales = (rng.rand(n) * 0.05 + 0.01).astype(np.float32)
    inits = [
        helper.make_tensor("w_q", TensorProto.INT4, [k, n], weights.flatten().tolist()),
        numpy_helper.from_array(scales, "w_scale"),
        helper.make_tensor("w_zp", TensorProto.INT4, [n], [0] * n),
        numpy_helper.from_array(np.array(1e-5, np.float32), "x_scale"),
        helper.make_tensor("x_zp", TensorProto.UINT16, [], [32768]),
        numpy_helper.from_array(np.array(1e-4, np.float32), "y_scale"),
        helper.make_tensor("y_zp", TensorProto.UINT16, [], [32768]),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["xq"], name="q_in"),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xd"], name="dq_in"),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["wd"], name="dq_w", axis=1),
        helper.make_node("MatMul", ["xd", "wd"], ["yf"], name="matmul"),
        helper.make_node("QuantizeLinear", ["yf", "y_scale", "y_zp"], ["yq"], name="q_out"),
        helper.make_node("DequantizeLinear", ["yq", "y_scale", "y_zp"], ["y"], name="dq_out"),
    ]
    graph = helper.make_graph(
        nodes,
        "int4_matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, n])],
        inits,
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), root / "int4.onnx")


def _det(root: Path) -> Path:
    rng = np.random.RandomState(1)
    inits = [
        numpy_helper.from_array(rng.randint(-100, 100, size=(4, 4)).astype(np.int8), "w_q"),
        numpy_helper.from_array(np.array(0.01, np.float32), "w_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "w_zp"),
        numpy_helper.from_array(np.array(1e-4, np.float32), "s"),
        helper.make_tensor("zp", TensorProto.UINT16, [], [32768]),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"], name="q_in"),
        helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"], name="dq_in"),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["wd"], name="dq_w"),
        helper.make_node("MatMul", ["xd", "wd"], ["m"], name="matmul"),
        helper.make_node("QuantizeLinear", ["m", "s", "zp"], ["mq"], name="q_m"),
        helper.make_node("DequantizeLinear", ["mq", "s", "zp"], ["md"], name="dq_m"),
        helper.make_node("Det", ["md"], ["d"], name="odd_det"),
        helper.make_node("QuantizeLinear", ["d", "s", "zp"], ["dq"], name="q_out"),
        helper.make_node("DequantizeLinear", ["dq", "s", "zp"], ["y"], name="dq_out"),
    ]
    graph = helper.make_graph(
        nodes,
        "det",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        inits,
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), root / "det.onnx")


def _rms(root: Path, *, reciprocal: bool) -> Path:
    rng = np.random.RandomState(0)
    inits = [
        numpy_helper.from_array((rng.randn(16, 32) * 0.05).astype(np.float32), "w1"),
        numpy_helper.from_array((rng.randn(32) * 0.05).astype(np.float32), "b1"),
        numpy_helper.from_array(np.array([-1], np.int64), "axes"),
        numpy_helper.from_array(np.array(1e-6, np.float32), "eps"),
        numpy_helper.from_array((rng.rand(32) + 0.5).astype(np.float32), "gamma"),
        numpy_helper.from_array((rng.randn(32, 8) * 0.2).astype(np.float32), "w2"),
        numpy_helper.from_array((rng.randn(8) * 0.05).astype(np.float32), "b2"),
    ]
    norm = (
        [
            helper.make_node("Reciprocal", ["rms"], ["inv"], name="node_reciprocal"),
            helper.make_node("Mul", ["h", "inv"], ["n"], name="node_normalize"),
        ]
        if reciprocal
        else [helper.make_node("Div", ["h", "rms"], ["n"], name="node_normalize")]
    )
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"], name="node_matmul_1"),
        helper.make_node("Add", ["h0", "b1"], ["h"], name="node_bias_1"),
        helper.make_node("Mul", ["h", "h"], ["sq"], name="node_square"),
        helper.make_node("ReduceMean", ["sq", "axes"], ["ms"], name="node_mean", keepdims=1),
        helper.make_node("Add", ["ms", "eps"], ["mse"], name="node_eps"),
        helper.make_node("Sqrt", ["mse"], ["rms"], name="node_sqrt"),
        *norm,
        helper.make_node("Mul", ["n", "gamma"], ["g"], name="node_gamma"),
        helper.make_node("MatMul", ["g", "w2"], ["y0"], name="node_matmul_2"),
        helper.make_node("Add", ["y0", "b2"], ["y"], name="node_bias_2"),
    ]
    graph = helper.make_graph(
        nodes,
        "rmsnorm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8])],
        inits,
    )
    name = "rms_recip" if reciprocal else "rms_div"
    float_path = _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), root / f"{name}_fp.onnx")
    return _quantize_for_qnn(float_path, root / f"{name}.onnx", (1, 4, 16))


def _inputs(shape: tuple[int, ...] = (1, 4, 16), seed: int = 0, scale: float = 1.0) -> dict[str, np.ndarray]:
    return {"x": (np.random.RandomState(seed).randn(*shape) * scale).astype(np.float32)}


# ---------------------------------------------------------------- compile


def test_compile_writes_ctx_and_bin_for_soc_69(models: dict[str, Path], tmp_path: Path) -> None:
    record = compile_onnx(models["mlp"], tmp_path, S25U)
    ctx = tmp_path / "mlp_ctx.onnx"
    assert record["ctx_onnx"] == ctx.name and ctx.is_file()
    assert record["context_binaries"] == ["mlp_ctx_qnn.bin"]
    assert record["context_binary_bytes"] == (tmp_path / "mlp_ctx_qnn.bin").stat().st_size > 0
    assert (record["target"], record["soc"], record["soc_model"]) == ("s25u", "SM8750", 69)
    assert record["options"]["provider_options"]["soc_model"] == "69"
    assert record["versions"]["onnxruntime_qnn"] and record["versions"]["qnn_sdk"]
    # The EPContext node points at the binary beside it (embed mode 0).
    ctx_model = onnx.load(str(ctx))
    ep_nodes = [n for n in ctx_model.graph.node if n.op_type == "EPContext"]
    assert len(ep_nodes) == 1
    attrs = {a.name: helper.get_attribute_value(a) for a in ep_nodes[0].attribute}
    assert attrs["embed_mode"] == 0 and attrs["ep_cache_context"] == b"mlp_ctx_qnn.bin"
    # Nothing left in out_dir but the outputs (no temporary folder).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlp_ctx.onnx", "mlp_ctx_qnn.bin"]


def test_coverage_counts_boundary_apart(models: dict[str, Path], tmp_path: Path) -> None:
    record = compile_onnx(models["mlp"], tmp_path, S25U)
    nodes = len(onnx.load(str(models["mlp"])).graph.node)
    cov = record["coverage"]
    assert cov["nodes"] == nodes
    # By design the float -> quantized conversion of the input and the way back at the output run on the CPU.
    assert cov["cpu_boundary"] == 2 and {b["op_type"] for b in record["boundary"]} == set(local.QDQ_OPS)
    assert cov["cpu_fallback"] == 0 and record["fallback"] == []
    assert cov["htp"] == nodes - 2 and cov["htp_fraction"] == 1.0
    assert cov["htp_op_types"]["MatMul"] == 2 and cov["htp_op_types"]["Gelu"] == 1
    weights = record["weights"]
    assert weights["elements"] == 16 * 32 + 32 * 8 and weights["quantized_elements"] == {"uint8": 768}
    assert weights["bytes_per_weight"] == pytest.approx(record["context_binary_bytes"] / 768)


def test_the_cpu_reference_is_the_exact_qdq_arithmetic(models: dict[str, Path]) -> None:
    """ONNX Runtime 1.32 fuses the int4 DQ -> MatMul into MatMulNBits rounding activations to int8 (~10 steps off);
    the reference session must compute what the Q/DQ graph says, step for step."""
    from fraqat_deploy.compile import cpu_session

    model = onnx.load(str(models["int4"]))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    x = _inputs(scale=0.3)["x"]
    xq = np.clip(np.round(x / 1e-5), -32768, 32767) * 1e-5
    y = xq.astype(np.float64) @ (inits["w_q"].astype(np.float64) * inits["w_scale"])
    expected = np.clip(np.round(y / 1e-4), -32768, 32767) * 1e-4
    got = cpu_session(models["int4"]).run(None, {"x": x})[0]
    assert np.abs(got - expected).max() <= 1e-4 * 1.01  # at most one step, from float32 rounding at a tie


def test_int4_per_channel_runs_entirely_on_the_htp(models: dict[str, Path], tmp_path: Path) -> None:
    record = compile_onnx(models["int4"], tmp_path, S25U, offload_io_quantization=False)
    assert record["coverage"]["htp"] == record["coverage"]["nodes"] == 6
    assert record["boundary"] == [] and record["fallback"] == []
    assert [n.op_type for n in onnx.load(str(tmp_path / "int4_ctx.onnx")).graph.node] == ["EPContext"]
    assert record["weights"]["quantized_elements"] == {"int4": 16 * 8}
    parity = htp_parity(tmp_path / "int4_ctx.onnx", models["int4"], _inputs(scale=0.3))
    assert parity["passed"], parity


def test_cache_reuses_identical_runs(models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = compile_cached(models["mlp"], tmp_path, "s25u")
    assert first["cached"] is False
    stamps = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    stored = json.loads((tmp_path / "compile.json").read_text())
    assert stored["components"]["mlp"]["cache_key"] == first["cache_key"]

    def no_compiler(*args: object, **kwargs: object) -> None:
        raise AssertionError("the compiler ran although the inputs did not change")

    monkeypatch.setattr(local, "compile_onnx", no_compiler)
    second = compile_cached(models["mlp"], tmp_path, "s25u")
    assert second["cached"] is True
    assert second["cache_key"] == first["cache_key"] and second["coverage"] == first["coverage"]
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == stamps
    monkeypatch.undo()

    # Another option, or a missing binary, is a new compile.
    assert compile_cached(models["mlp"], tmp_path, "s25u", offload_io_quantization=False)["cached"] is False
    (tmp_path / "mlp_ctx_qnn.bin").unlink()
    again = compile_cached(models["mlp"], tmp_path, "s25u", offload_io_quantization=False)
    assert again["cached"] is False and (tmp_path / "mlp_ctx_qnn.bin").is_file()
    # So is a binary damaged in place (same size, other bytes).
    binary = tmp_path / "mlp_ctx_qnn.bin"
    data = bytearray(binary.read_bytes())
    data[-100] ^= 0xFF
    binary.write_bytes(bytes(data))
    assert compile_cached(models["mlp"], tmp_path, "s25u", offload_io_quantization=False)["cached"] is False
    assert compile_cached(models["mlp"], tmp_path, "s25u", offload_io_quantization=False)["cached"] is True


def test_cache_key_follows_the_model_bytes(models: dict[str, Path], tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    model = onnx.load(str(models["int4"]))
    _save(model, src / "int4.onnx")
    out = tmp_path / "out"
    one = compile_cached(src / "int4.onnx", out, S25U)
    model.graph.initializer[3].CopyFrom(numpy_helper.from_array(np.array(2e-5, np.float32), "x_scale"))
    _save(model, src / "int4.onnx")
    two = compile_cached(src / "int4.onnx", out, S25U)
    assert two["cached"] is False and two["input_sha256"] != one["input_sha256"]


def test_unsupported_operator_is_named(models: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        compile_onnx(models["det"], tmp_path, S25U)
    assert "Det ('odd_det')" in info.value.message
    assert "--allow-cpu-fallback" in info.value.fix
    assert list(tmp_path.iterdir()) == []  # a failed compile leaves nothing behind
    with pytest.raises(ConfigError):
        compile_cached(models["det"], tmp_path, S25U)
    assert not (tmp_path / "compile.json").exists()


def test_allow_cpu_fallback_lists_the_operators(models: dict[str, Path], tmp_path: Path) -> None:
    record = compile_onnx(models["det"], tmp_path, S25U, allow_cpu_fallback=True)
    assert {"op_type": "Det", "name": "odd_det"} in record["fallback"]
    assert {b["name"] for b in record["boundary"]} == {"q_in", "dq_out"}
    cov = record["coverage"]
    assert cov["cpu_fallback"] == len(record["fallback"]) >= 1
    assert cov["htp"] >= 1 and cov["htp_op_types"].get("MatMul") == 1  # the MatMul still went to the HTP
    assert 0 < cov["htp_fraction"] < 1 and (tmp_path / "det_ctx_qnn.bin").is_file()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "missing"])
def test_corrupt_or_missing_onnx_is_an_input_error(damage: str, models: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    if damage == "garbage":
        bad.write_bytes(b"this is not a protobuf \x00\xff" * 10)
    elif damage == "truncated":
        data = models["mlp"].read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as info:
        compile_cached(bad, tmp_path / "out", S25U)
    assert info.value.fix and "export" in info.value.fix


def test_missing_external_data_is_an_input_error(models: dict[str, Path], tmp_path: Path) -> None:
    model = onnx.load(str(models["mlp"]))
    onnx.save(model, str(tmp_path / "ext.onnx"), save_as_external_data=True, location="ext.data", size_threshold=0)
    (tmp_path / "ext.data").unlink()
    with pytest.raises(InputError, match="external data"):
        compile_onnx(tmp_path / "ext.onnx", tmp_path / "out", S25U)


def test_external_data_model_compiles(models: dict[str, Path], tmp_path: Path) -> None:
    model = onnx.load(str(models["mlp"]))
    onnx.save(model, str(tmp_path / "ext.onnx"), save_as_external_data=True, location="ext.data", size_threshold=0)
    record = compile_cached(tmp_path / "ext.onnx", tmp_path / "out", S25U)
    assert record["coverage"]["cpu_fallback"] == 0 and record["context_binary_bytes"] > 0


# ---------------------------------------------------------------- HTP parity


def test_htp_parity_passes_on_the_qdq_mlp(models: dict[str, Path], tmp_path: Path) -> None:
    compile_cached(models["mlp"], tmp_path, S25U)
    result = htp_parity(tmp_path / "mlp_ctx.onnx", models["mlp"], _inputs())
    assert result["passed"] and result["target"] == "s25u" and result["soc_model"] == 69
    out = result["outputs"]["y"]
    assert out["passed"] and out["step"] and out["rel"] < 0.02 and out["shape"] == [1, 4, 8]


def test_htp_parity_catches_the_reciprocal_rmsnorm(models: dict[str, Path], tmp_path: Path) -> None:
    compile_cached(models["rms_recip"], tmp_path, S25U)
    result = htp_parity(tmp_path / "rms_recip_ctx.onnx", models["rms_recip"], _inputs())
    assert not result["passed"]
    assert "relative error" in result["outputs"]["y"]["why"]


def test_htp_parity_rejects_wrong_inputs_and_a_missing_binary(models: dict[str, Path], tmp_path: Path) -> None:
    compile_cached(models["mlp"], tmp_path, S25U)
    with pytest.raises(InputError, match="missing"):
        htp_parity(tmp_path / "mlp_ctx.onnx", models["mlp"], {"z": np.zeros((1, 4, 16), np.float32)})
    (tmp_path / "mlp_ctx_qnn.bin").unlink()
    with pytest.raises(InputError, match="context binary mlp_ctx_qnn.bin"):
        htp_parity(tmp_path / "mlp_ctx.onnx", models["mlp"], _inputs())


def test_parity_verdict_rules() -> None:
    base = {"finite": True, "step": 0.01, "ref_max_abs": 1.0}
    assert parity_verdict(base | {"max_abs": 0.02, "rel": 0.5})[0]  # within 2 steps, whatever the mean says
    assert parity_verdict(base | {"max_abs": 0.05, "rel": 0.01})[0]
    assert not parity_verdict(base | {"max_abs": 0.05, "rel": 0.03})[0]
    assert not parity_verdict(base | {"max_abs": 0.5, "rel": 0.01})[0]  # one wild element
    assert not parity_verdict(base | {"max_abs": 0.0, "rel": 0.0, "finite": False})[0]
    assert parity_verdict({"finite": True, "step": None, "ref_max_abs": 1.0, "max_abs": 0.01, "rel": 0.01})[0]


def test_qnn_versions() -> None:
    versions = qnn_versions()
    assert versions["onnxruntime"] and versions["onnxruntime_qnn"]
    assert versions["qnn_sdk"] and versions["qnn_build"] and versions["qnn_build"].startswith(versions["qnn_sdk"])


# ---------------------------------------------------------------- first divergence


def test_first_divergence_finds_the_reciprocal(models: dict[str, Path]) -> None:
    result = first_divergence(models["rms_recip"], _inputs(), S25U, batch=3)
    assert result["diverged"]
    assert (result["op_type"], result["node"]) == ("Reciprocal", "node_reciprocal")
    assert result["batches"] >= 2  # found across batches, in order
    # Everything before it agreed.
    assert all(t["rel"] <= 0.02 for t in result["tensors"][:-1])
    assert result["tensors"][-1]["tensor"] == result["tensor"]
    chain = "\n".join(result["chain"])
    assert "Reciprocal 'node_reciprocal'" in chain and "Sqrt 'node_sqrt'" in chain
    assert "used by Mul 'node_normalize'" in chain
    assert "first divergence" in "\n".join(format_divergence(result))


def test_first_divergence_on_a_clean_model_reports_none(models: dict[str, Path]) -> None:
    result = first_divergence(models["rms_div"], _inputs(), S25U, batch=4)
    assert not result["diverged"] and result["tensor"] is None and result["chain"] == []
    assert result["compared"] == result["candidates"] > 5
    assert "no tensor departs" in format_divergence(result)[-1]


def test_first_divergence_order_with_zero_tolerance(models: dict[str, Path]) -> None:
    result = first_divergence(models["mlp"], _inputs(), S25U, batch=2, rel_tol=0.0, min_steps=0.0)
    assert result["diverged"]
    # The first tensor that differs at all, after only tensors that are identical.
    assert result["tensors"][-1]["max_abs"] > 0
    assert all(t["max_abs"] == 0 for t in result["tensors"][:-1])
    graph = onnx.load(str(models["mlp"])).graph
    order = [o for n in graph.node for o in n.output]
    positions = [order.index(t["tensor"]) for t in result["tensors"]]
    assert positions == sorted(positions)


def test_first_divergence_splits_batches_qnn_cannot_finalise(
    models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = debug._run_batch
    sizes: list[int] = []

    def picky(model: onnx.ModelProto, probes: list[debug.Probe], *args: object, **kwargs: object) -> object:
        sizes.append(len(probes))
        if len(probes) > 2:
            raise RuntimeError("QNN graph finalize failed: 1002")
        return real(model, probes, *args, **kwargs)

    monkeypatch.setattr(debug, "_run_batch", picky)
    result = first_divergence(models["rms_recip"], _inputs(), S25U, batch=8)
    assert result["op_type"] == "Reciprocal" and max(sizes) == 8 and result["batches"] >= 3


def test_first_divergence_skips_a_tensor_qnn_cannot_expose(
    models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = debug._run_batch

    def no_sqrt(model: onnx.ModelProto, probes: list[debug.Probe], *args: object, **kwargs: object) -> object:
        if any(p.tensor.startswith("rms") for p in probes):
            raise RuntimeError("QNN graph finalize failed: 1002")
        return real(model, probes, *args, **kwargs)

    monkeypatch.setattr(debug, "_run_batch", no_sqrt)
    result = first_divergence(models["rms_recip"], _inputs(), S25U, batch=4)
    assert result["op_type"] == "Reciprocal"
    assert [s["tensor"] for s in result["skipped"]] == ["rms_DequantizeLinear_Output"]

    # When even the unmodified model does not build, that is the error, not every tensor skipped.
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("graph finalize failed")

    monkeypatch.setattr(debug, "_run_batch", broken)
    monkeypatch.setattr(debug, "htp_session", broken)
    with pytest.raises(ConfigError, match="does not build on the HTP simulator"):
        first_divergence(models["rms_recip"], _inputs(), S25U, batch=4)


def test_first_divergence_rejects_wrong_inputs(models: dict[str, Path]) -> None:
    with pytest.raises(InputError):
        first_divergence(models["mlp"], {"x": np.zeros((1, 4, 16), np.float32), "extra": np.zeros(1)}, S25U)
    with pytest.raises(InputError, match="do not run"):
        first_divergence(models["mlp"], {"x": np.zeros((2, 3), np.float32)}, S25U)


def test_unnamed_nodes_are_named_for_the_coverage(models: dict[str, Path], tmp_path: Path) -> None:
    model = onnx.load(str(models["det"]))
    for node in model.graph.node:
        node.name = ""
    src = _save(model, tmp_path / "anon.onnx")
    record = compile_onnx(src, tmp_path / "out", S25U, allow_cpu_fallback=True)
    assert {"op_type": "Det", "name": "Det_6"} in record["fallback"]
    assert record["coverage"]["htp"] + record["coverage"]["cpu_boundary"] + record["coverage"]["cpu_fallback"] == 9
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["anon_ctx.onnx", "anon_ctx_qnn.bin"]


# ---------------------------------------------------------------- sessions


def test_htp_session_writes_a_context_and_a_profile(models: dict[str, Path], tmp_path: Path) -> None:
    from fraqat_deploy.compile import cpu_session, htp_session

    ctx = tmp_path / "int4_ctx.onnx"
    htp_session(models["int4"], S25U, context={"enable": True, "file_path": ctx, "embed_mode": 0})
    assert ctx.is_file() and (tmp_path / "int4_ctx_qnn.bin").is_file()
    profile = tmp_path / "profile.csv"
    session = htp_session(ctx, S25U, allow_cpu_fallback=True, profiling=profile)
    x = _inputs(scale=0.3)
    htp_y = session.run(None, x)[0]
    del session  # QNN writes the profile when the session closes
    assert "Accelerator (execute) time (cycles)" in profile.read_text()
    np.testing.assert_allclose(htp_y, cpu_session(models["int4"]).run(None, x)[0], atol=3e-4)


def test_softmax_kl_sees_distributions_not_shifts() -> None:
    """The logits criterion: a constant added to a row changes no probability (KL 0); a change of ranking does."""
    from fraqat_deploy.compile.local import softmax_kl

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 50)).astype(np.float32)
    assert softmax_kl(logits, logits + 3.0) < 1e-9
    moved = logits.copy()
    moved[:, :5] += 2.0
    assert softmax_kl(logits, moved) > 0.01
    assert softmax_kl(logits, moved) != softmax_kl(moved, logits)  # KL is not symmetric: the CPU's comes first
