"""16-bit checkpoints (Gemma-2 ships bfloat16): loaded as they are and exported with the float32 load's Q/DQ result.

A bfloat16 checkpoint and a float32 checkpoint of the same (bfloat16-representable) weights go through the same
commands; the bfloat16 load keeps its matrices in bfloat16 and computes in float32 a tensor at a time
(``models/half.py``, ``export/half.py``). The Q/DQ graphs must be the same file, byte for byte (weights codes,
scales, encodings, names), and the parity records the same numbers. The float graphs hold the same nodes and
the same initializer values, with two differences in that (inspection-only) file: the order of its initializers
(the transposes of MatMul weights are folded lazily before the exporter's optimizer folds the small constants),
and the sign of zero of a rule weight that rounds to code 0 from below (the float32 path writes ``-0.0 * scale``
from float codes, the 16-bit path ``0 * scale`` from its int8 codes; equal as numbers, the same INT8 code).

A FraQAT run of a bfloat16 checkpoint trains float32 master weights (``train.trainer.float32_masters``): the
same weights as the float32 checkpoint's run, bit for bit, and the same Q/DQ files; its teacher and untrained
matrices stay bfloat16.

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


# ---- FraQAT training from a 16-bit checkpoint: float32 master weights --------------------------------------------

#: Adam's first steps move each weight by about the learning rate: 4 steps of 1e-6 stay below half a bfloat16 ulp
#: of any weight above 2^-11 in magnitude, so a run updating bfloat16 weights would round (nearly) all of them away
SMALL_LR = 1e-6


def _qat(root: Path, kind: str, trainable: str, **extra) -> Path:
    out = root / f"qat-{kind}-{trainable}"
    train(TrainConfig(model="gemma", source=str(root / kind), out=out, schedule="constant:4", steps=4, lr=SMALL_LR,
                      trainable=trainable, n_train=8, n_val=4, calib_samples=8, batch_size=4, **extra),
          show_progress=False)
    return out


def _weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "train" / "model.safetensors"))


def _dtypes(run: Path) -> dict[str, str]:
    header = (run / "train" / "model.safetensors").read_bytes()
    return {k: v["dtype"] for k, v in json.loads(header[8:8 + int.from_bytes(header[:8], "little")]).items()
            if k != "__metadata__"}


def test_training_from_a_bf16_checkpoint_updates_float32_masters_and_exports_the_fp32_runs_qdq(tmp_path: Path,
                                                                                               monkeypatch):
    """A bfloat16 and a float32 checkpoint of the same values, trained the same way (same seed, data and steps),
    end with the same weights, bit for bit: the bfloat16 route's trained parameters are float32 masters holding
    the float32 route's values, the forward computes in float32 from the same numbers (``models/half.py``) and the
    gradients and Adam steps are the same float32 operations. Before master weights, the bfloat16 route's updates
    (~1e-6 here) were rounded away. Only the feed-forward trains (``--trainable ff``), so the trained run is a
    mixed module (float32 MLP layers in a bfloat16 model) that exports through the 16-bit path: its Q/DQ files are
    the float32 run's, byte for byte (a trained layer's per-tensor INT4 scale comes from its largest master weight:
    rounding the masters to bfloat16 would change it)."""
    from fraqat_deploy.models.half import has_half
    from fraqat_deploy.train.load import load_trained
    from fraqat_deploy.train.trainer import Trainer

    root = _checkpoints("gemma", tmp_path)
    seen: list[tuple[set[torch.dtype], set[torch.dtype], set[torch.dtype]]] = []
    validate = Trainer.validate

    shared: list[tuple[int, int]] = []

    def spy(self, student, teacher, *args, **kwargs):  # the models as training holds them
        seen.append(({p.dtype for p in teacher.parameters() if p.dim() == 2},
                     {p.dtype for p in student.parameters() if p.requires_grad},
                     {p.dtype for p in student.parameters() if not p.requires_grad and p.dim() == 2}))
        # the teacher holds the student's own untrained 16-bit tensors (no copy) and none that trains
        mine = {p.data_ptr() for p in student.parameters() if not p.requires_grad and p.dim() == 2}
        shared.append((sum(p.data_ptr() in mine for p in teacher.parameters() if p.dim() == 2), len(mine)))
        assert not {p.data_ptr() for p in student.parameters() if p.requires_grad} \
            & {p.data_ptr() for p in teacher.parameters()}
        return validate(self, student, teacher, *args, **kwargs)

    monkeypatch.setattr(Trainer, "validate", spy)
    fp32 = _qat(root, "fp32", "ff")
    seen.clear()
    shared.clear()
    bf16 = _qat(root, "bf16", "ff")
    assert shared and all(n == total > 0 for n, total in shared), shared
    # the teacher and the untrained matrices stay bfloat16 (memory); what trains is float32
    assert seen and all(s == ({torch.bfloat16}, {torch.float32}, {torch.bfloat16}) for s in seen), seen

    start = get_adapter("gemma").load(str(root / "bf16")).student.state_dict()
    a, b = _weights(bf16), _weights(fp32)
    trained = sorted(k for k in a if ".mlp." in k)
    assert trained and {_dtypes(bf16)[k] for k in trained} == {"F32"}
    assert {v for k, v in _dtypes(bf16).items() if k not in trained and k.endswith("proj.weight")} == {"BF16"}
    for k in a:
        assert torch.equal(a[k].float(), b[k]), k  # the float32 route's weights, bit for bit
    moved = torch.cat([(a[k] - start[k].float()).flatten() for k in trained])
    lost = torch.cat([(a[k].bfloat16() == start[k]).flatten() for k in trained])
    assert moved.abs().max() > 0 and moved.abs().max() < 10 * SMALL_LR
    assert lost.float().mean() > 0.9  # updated in bfloat16, these weights would not have moved

    records = [json.loads((run / "run.json").read_text())["stages"]["train"]["master_weights"] for run in (bf16, fp32)]
    n = len(trained)
    assert records == [f"float32 ({n} of {n} trainable parameters were bfloat16)", "as loaded (float32)"]

    student = load_trained(bf16).student  # the stored masters come back float32, the rest as stored
    assert student.model.layers[0].mlp.up_proj.weight.dtype == torch.float32
    assert student.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    assert has_half(student)  # so the export takes the 16-bit path for the untrained rest
    del student
    for run in (bf16, fp32):
        export_run(run, "gemma", n_calibration=4)
    for component in ("prefill", "decode"):
        assert (bf16 / "export" / f"{component}.onnx").read_bytes() == \
            (fp32 / "export" / f"{component}.onnx").read_bytes(), component


def test_every_parameter_trained_from_bf16_is_the_fp32_runs_and_resume_keeps_the_masters(tmp_path: Path):
    """``--trainable all``: the embedding (tied to the LM head) trains too, as one float32 master, still tied, that
    looks its rows up as a float32 load does; a run resumed from a checkpoint ends with the uninterrupted run's
    float32 weights (the checkpoint stores the masters in float32)."""
    root = _checkpoints("gemma", tmp_path)
    fp32 = _qat(root, "fp32", "all")
    bf16 = _qat(root, "bf16", "all", checkpoint_every=2)
    a, b = _weights(bf16), _weights(fp32)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert set(_dtypes(bf16).values()) == {"F32"}
    loaded = get_adapter("gemma").load(str(root / "bf16")).student
    n_half = sum(p.dtype == torch.bfloat16 for p in loaded.parameters())
    record = json.loads((bf16 / "run.json").read_text())["stages"]["train"]["master_weights"]
    assert record == f"float32 ({n_half} of {len(list(loaded.parameters()))} trainable parameters were bfloat16)"

    import shutil

    checkpoints = bf16 / "train" / "checkpoints"
    shutil.rmtree(checkpoints / "step-0000004")  # as if killed after step 2's checkpoint
    (bf16 / "train" / "model.safetensors").unlink()
    train(TrainConfig(model="gemma", source=str(root / "bf16"), out=bf16, schedule="constant:4", steps=4, lr=SMALL_LR,
                      trainable="all", n_train=8, n_val=4, calib_samples=8, batch_size=4, checkpoint_every=2,
                      resume=True), show_progress=False)
    resumed = _weights(bf16)
    assert all(torch.equal(resumed[k], a[k]) for k in a)


def test_a_ptq_run_of_a_bf16_checkpoint_keeps_its_weights_as_loaded(tmp_path: Path, monkeypatch):
    """... and its teacher is the student's own weights (a PTQ run changes no weight): no second copy of a 2.6B
    model (the real-size PTQ of Gemma-2-2B peaked at 20.6 GiB with the copy)."""
    from fraqat_deploy.train.trainer import Trainer

    validate, seen = Trainer.validate, []

    def spy(self, student, teacher, *args, **kwargs):
        mine = {p.data_ptr() for p in student.parameters()}
        seen.append(all(p.data_ptr() in mine for p in teacher.parameters()))
        return validate(self, student, teacher, *args, **kwargs)

    monkeypatch.setattr(Trainer, "validate", spy)
    root = _checkpoints("gemma", tmp_path)
    train(TrainConfig(model="gemma", source=str(root / "bf16"), out=tmp_path / "ptq", schedule="ptq", n_train=8,
                      n_val=4, calib_samples=8, batch_size=4), show_progress=False)
    assert json.loads((tmp_path / "ptq" / "run.json").read_text())["stages"]["train"]["master_weights"].startswith(
        "none")
    assert "F32" not in {v for k, v in _dtypes(tmp_path / "ptq").items() if k.endswith("proj.weight")}
    assert seen and all(seen)
