"""The FraQAT method: exact grids, straight-through gradients, calibration, policies, freeze and state."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from fraqat_deploy.quant import (
    ActivationEncoding,
    LearnedEncoding,
    QuantConv2d,
    QuantLinear,
    QuantPolicy,
    RangeObserver,
    calibrate,
    fake_quant_activation,
    fake_quant_weight,
    fractional_grid,
    freeze,
    load_quant_state,
    prepare,
    quant_layers,
    quant_state,
    quantize_weight,
    set_trainable,
    set_weight_bits,
)
from fraqat_deploy.quant.activation import quantization_mse


@pytest.mark.parametrize(
    "bits, narrow, wide",
    [
        (8, (-128, 127), (0, 255)),
        (7, (-64, 63), (0, 127)),
        (6, (-32, 31), (0, 63)),
        (5.5, (-22, 21), (0, 44)),
        (5, (-16, 15), (0, 31)),
        (4.75, (-13, 12), (0, 25)),
        (4.5, (-11, 10), (0, 21)),
        (4.25, (-9, 8), (0, 18)),
        (4, (-8, 7), (0, 15)),
        (2, (-2, 1), (0, 3)),
    ],
)
def test_fractional_grids(bits, narrow, wide):
    assert fractional_grid(bits, "narrow") == narrow
    assert fractional_grid(bits, "wide") == wide


@pytest.mark.parametrize("bits", [1.99, 16.01, float("nan")])
def test_bits_out_of_range(bits):
    with pytest.raises(ValueError, match=r"outside \[2, 16\]"):
        fractional_grid(bits)


@pytest.mark.parametrize(
    "bits, used", [(8, (-127, 127)), (6, (-31, 31)), (5.5, (-22, 21)), (4.75, (-12, 12)), (4.25, (-9, 8)), (4, (-7, 7))]
)
def test_narrow_codes_on_the_grid(bits, used):
    # max|W| maps to +-(2^(b-1) - 1): symmetric weights reach -qmin only when that rounds past it (5.5, 4.25)
    w = torch.linspace(-1.0, 1.0, 4001).reshape(1, -1)
    q, scale, offset = quantize_weight(w, bits, "narrow")
    assert torch.equal(q.unique(), torch.arange(used[0], used[1] + 1, dtype=q.dtype))
    assert float(scale) == pytest.approx(1.0 / (2 ** (bits - 1) - 1), rel=1e-6)
    assert float(offset.abs().max()) == 0.0
    assert torch.allclose(fake_quant_weight(w, bits), q * scale)


def test_paper_example_5_5_bits():
    # max|W| = 2.0 at 5.5 bits: S = 2 / (2^4.5 - 1); the top weight rounds to 22 and is clamped to 21
    w = torch.tensor([[2.0, -2.0, 0.5, 0.0]])
    q, scale, _ = quantize_weight(w, 5.5)
    s = 2.0 / (2**4.5 - 1)
    assert float(scale) == pytest.approx(s, rel=1e-6)
    assert q.tolist() == [[21.0, -22.0, round(0.5 / s), 0.0]]


@pytest.mark.parametrize("bits", [8, 5.5, 4.75, 4])
def test_wide_range(bits):
    w = torch.linspace(-0.3, 1.7, 2001).reshape(1, -1)
    q, scale, offset = quantize_weight(w, bits, "wide")
    _, qmax = fractional_grid(bits, "wide")
    assert float(offset) == pytest.approx(-0.3)
    assert float(scale) == pytest.approx(2.0 / 2**bits, rel=1e-6)
    assert int(q.min()) == 0 and int(q.max()) == qmax
    assert torch.allclose(fake_quant_weight(w, bits, "wide"), q * scale + offset)
    err = (fake_quant_weight(w, bits, "wide") - w).abs().max()
    # the paper's wide formula maps w_max to 2^b, past the grid: the top weight is clamped to qmax
    assert float(err) == pytest.approx((2**bits - qmax) * float(scale), rel=1e-4)


def test_per_channel_scales():
    w = torch.stack([torch.linspace(-1, 1, 9), torch.linspace(-4, 4, 9)])
    q, scale, _ = quantize_weight(w, 4, "narrow", "channel")
    assert scale.shape == (2, 1)
    assert scale.flatten().tolist() == pytest.approx([1 / 7, 4 / 7])
    assert torch.equal(q[0], q[1])  # same shape of values, its own scale per row


def test_weight_straight_through_gradient():
    w = torch.randn(8, 16, generator=torch.Generator().manual_seed(0), requires_grad=True)
    upstream = torch.randn(8, 16, generator=torch.Generator().manual_seed(1))
    (fake_quant_weight(w, 4.5) * upstream).sum().backward()
    assert torch.equal(w.grad, upstream)


def test_activation_encoding_matches_onnx_arithmetic():
    enc = ActivationEncoding.from_range(-1.0, 3.0, bits=8)
    assert enc.scale == pytest.approx(4.0 / 255)
    assert enc.zero_point == round(1.0 / enc.scale)
    x = torch.linspace(-2, 4, 1001)
    scale = torch.tensor(enc.scale, dtype=torch.float32)
    q = torch.clamp(torch.round(x / scale) + enc.zero_point, 0, 255)
    assert torch.equal(fake_quant_activation(x, enc), (q - enc.zero_point) * scale)
    assert fake_quant_activation(torch.tensor([0.0]), enc).item() == 0.0  # zero is exact
    assert ActivationEncoding.from_dict(json.loads(json.dumps(enc.to_dict()))) == enc


def test_activation_range_always_holds_zero_and_16_bits():
    enc = ActivationEncoding.from_range(0.5, 2.0, bits=16)
    assert enc.zero_point == 0 and enc.qmax == 65535
    assert enc.range[1] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="8 or 16"):
        ActivationEncoding.from_range(0, 1, bits=4)


def test_activation_clipped_ste():
    enc = ActivationEncoding.from_range(-1.0, 1.0)
    x = torch.tensor([-3.0, -0.5, 0.0, 0.7, 2.0], requires_grad=True)
    fake_quant_activation(x, enc).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_calibration_methods():
    obs = RangeObserver()
    gen = torch.Generator().manual_seed(0)
    samples = [torch.randn(1000, generator=gen) * 2 + 1 for _ in range(10)]
    samples[3][0] = 50.0  # an outlier
    for s in samples:
        obs.observe(s)
    allx = torch.cat(samples).double()
    lo, hi = obs.range("meanstd")
    assert lo == pytest.approx(float(allx.mean() - 3 * allx.std(unbiased=False)), rel=1e-6)
    assert hi == pytest.approx(float(allx.mean() + 3 * allx.std(unbiased=False)), rel=1e-6)
    assert obs.range("minmax") == (pytest.approx(float(allx.min())), 50.0)
    lo, hi = obs.range("percentile")  # 99.99% of the values: the outlier falls outside
    assert float(allx.min()) <= lo < 1 < hi < 50.0
    errors = {m: quantization_mse(allx.float(), obs.encoding(m, 8)) for m in ("minmax", "meanstd", "percentile",
                                                                            "mse")}
    assert errors["mse"] <= min(errors.values()) * 1.05  # the search's error model is an estimate
    heavy = RangeObserver()  # a heavy-tailed tensor: clipping the tails pays
    heavy.observe(torch.randn(20000, generator=gen) ** 3)
    mse_of = lambda m: quantization_mse(heavy.sample, heavy.encoding(m, 8))  # noqa: E731
    assert mse_of("mse") <= min(mse_of(m) for m in ("minmax", "meanstd", "percentile")) * 1.01
    assert mse_of("meanstd") > 2 * mse_of("mse")  # mean +- 3 std clips away what costs most
    assert obs.range("learned") == obs.range("mse")  # learned ranges start from the MSE search
    with pytest.raises(ValueError, match="mse, minmax, percentile, meanstd, learned"):
        obs.range("histogram")  # type: ignore[arg-type]


def test_observer_sample_is_uniform_and_bounded():
    obs = RangeObserver(sample_size=1000)
    for i in range(20):
        obs.observe(torch.full((500,), float(i)))
    assert obs.sample.numel() == 1000 and obs.count == 10_000
    counts = torch.bincount(obs.sample.long(), minlength=20).float()
    assert counts.min() > 20 and counts.max() < 80  # every call equally represented (50 expected)


def test_learned_encoding_matches_qdq_and_learns():
    enc = ActivationEncoding.from_range(-1.0, 2.0)
    learned = LearnedEncoding(enc)
    x = (torch.randn(4000, generator=torch.Generator().manual_seed(0)) * 1.5).requires_grad_(True)
    y = learned(x)
    exported = learned.encoding()
    assert exported.zero_point == enc.zero_point and exported.scale == pytest.approx(enc.scale, rel=1e-6)
    assert torch.equal(y, fake_quant_activation(x, exported))  # what export writes is what trained
    (y - x.detach()).square().mean().backward()
    lo, hi = exported.range
    far_out = (x.detach() < lo - exported.scale) | (x.detach() > hi + exported.scale)
    assert far_out.any() and not x.grad[far_out].any() and x.grad[~far_out].any()  # clipped STE
    assert learned.log_scale.grad < 0  # values clipped on both sides: the range should grow
    opt = torch.optim.Adam(learned.parameters(), lr=0.05)
    for _ in range(30):
        opt.zero_grad()
        (learned(x.detach()) - x.detach()).square().mean().backward()
        opt.step()
        learned.clamp_()
    after = learned.encoding()
    assert after.range[1] - after.range[0] > 3.0  # wider than the too-narrow start
    assert torch.equal(learned(x.detach()), fake_quant_activation(x.detach(), after))


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.attn = nn.Linear(6, 8)
        self.ff = nn.Sequential(nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 3, padding=1, groups=8))
        self.proj_out = nn.Linear(8, 4)

    def forward(self, x):
        h = self.attn(x)  # (B, 4, 4, 8)
        h = self.ff(h.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.proj_out(torch.relu(h))


def _calibrated(policy):
    model = Tiny()
    prepare(model, policy)
    x = torch.randn(4, 4, 4, 6, generator=torch.Generator().manual_seed(2))
    calibrate(model, lambda: model(x), policy.calibration)
    return model, x


def test_prepare_selects_targets_and_keeps_state_dict_keys():
    fp_keys = set(Tiny().state_dict())
    model = Tiny()
    prepared = prepare(model, QuantPolicy(targets=("linear", "conv1x1"), act16=("proj_out",)))
    assert prepared.layers == ["attn", "ff.0", "proj_out"]
    assert isinstance(model.attn, QuantLinear) and isinstance(model.ff[0], QuantConv2d)
    assert type(model.ff[1]) is nn.Conv2d  # depthwise 3x3 is not a pointwise conv
    assert set(model.state_dict()) == fp_keys
    assert model.proj_out.act_bits == 16 and model.attn.act_bits == 8
    everything = Tiny()
    assert len(prepare(everything, QuantPolicy(targets=("linear", "conv"))).layers) == 4
    excluded = Tiny()
    assert prepare(excluded, QuantPolicy(exclude=("proj_*",))).layers == ["attn"]


def test_policy_errors_list_allowed_values():
    with pytest.raises(ValueError, match="linear, conv1x1, conv"):
        QuantPolicy(targets=("embedding",))
    with pytest.raises(ValueError, match="tensor, channel"):
        QuantPolicy(granularity="group")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="selects no layer"):
        prepare(Tiny(), QuantPolicy(exclude=("*",)))


def test_quantized_forward_equals_manual_w4a8():
    policy = QuantPolicy(targets=("linear",), act16=("proj_out",))
    model, x = _calibrated(policy)
    set_weight_bits(model, 4)
    layer = model.attn
    enc = layer.act_encoding
    assert enc is not None and enc.bits == 8 and model.proj_out.act_encoding.bits == 16
    q, scale, _ = quantize_weight(layer.weight, 4)
    assert q.abs().max() <= 8
    out_enc = layer.out_encoding
    assert out_enc is not None and out_enc.bits == 8 and model.proj_out.out_encoding.bits == 16
    pre = nn.functional.linear(fake_quant_activation(x, enc), q * scale, layer.bias)
    expected = fake_quant_activation(pre, out_enc)
    assert torch.equal(layer(x), expected)
    assert len(torch.unique(layer(x))) <= 256  # the output is on an 8-bit grid too: A8 throughout


def test_set_trainable_selective():
    model = Tiny()
    prepare(model, QuantPolicy(targets=("linear", "conv1x1")))
    n = set_trainable(model, ("ff.*",))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"ff.0.weight", "ff.0.bias", "ff.1.weight", "ff.1.bias"}
    assert n == sum(p.numel() for p in model.ff.parameters())
    assert isinstance(model.attn, QuantLinear)  # frozen but still quantized
    with pytest.raises(ValueError, match="matched no parameter"):
        set_trainable(model, ("nothing.*",))


def test_quant_state_round_trip_and_freeze():
    policy = QuantPolicy(targets=("linear", "conv1x1"), granularity="channel", act16=("proj_out",))
    model, x = _calibrated(policy)
    set_weight_bits(model, 4.25)
    state = json.loads(json.dumps(quant_state(model, policy)))
    assert state["layers"]["attn"]["weight_bits"] == 4.25
    assert len(state["layers"]["attn"]["weight_scale"]) == 8  # per output channel
    other = Tiny()
    other.load_state_dict(model.state_dict())
    prepare(other, QuantPolicy.from_dict(state["policy"]))
    load_quant_state(other, state)
    assert torch.equal(other(x), model(x))
    before = model(x)
    freeze(model)
    layer = quant_layers(model)["attn"]
    assert layer.mode == "frozen" and not layer.weight.requires_grad
    assert torch.equal(model(x), before)
    codes, _, _ = layer.weight_codes()
    assert codes.dtype == torch.int32 and int(codes.min()) >= -9 and int(codes.max()) <= 8
    # frozen codes are held as int8 (a quarter of a float copy), exactly the codes the float grid gave
    assert layer.frozen[0].dtype == torch.int8
    assert torch.equal(layer.frozen[0].to(torch.int32), codes)
    with pytest.raises(RuntimeError, match="frozen"):
        set_weight_bits(model, 4)


def test_code_dtype_is_the_smallest_that_holds_the_grid():
    from fraqat_deploy.quant.grid import code_dtype, fractional_grid

    assert code_dtype(*fractional_grid(8, "narrow")) == torch.int8
    assert code_dtype(*fractional_grid(4.25, "narrow")) == torch.int8
    assert code_dtype(*fractional_grid(8, "wide")) == torch.uint8
    assert code_dtype(*fractional_grid(16, "narrow")) == torch.int16
    assert code_dtype(*fractional_grid(16, "wide")) == torch.int32
