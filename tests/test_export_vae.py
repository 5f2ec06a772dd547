"""Sana's real VAE decoder form (DC-AE: ResBlocks, multi-scale linear-attention blocks, *interpolate* upsampling)
at toy widths: the embedded digits model upsamples by pixel shuffle, so these paths are covered here.

Found at real size: the Q/DQ pass stored a Resize's scales [1, 1, 2, 2] as 16-bit codes behind a DequantizeLinear;
they read [1.0000153, 1.0000153, 2, 2], so nearest/floor sampling took channel c from channel c - 1 (export parity
37-44 mean 8-bit steps), and the HTP refused the Resize and everything downstream of it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from fraqat_deploy.export import export_component
from fraqat_deploy.models.base import Component
from fraqat_deploy.models.sana_graphs import VaeDecoderGraph

#: the dc-ae-f32c32-sana-1.0 decoder's structure (benchmarks/configs/dcae_f32c32.json) at toy widths and depths
TOY_DCAE = {
    "in_channels": 3, "latent_channels": 8, "attention_head_dim": 8,
    "encoder_block_types": ["ResBlock", "ResBlock", "EfficientViTBlock"],
    "decoder_block_types": ["ResBlock", "ResBlock", "EfficientViTBlock"],
    "encoder_block_out_channels": [8, 16, 32], "decoder_block_out_channels": [8, 16, 32],
    "encoder_layers_per_block": [1, 1, 1], "decoder_layers_per_block": [1, 1, 1],
    "encoder_qkv_multiscales": [[], [], [5]], "decoder_qkv_multiscales": [[], [], [5]],
    "decoder_norm_types": "rms_norm", "decoder_act_fns": "silu",
    "upsample_block_type": "interpolate", "downsample_block_type": "Conv", "scaling_factor": 0.41407,
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    from diffusers import AutoencoderDC

    torch.manual_seed(0)
    vae = AutoencoderDC(**TOY_DCAE).eval()
    g = torch.Generator().manual_seed(1)
    latents = [(torch.randn(1, 8, 4, 4, generator=g),) for _ in range(4)]  # 16 px images: 4x upsampling
    out = tmp_path_factory.mktemp("vae")
    record = export_component(Component("vae_decoder", VaeDecoderGraph(vae), ["latent"], ["image"], latents), out)
    return out, record


def test_interpolate_upsampling_keeps_exact_scales_and_parity(exported):
    out, record = exported
    model = onnx.load(str(out / record["onnx"]))
    inits = {i.name: i for i in model.graph.initializer}
    resizes = [n for n in model.graph.node if n.op_type == "Resize"]
    assert resizes, "the toy decoder must upsample by interpolation"
    for node in resizes:
        assert node.input[2] in inits, f"{node.name}: scales must stay a float initializer, got {node.input[2]}"
        np.testing.assert_array_equal(numpy_helper.to_array(inits[node.input[2]]), [1, 1, 2, 2])
    image = record["parity"]["image"]
    assert image["passed"], image
    assert image["mean_steps"] < 1.0, image


def test_the_decoder_compiles_all_on_the_htp_within_parity(exported, tmp_path: Path):
    from fraqat_deploy.compile.local import compile_onnx, htp_parity
    from fraqat_deploy.export import load_inputs

    out, record = exported
    # compile_onnx refuses any CPU fallback beyond the graph's boundary conversions
    compiled = compile_onnx(out / record["onnx"], tmp_path, "s25u")
    assert not compiled.get("fallback"), compiled.get("fallback")
    parity = htp_parity(tmp_path / "vae_decoder_ctx.onnx", out / record["onnx"], load_inputs(out / record["inputs"]))
    assert parity["passed"], parity["outputs"]


def test_the_text_encoder_graph_at_sana_length_has_no_trilu(tmp_path: Path):
    """Sana's text encoder runs on 300 tokens: a causal mask made with torch.tril exported as Trilu (the exporter
    folds it only for small masks), which the HTP does not run; the real-size compile stopped on it. The mask is a
    constant of the graph at any length."""
    from transformers import Gemma2Config, Gemma2Model

    from fraqat_deploy.export.graph import export_float
    from fraqat_deploy.models.sana_graphs import TextEncoderGraph

    torch.manual_seed(0)
    encoder = Gemma2Model(Gemma2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                                       max_position_embeddings=512, attn_implementation="eager")).eval()
    graph = TextEncoderGraph(encoder)
    length = 300
    ids = torch.randint(1, 64, (1, length), generator=torch.Generator().manual_seed(1))
    mask = (torch.arange(length) < 40).long()[None]
    model = export_float(Component("text_encoder", graph, ["input_ids", "attention_mask"], ["prompt_embeds"],
                                   [(ids, mask)]), tmp_path / "te.float.onnx")
    ops = {n.op_type for n in model.graph.node}
    assert "Trilu" not in ops, sorted(ops)
    from fraqat_deploy.compile.htp import cpu_session

    got = cpu_session(tmp_path / "te.float.onnx").run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    with torch.no_grad():
        ref = graph(ids, mask).numpy()
    np.testing.assert_allclose(got[0], ref, atol=1e-4)
