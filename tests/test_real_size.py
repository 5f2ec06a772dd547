"""The real-size benchmark's pieces that do not need the real sizes: its configs are the real models (parameter
counts as published, built on the meta device: no memory), and its table states each target met or not."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def real_size():
    spec = importlib.util.spec_from_file_location("real_size", ROOT / "benchmarks" / "real_size.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["real_size"] = module
    spec.loader.exec_module(module)
    return module


def _params(module: torch.nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e9


def test_configs_are_the_published_model_sizes(real_size):
    from diffusers import AutoencoderDC, SanaTransformer2DModel
    from transformers import Gemma2Config, Gemma2ForCausalLM

    with torch.device("meta"):
        transformer = SanaTransformer2DModel(**real_size.load_config("sana600m_transformer"))
        llm = Gemma2ForCausalLM(Gemma2Config(**real_size.load_config("gemma2_2b")))
        vae = AutoencoderDC(**real_size.load_config("dcae_f32c32"))
    assert 0.58 < _params(transformer) < 0.62  # "Sana 600M" (592M)
    assert 2.55 < _params(llm) < 2.65  # Gemma-2 "2B": 2.61B with its 256k x 2304 embedding, tied head
    assert 0.30 < _params(vae) < 0.33  # DC-AE f32c32: 312M, encoder and decoder
    assert vae.spatial_compression_ratio * transformer.config.sample_size == 1024  # the 1024px model


def test_table_states_each_target(real_size):
    gib = 1 << 30
    stage = {"seconds": 100.0, "exit_code": 0, "timed_out": False}
    data = {"sana600m": {
        "transformer": {"int4": True, "fp32_weight_bytes": 2 * gib, "ptq": stage | {"peak_rss_bytes": 3 * gib},
                        "export": stage | {"peak_rss_bytes": 5 * gib, "files": {"transformer.onnx": 1000},
                                           "parity": {"velocity": {"mean_steps": 0.1, "max_steps": 1.0,
                                                                   "passed": True}}},
                        "compile": stage | {"peak_rss_bytes": gib, "compile_seconds": 90.0, "bytes_per_weight": 0.7,
                                            "context_binary_bytes": gib}},
        "vae_decoder": {"int4": False, "fp32_weight_bytes": gib,
                        "export": stage | {"peak_rss_bytes": 4 * gib, "exit_code": 1},
                        "compile": {"seconds": 60.0, "exit_code": None, "timed_out": True, "peak_rss_bytes": gib}},
    }}
    table = real_size.render_table(data)
    assert "export peak 2.50× fp32 weights" in table and ": met" in table
    assert "compiled 0.700 B/weight (INT4 target ≤ 0.6): NOT met" in table
    assert "compile finishes: met, 90 s" in table
    assert "failed (1)" in table and "export memory: not measured" in table
    assert "timed out" in table and "compile finishes: NOT met" in table


def test_a_model_of_two_graphs_gets_a_row_per_graph(real_size):
    gib = 1 << 30
    stage = {"seconds": 100.0, "exit_code": 0, "timed_out": False}
    logits = {"mean_steps": 0.5, "max_steps": 2.0, "passed": True}
    caches = {f"key_{i}": {"mean_steps": 0.1, "max_steps": 1.0 + i, "passed": True} for i in range(4)}
    graph = {"files": {}, "parity": caches | {"logits": logits}}  # saved with sorted keys: logits is not first
    data = {"gemma2b": {"llm": {
        "int4": True, "fp32_weight_bytes": 10 * gib, "note": "a note", "ptq": stage | {"peak_rss_bytes": gib},
        "export": stage | {"peak_rss_bytes": 12 * gib, "graphs": {
            "prefill": graph | {"files": {"prefill.onnx": gib}},
            "decode": graph | {"files": {"decode.onnx": gib // 2}}}},
        "compile": stage | {"peak_rss_bytes": 9 * gib, "graphs": {
            "prefill": {"compile_seconds": 90.0, "bytes_per_weight": 0.55, "context_binary_bytes": gib},
            "decode": {"compile_seconds": 80.0, "bytes_per_weight": 0.65, "context_binary_bytes": gib}}},
        "parity": {"graphs": {"decode": stage | {"seconds": 176.0, "htp_parity": {"passed": True, "rel": 0.08}}}}}}}
    table = real_size.render_table(data)
    prefill = next(line for line in table.splitlines() if line.startswith("| gemma2b / llm: prefill |"))
    decode = next(line for line in table.splitlines() if line.startswith("| gemma2b / llm: decode |"))
    assert "| 1.00 GiB |" in prefill and "| 0.50 GiB |" in decode  # each graph's own Q/DQ file
    assert "logits 0.50/2.00 steps ok; worst of the other 4: key_3 0.10/4.00 steps ok (all ok)" in prefill
    assert "| 0.550 |" in prefill and "| 0.650 |" in decode
    assert prefill.endswith("| not run |") and decode.endswith("| ok (8.00% rel, 1 input): 176 s |")
    assert "export peak 1.20× fp32 weights" in table and table.count("a note") == 1
    assert "compiled 0.550 B/weight (INT4 target ≤ 0.6): met" in table
    assert "compiled 0.650 B/weight (INT4 target ≤ 0.6): NOT met" in table


def test_gemma_2_2b_looks_its_embedding_up_on_the_host_by_default(real_size):
    """The measured form (README, real-size table): in the graphs the 256k-row table is 1.18 GB of each binary."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from fraqat_deploy.models import get_adapter
    from fraqat_deploy.models.gemma_graphs import default_embedding

    with torch.device("meta"):
        llm = Gemma2ForCausalLM(Gemma2Config(**real_size.load_config("gemma2_2b")))
    assert default_embedding(llm) == "host"
    for tiny in ("tiny-gemma", "gemma"):  # the small models keep the lookup in their graphs
        loaded = get_adapter(tiny).load(tiny=True) if tiny == "gemma" else get_adapter(tiny).load()
        assert default_embedding(loaded.student) == "graph", tiny
