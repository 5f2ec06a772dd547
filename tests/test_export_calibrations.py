"""Export parity for the non-default activation calibrations (mse, learned): their trained 8-bit encodings are
narrower than, or moved away from, the min/max of the tensors they read, so the graph must convert into them
exactly and add the same biases as the reference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from fraqat_deploy.export import FLOOR_FACTOR, export_run, load_inputs
from fraqat_deploy.export.qdq import aligned
from fraqat_deploy.quant import ActivationEncoding
from fraqat_deploy.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module", params=["mse", "learned"])
def exported(request, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp(f"export-{request.param}") / "run"
    train(TrainConfig(model="sana", out=run, tiny=True, schedule="8:1,4:2", steps=12, n_train=32, n_val=8,
                      calib_samples=16, calibration=request.param), show_progress=False)
    export_run(run, components=["transformer"])  # raises when parity does not hold
    return run


def test_parity_is_within_the_reference_noise_floor(exported: Path):
    """What is left between graph and reference is the uint16 rounding of untrained tensors: within the noise
    floor the reference itself shows under that rounding (a flipped requantization or a bias the reference does
    not add is several times the floor)."""
    outputs = json.loads((exported / "export" / "parity.json").read_text())["components"]["transformer"]
    for name, m in outputs.items():
        assert m["passed"], (name, m)
        assert m["mean_steps"] <= FLOOR_FACTOR * m["floor_mean_steps"], (name, m)
        assert m["max_steps"] <= FLOOR_FACTOR * m["floor_max_steps"], (name, m)


def _quantize(x: np.ndarray, scale: float, zero_point: int, qmax: int) -> np.ndarray:
    return np.clip(np.round(x / np.float32(scale)) + zero_point, 0, qmax)


def test_conversions_into_trained_encodings_round_as_the_trained_encoding(exported: Path):
    """Every uint16 -> uint8 requantization in the graph gives, on the sample input, exactly the codes the
    trained 8-bit encoding gives the unrounded float tensor."""
    model = onnx.load(str(exported / "export" / "transformer.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    pairs = []  # (float tensor before the uint16 Q, the uint8 codes after the conversion, 8-bit encoding)
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or inits[node.input[2]].dtype != np.uint8:
            continue
        dq = producer.get(node.input[0])
        q16 = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q16 is None or q16.op_type != "QuantizeLinear" or inits[q16.input[2]].dtype != np.uint16:
            continue
        pairs.append((q16.input[0], node.output[0], float(inits[node.input[1]]), int(inits[node.input[2]])))
    assert len(pairs) >= 10, "the tiny Sana converts its 16-bit tensors into trained 8-bit inputs"
    wanted = list(dict.fromkeys(t for raw, codes, *_ in pairs for t in (raw, codes)))
    codes_out = {codes for _, codes, *_ in pairs}
    model.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.UINT8 if t in codes_out
                                                            else TensorProto.FLOAT, None) for t in wanted)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    values = dict(zip(wanted, session.run(wanted, load_inputs(exported / "export" / "transformer.inputs.npz")),
                      strict=True))
    for raw, codes, scale, zero_point in pairs:
        expected = _quantize(values[raw], scale, zero_point, 255)
        assert np.array_equal(values[codes].astype(np.float32), expected), raw


@pytest.mark.parametrize("seed", range(4))
def test_aligned_grid_requantizes_exactly(seed: int):
    """Q -> DQ on the aligned uint16 grid, then Q to the 8-bit target, equals Q to the target alone (clipping
    included) except at exact ties (a float32 value exactly halfway between two 8-bit points: Q rounds it to the
    even one, the 16-bit grid cannot know which that is); on the plain min/max grid of the same tensor it
    does not."""
    rng = np.random.default_rng(seed)
    lo, hi = -float(rng.uniform(0.5, 5)), float(rng.uniform(0.5, 5))
    # a target as a clipping calibration sets it: narrower than the tensor, off-centre
    target = ActivationEncoding.from_range(lo * rng.uniform(0.3, 1.0), hi * rng.uniform(0.3, 1.0), bits=8)
    x = rng.uniform(lo, hi, 200_000).astype(np.float32)
    x = np.concatenate([x, np.array([lo, hi, 1.5 * lo, 1.5 * hi], dtype=np.float32)])
    direct = _quantize(x, target.scale, target.zero_point, 255)

    def through(enc: ActivationEncoding) -> np.ndarray:
        q16 = _quantize(x, enc.scale, enc.zero_point, 65535)
        y = ((q16 - enc.zero_point) * np.float32(enc.scale)).astype(np.float32)
        return _quantize(y, target.scale, target.zero_point, 255)

    v = x / np.float32(target.scale)
    tie = v - np.floor(v) == 0.5

    enc = aligned(lo, hi, target)
    assert enc is not None and enc.bits == 16
    assert enc.range[0] <= lo and enc.range[1] >= hi * (1 - 1e-6)  # the tensor's other readers keep its range
    assert np.array_equal(through(enc)[~tie], direct[~tie])
    plain = through(ActivationEncoding.from_range(lo, hi, bits=16))
    assert not np.array_equal(plain[~tie], direct[~tie])


def test_aligned_gives_up_only_beyond_65535_target_steps():
    target = ActivationEncoding.from_range(-0.01, 0.01, bits=8)
    assert aligned(-1.0, 1.0, target) is not None
    assert aligned(-1000.0, 1000.0, target) is None
