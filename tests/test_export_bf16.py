"""16-bit checkpoints (Gemma-2 ships bfloat16): loaded as they are and exported with the float32 load's Q/DQ result.

A bfloat16 checkpoint and a float32 checkpoint of the same (bfloat16-representable) weights go through the same
commands; the bfloat16 load keeps its matrices in bfloat16 and computes in float32 a tensor at a time
(``models/half.py``, ``export/half.py``). The Q/DQ graphs must be the same file, byte for byte (weights codes,
scales, encodings, names), and the parity records the same numbers. The float graphs hold the same nodes and
the same initializer values, with two differences in that (inspection-only) file: the order of its initializers
(the transposes of MatMul weights are folded lazily before the exporter's optimizer folds the small constants),
and the sign of zero of a rule weight that rounds to code 0 from below (the float32 path writes ``-0.0 * scale``
from float codes, the 16-bit path ``0 * scale`` from its int8 codes; equal as numbers, the same INT8 code).

The memory check is ``test_export_memory``'s, on a mid-size random Gemma-2 text encoder (~300 MB of bfloat16
weights, every layer quantized by the export's rule): the export's peak, the model included, relative to the
bfloat16 weight bytes; the same model loaded as float32 is measured too, and must exceed the bound.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from fraqat_deploy.export import export_run
from fraqat_deploy.models import get_adapter
from fraqat_deploy.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _checkpoints(model: str, tmp_path: Path) -> Path:
    """The tiny model saved twice: its Gemma-2 part in bfloat16, and the same values in float32."""
    adapter = get_adapter(model)
    loaded = adapter.load(tiny=True, seed=0)
    gemma = loaded.student if model == "gemma" else loaded.parts["text_encoder"]
    gemma.to(torch.bfloat16)
    adapter.save_pretrained(loaded, tmp_path / "bf16")
    gemma.float()
    adapter.save_pretrained(loaded, tmp_path / "fp32")
    return tmp_path


def _ptq_and_export(model: str, root: Path) -> None:
    # float32 first: in a process where no 16-bit model was loaded yet, no float32 module runs under the global
    # hooks of models/half.py (which leave a module without 16-bit parameters alone anyway)
    for kind in ("fp32", "bf16"):
        train(TrainConfig(model=model, source=str(root / kind), out=root / f"run-{kind}", schedule="ptq", n_train=8,
                          n_val=4, calib_samples=8, batch_size=4), show_progress=False)
        export_run(root / f"run-{kind}", model, n_calibration=4)


def _same_float_graph(a: Path, b: Path) -> None:
    fa, fb = onnx.load(str(a)), onnx.load(str(b))
    assert list(fa.graph.node) == list(fb.graph.node)
    ia = {i.name: numpy_helper.to_array(i) for i in fa.graph.initializer}
    ib = {i.name: numpy_helper.to_array(i) for i in fb.graph.initializer}
    assert ia.keys() == ib.keys()
    for name, value in ia.items():
        assert value.dtype == ib[name].dtype and np.array_equal(value, ib[name]), name


def test_a_bf16_gemma_checkpoint_stays_bf16_and_exports_the_fp32_loads_qdq_graphs(tmp_path: Path):
    root = _checkpoints("gemma", tmp_path)
    _ptq_and_export("gemma", root)
    for run in ("run-bf16", "run-fp32"):  # the bf16 run's weights were written as they were held
        header = (root / run / "train" / "model.safetensors").read_bytes()[:4000]
        assert (b'"BF16"' in header) == (run == "run-bf16")
    a, b = root / "run-bf16" / "export", root / "run-fp32" / "export"
    for component in ("prefill", "decode"):
        assert (a / f"{component}.onnx").read_bytes() == (b / f"{component}.onnx").read_bytes(), component
        _same_float_graph(a / f"{component}.float.onnx", b / f"{component}.float.onnx")
    assert json.loads((a / "parity.json").read_text()) == json.loads((b / "parity.json").read_text())
    # the decode graph was exported second, from the student the prefill export prepared (no copy): the same file
    # as the decode graph exported alone from a freshly loaded student
    for run in ("run-bf16", "run-fp32"):
        shared = (root / run / "export" / "decode.onnx").read_bytes()
        export_run(root / run, "gemma", n_calibration=4, components=["decode"])
        assert (root / run / "export" / "decode.onnx").read_bytes() == shared, run

    loaded = get_adapter("gemma").load(str(root / "bf16"))
    lm = loaded.student
    assert lm.model.layers[0].mlp.gate_proj.weight.dtype == torch.bfloat16
    assert lm.model.embed_tokens.weight.dtype == torch.bfloat16
    assert lm.model.norm.weight.dtype == torch.float32  # small tensors upcast once
    fp32 = get_adapter("gemma").load(str(root / "fp32")).student
    assert fp32.model.layers[0].mlp.gate_proj.weight.dtype == torch.float32
    ids = torch.tensor([[2, 100, 101, 102, 40]])
    with torch.no_grad():  # computes in float32: the float32 load's logits, bit for bit
        assert torch.equal(lm(input_ids=ids, use_cache=False).logits, fp32(input_ids=ids, use_cache=False).logits)


def test_a_bf16_sana_text_encoder_exports_the_fp32_loads_qdq_graphs_and_the_rest_is_unchanged(tmp_path: Path):
    root = _checkpoints("sana", tmp_path)
    loaded = get_adapter("sana").load(str(root / "bf16"))
    assert loaded.parts["text_encoder"].layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    assert loaded.student.proj_out.weight.dtype == torch.float32  # the transformer is loaded as before
    del loaded

    _ptq_and_export("sana", root)
    a, b = root / "run-bf16" / "export", root / "run-fp32" / "export"
    # the text encoder through the rule (INT8 MatMul weights from W^T); the transformer is calibrated on its
    # prompt embeddings, so its graph shows they are the float32 load's too
    for component in ("text_encoder", "transformer", "vae_decoder"):
        assert (a / f"{component}.onnx").read_bytes() == (b / f"{component}.onnx").read_bytes(), component
    _same_float_graph(a / "text_encoder.float.onnx", b / "text_encoder.float.onnx")
    assert json.loads((a / "parity.json").read_text()) == json.loads((b / "parity.json").read_text())


#: the issue's 3x, applied to the weights as loaded (bfloat16); the float32 load of the same model measured 4.4x
#: these bytes (2.2x its own float32 weights), the bfloat16 path 2.8x (the calibration's ONNX Runtime session
#: over the float32 float graph is most of it)
MAX_PEAK_OVER_BF16_WEIGHTS = 3.0

_CHILD = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import torch
    from transformers import Gemma2Config, Gemma2Model
    from fraqat_deploy.export import export_component
    from fraqat_deploy.models.base import Component
    from fraqat_deploy.models.half import keep_half
    from fraqat_deploy.models.sana_graphs import TextEncoderGraph

    def status(key):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

    torch.set_num_threads(1)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[sys.argv[2]]
    config = Gemma2Config(vocab_size=32000, hidden_size=1024, intermediate_size=4096, num_hidden_layers=8,
                          num_attention_heads=8, num_key_value_heads=4, head_dim=128, max_position_embeddings=256,
                          attn_implementation="eager")
    base = status("VmRSS")
    torch.manual_seed(0)
    torch.set_default_dtype(dtype)  # as from_pretrained(dtype=...) builds it: no float32 copy on the way
    model = keep_half(Gemma2Model(config).eval().requires_grad_(False))
    torch.set_default_dtype(torch.float32)
    bf16_bytes = sum(p.numel() * 2 for p in model.parameters())
    ids = torch.randint(0, 32000, (2, 1, 64), generator=torch.Generator().manual_seed(1))
    calibration = [(ids[i], torch.ones(1, 64, dtype=torch.long)) for i in range(2)]
    component = Component("text_encoder", TextEncoderGraph(model), ["input_ids", "attention_mask"],
                          ["prompt_embeds"], calibration)
    del model
    record = export_component(component, Path(sys.argv[1]), owned=True)
    print(json.dumps({"base": base, "peak": status("VmHWM"), "bf16_bytes": bf16_bytes,
                      "passed": all(m["passed"] for m in record["parity"].values())}))
""")


def _export_peak(tmp_path: Path, dtype: str) -> float:
    done = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / dtype), dtype], capture_output=True,
                          text=True, timeout=600, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    r = json.loads(done.stdout.strip().splitlines()[-1])
    assert r["passed"]
    return (r["peak"] - r["base"]) / r["bf16_bytes"]


@pytest.mark.slow
def test_bf16_export_peak_memory_stays_within_three_times_the_bf16_weights(tmp_path: Path):
    bf16 = _export_peak(tmp_path, "bf16")
    assert bf16 <= MAX_PEAK_OVER_BF16_WEIGHTS, f"bf16 export peak is {bf16:.2f}x the bf16 weights"
    # the float32 graph's weights went to external data, written a tensor at a time
    assert (tmp_path / "bf16" / "text_encoder.float.onnx.data").stat().st_size > 0
    fp32 = _export_peak(tmp_path, "fp32")  # the check can fail: the float32 load of the same model does
    assert fp32 > MAX_PEAK_OVER_BF16_WEIGHTS, f"fp32 export peak is {fp32:.2f}x the bf16 weights"


def test_the_load_dtype_is_the_one_a_local_checkpoint_declares(tmp_path: Path):
    from fraqat_deploy.models.half import checkpoint_dtype

    for declared, want in (("bfloat16", torch.bfloat16), ("float16", torch.float16), ("float32", torch.float32)):
        folder = tmp_path / declared / "text_encoder"
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps({"model_type": "gemma2", "torch_dtype": declared}))
        assert checkpoint_dtype(str(folder.parent), True, "text_encoder") == want
        assert checkpoint_dtype(str(folder.parent), False, "text_encoder") == torch.float32  # a hub id: as before
    assert checkpoint_dtype(str(tmp_path), True) == torch.float32  # no config.json


def test_the_rule_quantizes_a_shared_layer_once():
    """A student shared by two graphs is prepared by the first export and reused by the second: its rule layers
    keep the codes taken from the real weights (their weights are placeholders by then, or already on the grid)."""
    from fraqat_deploy.export.half import HalfExport
    from fraqat_deploy.export.qdq import RULE_WEIGHT_BITS, apply_rule_to_weights

    torch.manual_seed(0)
    half = torch.nn.Sequential(torch.nn.Linear(16, 8)).to(torch.bfloat16)
    HalfExport(half, RULE_WEIGHT_BITS).close()
    codes, scale = (t.clone() for t in half[0].rule_codes)
    assert int(codes.abs().max()) == 127
    HalfExport(half, RULE_WEIGHT_BITS).close()
    assert torch.equal(half[0].rule_codes[0], codes) and torch.equal(half[0].rule_codes[1], scale)

    fp32 = torch.nn.Sequential(torch.nn.Linear(16, 8))
    apply_rule_to_weights(fp32)
    once = fp32[0].weight.detach().clone()
    with torch.no_grad():
        fp32[0].weight.add_(1e-3)  # off the grid: a second quantization would round it
    apply_rule_to_weights(fp32)
    assert torch.equal(fp32[0].weight, once + 1e-3)
