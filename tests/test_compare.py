"""compare: PSNR/SSIM against reference values, every source paired with the FP output of the same prompt and seed
(PyTorch fake-quant, ONNX CPU, the HTP simulator, a phone, AI Hub, baseline runs), the learned metrics only with
local weights, text metrics for tiny-Gemma, and the errors a user can cause.

One digits run is built for real (train -> export -> compile for the S25 Ultra -> bench on the HTP simulator) with a
PTQ baseline beside it, once per session (``digits_runs``, shared with test_report.py)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fraqat_deploy.errors import ConfigError, InputError
from fraqat_deploy.quality.compare import compare_run, default_image_prompts, summary_rows
from fraqat_deploy.quality.digits import frechet_distance
from fraqat_deploy.quality.images import PSNR_CAP_DB, gaussian_window, load_png, psnr, ssim, unit
from fraqat_deploy.quality.learned import Lpips, load_clip, load_inception, load_lpips
from fraqat_deploy.runs import RunDir, write_json_atomic

SIM_PROMPTS = ["a handwritten digit four", "a handwritten digit seven"]
_BUILT: dict[str, Path] = {}


def digits_runs(factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a FraQAT digits run exported, compiled for s25u and benched on the simulator, a PTQ run of the same model)."""
    if not _BUILT:
        from fraqat_deploy.bench import bench
        from fraqat_deploy.compile.run import compile_run
        from fraqat_deploy.device.link import SimulatorLink
        from fraqat_deploy.export import export_run
        from fraqat_deploy.train import TrainConfig, train

        root = factory.mktemp("digits-runs")
        common = {"model": "digits", "steps": 18, "n_train": 48, "n_val": 16, "calib_samples": 16}
        run, ptq = root / "fraqat", root / "ptq"
        train(TrainConfig(out=run, schedule="fractional", **common), show_progress=False)
        train(TrainConfig(out=ptq, schedule="ptq", **common), show_progress=False)
        export_run(run)
        compile_run(run, "s25u")
        bench(run, SimulatorLink(run / "bench" / "sim" / ".device"), prompts=SIM_PROMPTS, runs=1, warmup=0)
        _BUILT.update(run=run, ptq=ptq)
    return _BUILT["run"], _BUILT["ptq"]


def add_device(run: Path, folder: str, bench_id: str, outputs: list[dict], images: dict[str, np.ndarray], *,
               model: str = "SM-S938B", runtime: str = "htp", status: str = "ok", record: bool = True) -> Path:
    """A device's bench folder as ``bench`` leaves it: result.json (following the protocol) and its images."""
    from fraqat_deploy.device.protocol import example, validate

    out = run / "bench" / folder / bench_id
    result = example("result") | {"request_id": bench_id, "status": status, "outputs": outputs}
    result["device"] = result["device"] | {"model": model, "runtime": runtime}
    if status != "ok":
        result["error"] = {"kind": "htp_error", "message": "graph finalize failed"}
    validate("result", result)
    for rel, array in images.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(out / rel)
    write_json_atomic(out / "result.json", result)
    if record:
        RunDir(run).update_stage(f"bench/{folder}", "done" if status == "ok" else "failed", id=bench_id)
    return out


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    return digits_runs(tmp_path_factory)


@pytest.fixture()
def run_copy(runs, tmp_path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(runs[0], copy, ignore=shutil.ignore_patterns(".device", "compare"))
    return copy


# ---------------------------------------------------------------- PSNR and SSIM


def _analytic_pair() -> tuple[np.ndarray, np.ndarray]:
    i, j = np.meshgrid(np.arange(24), np.arange(20), indexing="ij")
    a = np.stack([(np.sin(i / 3.0) * np.cos(j / 4.0) + 1) / 2, (i + j) / 42.0, ((i * j) % 7) / 6.0], axis=-1)
    b = np.clip(a + 0.08 * np.sin(i * j / 5.0)[..., None] - 0.03, 0, 1)
    return a, b


def test_ssim_identity_hand_computed_cases_and_reference_value():
    a, b = _analytic_pair()
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    assert ssim(a, b) == pytest.approx(ssim(b, a), abs=1e-12)
    # scikit-image 0.26 structural_similarity(a, b, data_range=1, channel_axis=2, gaussian_weights=True,
    # sigma=1.5, use_sample_covariance=False) = 0.8503177833261839 on this pair
    assert ssim(a, b) == pytest.approx(0.8503177833261839, abs=1e-9)
    # two flat images: no variance, so SSIM is the luminance term (2ab + C1) / (a^2 + b^2 + C1)
    c1 = (0.01 * 1.0) ** 2
    flat = ssim(np.full((16, 16), 0.5), np.full((16, 16), 0.25))
    assert flat == pytest.approx((2 * 0.5 * 0.25 + c1) / (0.5**2 + 0.25**2 + c1), abs=1e-12)
    # one 11x11 window, written out: Gaussian-weighted means, variances and covariance
    rng = np.random.default_rng(1)
    x = rng.random((11, 11))
    y = np.clip(0.7 * x + 0.2 + 0.05 * rng.random((11, 11)), 0, 1)
    w = gaussian_window().numpy()
    mx, my = (w * x).sum(), (w * y).sum()
    vx, vy, cxy = (w * x * x).sum() - mx**2, (w * y * y).sum() - my**2, (w * x * y).sum() - mx * my
    c2 = (0.03 * 1.0) ** 2
    expected = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    assert ssim(x, y) == pytest.approx(expected, abs=1e-12)
    # a constant shift leaves structure and contrast intact: only the luminance term moves
    assert 0.9 < ssim(x * 0.5, x * 0.5 + 0.1) < 1.0


def test_psnr_values():
    a = np.zeros((3, 4, 4))
    b = a.copy()
    b[0, 0, 0] = 0.5  # MSE = 0.25 / 48
    assert psnr(a, b) == pytest.approx(10 * math.log10(48 / 0.25), abs=1e-12)
    assert psnr(a, a) == PSNR_CAP_DB
    a2, b2 = _analytic_pair()
    assert psnr(a2, b2) == pytest.approx(24.75264206318994, abs=1e-9)  # scikit-image's value
    with pytest.raises(ValueError, match="shape"):
        psnr(np.zeros((3, 4, 4)), np.zeros((3, 4, 5)))


# ---------------------------------------------------------------- image sources


def test_compare_pairs_every_source_with_the_fp_output(runs):
    run, ptq = runs
    metrics = compare_run(run, [ptq])
    assert json.loads((run / "compare" / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    keys = [s["key"] for s in metrics["sources"]]
    assert keys == ["fp", "baseline-ptq", "fake_quant", "onnx_cpu", "sim"]
    by = {s["key"]: s for s in metrics["sources"]}
    assert [by[k]["label"] for k in keys] == ["FP PyTorch", "PTQ (fake-quant)", "FraQAT (fake-quant)",
                                              "ONNX Runtime CPU (Q/DQ)", "HTP simulator"]
    assert metrics["prompts"] == default_image_prompts() and len(metrics["prompts"]) == 10
    refs = {(r["prompt"], r["seed"]): r["image"] for r in metrics["references"]}
    for key in keys[1:]:
        for o in by[key]["outputs"]:
            assert o["reference"] == refs[(o["prompt"], o["seed"])]
            got, ref = load_png(run / "compare" / o["image"]), load_png(run / "compare" / o["reference"])
            assert o["psnr"] == pytest.approx(psnr(unit(got), unit(ref)), abs=1e-9)
            assert o["ssim"] == pytest.approx(ssim(unit(got), unit(ref)), abs=1e-9)
    # the simulator's images are the bench's own PNGs, paired by prompt and seed
    sim = by["sim"]
    assert [(o["prompt"], o["seed"]) for o in sim["outputs"]] == [(p, 0) for p in SIM_PROMPTS]
    bench_dir = run / "bench" / "sim" / sim["bench_id"]
    np.testing.assert_array_equal(load_png(run / "compare" / sim["outputs"][1]["image"]),
                                  load_png(bench_dir / "images" / "1.png"))
    # the HTP simulator and ONNX on the CPU draw what the fake-quant model draws: closer to it than to FP
    fq = {o["prompt"]: o for o in by["fake_quant"]["outputs"]}
    for o in sim["outputs"]:
        assert psnr(load_png(run / "compare" / o["image"]) / 255.0,
                    load_png(run / "compare" / fq[o["prompt"]]["image"]) / 255.0) > o["psnr"]
    for o in by["onnx_cpu"]["outputs"]:
        assert psnr(load_png(run / "compare" / o["image"]) / 255.0,
                    load_png(run / "compare" / fq[o["prompt"]]["image"]) / 255.0) > 30.0
    # summaries are the means of the per-image figures; the digits world adds accuracy and digits-FD
    for key in keys[1:]:
        s = by[key]["summary"]
        assert s["psnr_mean"] == pytest.approx(np.mean([o["psnr"] for o in by[key]["outputs"]]))
        assert s["ssim_mean"] == pytest.approx(np.mean([o["ssim"] for o in by[key]["outputs"]]))
        assert 10 < s["psnr_mean"] < 60 and 0 < s["ssim_mean"] < 1 and s["digits_fd"] >= 0
        hits = [o["digit"] == o["predicted"] for o in by[key]["outputs"]]
        assert s["prompt_accuracy"] == pytest.approx(np.mean(hits))
    assert [o["digit"] for o in by["fp"]["outputs"]] == list(range(10))
    assert by["fp"]["summary"]["prompt_accuracy"] >= 0.8
    # no weights given: the learned metrics are unavailable, with the option that enables them
    assert metrics["learned_metrics"]["lpips"] == {
        "available": False, "option": "--lpips-weights",
        "reason": "needs LPIPS (AlexNet) weights; none given (metrics never use a random backbone)"}
    assert {m["option"] for m in metrics["learned_metrics"].values()} == {"--lpips-weights", "--inception-weights",
                                                                          "--clip-weights"}
    assert "lpips_mean" not in by["fake_quant"]["summary"] and "fid" not in by["fake_quant"]["summary"]
    header, rows = summary_rows(metrics)
    assert header[:5] == ["source", "n", "PSNR dB", "SSIM", "prompt acc."] and len(rows) == 5
    assert json.loads((run / "run.json").read_text())["stages"]["compare"]["status"] == "done"


def test_phones_hub_and_the_latest_bench_of_each_device(runs, run_copy):
    run = run_copy
    from fraqat_deploy.train.load import load_trained

    trained = load_trained(run)
    sim_id = RunDir(run).manifest()["stages"]["bench/sim"]["id"]
    sim_png = load_png(run / "bench" / "sim" / sim_id / "images" / "0.png")
    two = trained.adapter.generate(trained.fp, ["a handwritten digit two"], seed=5)[0]
    two_png = (two.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    changed = two_png.copy()
    changed[3, 5, 0] = changed[3, 5, 0] + 10 if changed[3, 5, 0] < 128 else changed[3, 5, 0] - 10
    outputs = [{"prompt": SIM_PROMPTS[0], "seed": 0, "image": "images/0.png"},
               {"prompt": "a handwritten digit two", "seed": 5, "image": "images/1.png"},
               {"prompt": "a handwritten digit two", "seed": 5, "image": "images/2.png"}]
    add_device(run, "s25u", "20260101-000000-000", outputs[:1], {"images/0.png": sim_png}, status="error")
    add_device(run, "s25u", "20260102-000000-000", outputs,
               {"images/0.png": sim_png, "images/1.png": two_png, "images/2.png": changed})
    add_device(run, "s24u", "20260103-000000-000", [], {}, status="error")
    hub_dir = add_device(run, "hub-s25u", "job-1", outputs[:1], {"images/0.png": sim_png},
                         model="Samsung Galaxy S25 Ultra", record=False)
    (hub_dir / "hub.json").write_text(json.dumps({"where": "images: the phone's VAE decoder on the host latents"}))
    metrics = compare_run(run, onnx_cpu=False, prompts=SIM_PROMPTS)
    by = {s["key"]: s for s in metrics["sources"]}
    assert [s["key"] for s in metrics["sources"]] == ["fp", "fake_quant", "sim", "s25u", "hub-s25u"]
    phone, hub = by["s25u"], by["hub-s25u"]
    assert phone["kind"] == "phone" and phone["label"] == "SM-S938B (s25u)"
    assert phone["bench_id"] == "20260102-000000-000"
    assert hub["kind"] == "ai_hub" and hub["label"] == "AI Hub Samsung Galaxy S25 Ultra" and hub["bench_id"] == "job-1"
    assert hub["where"] == "images: the phone's VAE decoder on the host latents"
    # the same PNG as the simulator's scores the same; the FP image of (two, seed 5) is drawn for the phone alone
    assert phone["outputs"][0]["psnr"] == pytest.approx(by["sim"]["outputs"][0]["psnr"], abs=1e-12)
    assert phone["outputs"][1]["psnr"] == PSNR_CAP_DB and phone["outputs"][1]["ssim"] == pytest.approx(1.0)
    one_pixel = 10 * math.log10(1 / ((10 / 255) ** 2 / (3 * 32 * 32)))
    assert phone["outputs"][2]["psnr"] == pytest.approx(one_pixel, abs=1e-9)
    assert 0.99 < phone["outputs"][2]["ssim"] < 1.0
    assert {(r["prompt"], r["seed"]) for r in metrics["references"]} == {(p, 0) for p in SIM_PROMPTS} | {
        ("a handwritten digit two", 5)}
    assert {"source": "s24u", "reason": "bench 20260103-000000-000 ended in error: htp_error: graph finalize failed"} \
        in metrics["skipped"]
    assert {"source": "onnx_cpu", "reason": "turned off"} in metrics["skipped"]


# ---------------------------------------------------------------- learned metrics with local weights


def _lpips_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """An LPIPS-AlexNet state dict named as the lpips package names it (random tensors of the right shapes)."""
    torch.manual_seed(seed)
    model = Lpips()
    state = {}
    for n, index in enumerate((0, 3, 6, 8, 10)):
        state[f"net.slice{n + 1}.{index}.weight"] = torch.randn_like(model.convs[n].weight) * 0.05
        state[f"net.slice{n + 1}.{index}.bias"] = torch.randn_like(model.convs[n].bias) * 0.05
        state[f"lin{n}.model.1.weight"] = torch.rand_like(model.lins[n].weight)
    state["scaling_layer.shift"], state["scaling_layer.scale"] = model.shift, model.scale
    return state


class _TinyInception(torch.nn.Module):
    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)


def _tiny_clip(folder: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast

    words = ["[PAD]", "[BOS]", "[EOS]", "[UNK]", "a", "handwritten", "digit", "two", "four", "seven"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[BOS] $A [EOS]", special_tokens=[("[BOS]", 1),
                                                                                                ("[EOS]", 2)])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", bos_token="[BOS]", eos_token="[EOS]",
                            unk_token="[UNK]").save_pretrained(folder)
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"vocab_size": len(words), "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 16, "bos_token_id": 1, "eos_token_id": 2,
                     "pad_token_id": 0},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8}, projection_dim=8)
    CLIPModel(config).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}}))
    return folder


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_learned_metrics_load_only_the_given_weights(runs, run_copy, tmp_path):
    state = _lpips_state()
    torch.save(state, tmp_path / "lpips_alex.pth")
    # the same weights as torchvision's AlexNet file + the lpips package's linear heads, in one folder
    split = tmp_path / "lpips_split"
    split.mkdir()
    torch.save({k.replace(f"net.slice{n}.", "features."): v for k, v in state.items()
                for n in range(1, 6) if k.startswith(f"net.slice{n}.")}, split / "alexnet-owt-7be5be79.pth")
    torch.save({k: v for k, v in state.items() if k.startswith("lin")}, split / "alex.pth")
    a, b = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)).unbind(0)
    one, other = load_lpips(tmp_path / "lpips_alex.pth"), load_lpips(split)
    d = one(a[None], b[None])
    assert float(d) > 0 and float(one(a[None], a[None])) == 0.0
    assert float(other(a[None], b[None])) == pytest.approx(float(d), rel=1e-6)
    assert float(one(b[None], a[None])) == pytest.approx(float(d), rel=1e-6)
    partial = {k: v for k, v in state.items() if not k.startswith("lin4")}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(InputError, match="lacks 1 LPIPS tensor"):
        load_lpips(tmp_path / "partial.pth")

    torch.jit.script(_TinyInception()).save(str(tmp_path / "inception.pt"))
    with pytest.raises(InputError, match="TorchScript"):
        load_inception(tmp_path / "lpips_alex.pth")
    clip_dir = _tiny_clip(tmp_path / "clip")
    clip = load_clip(clip_dir)
    scores = clip.score(torch.stack([a, b]), ["a handwritten digit two", "a handwritten digit four"])
    assert all(0.0 <= s <= 100.0 for s in scores)

    run = run_copy
    metrics = compare_run(run, onnx_cpu=False, prompts=SIM_PROMPTS, lpips_weights=tmp_path / "lpips_alex.pth",
                          inception_weights=tmp_path / "inception.pt", clip_weights=clip_dir)
    assert all(m["available"] for m in metrics["learned_metrics"].values())
    fq = next(s for s in metrics["sources"] if s["key"] == "fake_quant")
    images = torch.stack([unit(load_png(run / "compare" / o["image"])) for o in fq["outputs"]]).float()
    refs = torch.stack([unit(load_png(run / "compare" / o["reference"])) for o in fq["outputs"]]).float()
    assert [o["lpips"] for o in fq["outputs"]] == pytest.approx([float(v) for v in one(images, refs)], rel=1e-5)
    inception = _TinyInception()
    expected_fid = frechet_distance(inception(images * 255).double().numpy(), inception(refs * 255).double().numpy())
    assert fq["summary"]["fid"] == pytest.approx(expected_fid, rel=1e-6)
    assert fq["summary"]["clip_fid"] >= 0
    assert [o["clip_score"] for o in fq["outputs"]] == pytest.approx(clip.score(images, SIM_PROMPTS), rel=1e-5)
    assert "clip_score_mean" in metrics["sources"][0]["summary"]

    with pytest.raises(InputError, match="LPIPS weights not found"):
        compare_run(run, onnx_cpu=False, prompts=SIM_PROMPTS, lpips_weights=tmp_path / "nowhere.pth")
    with pytest.raises(InputError, match="no CLIP model folder"):
        compare_run(run, onnx_cpu=False, prompts=SIM_PROMPTS, clip_weights=tmp_path)


def test_images_per_prompt_draws_every_prompt_with_that_many_seeds(tmp_path):
    """compare --images-per-prompt N: digits-FD and prompt accuracy over prompts x N images (seeds seed..seed+N-1),
    the first len(prompts) pairs being those of one image per prompt."""
    from typer.testing import CliRunner

    from fraqat_deploy.cli import app
    from fraqat_deploy.train import TrainConfig, train
    from fraqat_deploy.train.load import load_trained

    run = tmp_path / "ptq"
    train(TrainConfig(model="digits", out=run, schedule="ptq", n_train=8, n_val=4, calib_samples=4),
          show_progress=False)
    one = compare_run(run, prompts=SIM_PROMPTS, seed=5)
    first = {s["key"]: [load_png(run / "compare" / o["image"]) for o in s["outputs"]] for s in one["sources"]}
    result = CliRunner().invoke(app, ["compare", "--run", str(run), "--seed", "5", "--images-per-prompt", "3",
                                      "--no-onnx-cpu", *[a for p in SIM_PROMPTS for a in ("--prompt", p)]])
    assert result.exit_code == 0, result.output
    assert "2 prompts x 3 seeds" in result.output
    metrics = json.loads((run / "compare" / "metrics.json").read_text())
    assert metrics["images_per_prompt"] == 3 and metrics["prompts"] == SIM_PROMPTS
    pairs = [(p, s) for s in (5, 6, 7) for p in SIM_PROMPTS]
    for source in metrics["sources"]:
        assert [(o["prompt"], o["seed"]) for o in source["outputs"]] == pairs
        assert source["summary"]["n"] == 6 and source["summary"]["digit_prompts"] == 6
        images = [load_png(run / "compare" / o["image"]) for o in source["outputs"]]
        for a, b in zip(images[:2], first[source["key"]], strict=True):  # seed 5 as with one image per prompt
            np.testing.assert_array_equal(a, b)
        assert not np.array_equal(images[0], images[2])  # another seed draws another image
    fq = {s["key"]: s for s in metrics["sources"]}["fake_quant"]["summary"]
    assert fq["digits_fd"] is not None and len(fq["digits_fd_interval"]) == 2
    # the FP image of (prompt, seed 7) is the FP model's own draw for that seed
    trained = load_trained(run)
    seven = trained.adapter.generate(trained.fp, [SIM_PROMPTS[1]], seed=7)[0]
    fp_seven = load_png(run / "compare" / metrics["references"][5]["image"])
    np.testing.assert_array_equal(fp_seven, (seven.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round()
                                  .astype(np.uint8))
    assert metrics["references"][5]["seed"] == 7 and metrics["references"][5]["prompt"] == SIM_PROMPTS[1]
    with pytest.raises(InputError, match="at least 1"):
        compare_run(run, images_per_prompt=0)


# ---------------------------------------------------------------- errors


def test_errors_a_user_can_cause(runs, tmp_path):
    run, ptq = runs
    with pytest.raises(InputError) as e:
        compare_run(tmp_path / "nothing")
    assert "no run.json" in e.value.message and "fraqat-deploy train" in e.value.fix
    with pytest.raises(InputError, match="the run itself"):
        compare_run(run, [run])
    with pytest.raises(InputError, match="no run.json"):
        compare_run(run, [tmp_path / "missing"])
    other = tmp_path / "other"
    shutil.copytree(ptq, other)
    manifest = json.loads((other / "run.json").read_text())
    manifest["model"] = {"adapter": "tiny-gemma", "spec": {"adapter": "tiny-gemma", "sha256": "0" * 64}}
    (other / "run.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError) as e:
        compare_run(run, [other])
    assert "another model" in e.value.message and "same full-precision model" in e.value.fix
    unfinished = tmp_path / "unfinished"
    shutil.copytree(ptq, unfinished)
    RunDir(unfinished).update_stage("train", "running")
    with pytest.raises(InputError, match="not finished"):
        compare_run(unfinished)


# ---------------------------------------------------------------- text


def test_text_metrics_and_device_tokens_for_tiny_gemma(tmp_path):
    from fraqat_deploy.quality.text import evaluate_text
    from fraqat_deploy.quality.text_compare import greedy_tokens
    from fraqat_deploy.train import TrainConfig, train
    from fraqat_deploy.train.load import load_trained

    run = tmp_path / "gemma"
    train(TrainConfig(model="tiny-gemma", out=run, schedule="ptq", n_train=8, n_val=4, calib_samples=4),
          show_progress=False)
    trained = load_trained(run)
    tokenizer = trained.fp.parts["tokenizer"]
    prompts = ["def main(", "import os"]
    fp_tokens = greedy_tokens(trained.fp.student, tokenizer, prompts[0], 6)
    assert len(fp_tokens) == 6
    device_tokens = fp_tokens[:4] + [(fp_tokens[4] + 1) % 200] + fp_tokens[5:]
    add_device(run, "sim", "20260104-000000-000",
               [{"prompt": prompts[0], "seed": 0, "tokens": device_tokens, "tokens_per_second": 12.5}], {},
               model="QNN HTP simulator (x86_64)", runtime="htp-simulator")
    metrics = compare_run(run, prompts=prompts, text_rows=8, max_new_tokens=6)
    assert metrics["kind"] == "text"
    by = {s["key"]: s for s in metrics["sources"]}
    assert list(by) == ["fp", "fake_quant", "sim"]
    assert by["fp"]["summary"]["kl"] == 0.0 and by["fp"]["summary"]["top1"] == 1.0
    assert by["fp"]["summary"]["token_agreement"] == 1.0
    expected = evaluate_text(trained.fp, trained.student, n_rows=8)
    for k in ("perplexity", "kl", "top1"):
        assert by["fake_quant"]["summary"][k] == pytest.approx(expected[k], rel=1e-6)
    assert by["fake_quant"]["label"] == "PTQ (fake-quant)"
    sim = by["sim"]["outputs"][0]
    assert sim["token_agreement"] == pytest.approx(5 / 6) and sim["matching_prefix"] == 4
    assert sim["reference_tokens"] == fp_tokens and sim["tokens_per_second"] == 12.5
    assert sim["text"] == prompts[0] + tokenizer.decode(device_tokens, skip_special_tokens=True)
    assert {"source": "onnx_cpu", "reason": "not exported"} in metrics["skipped"]
    header, _ = summary_rows(metrics)
    assert header == ["source", "n", "perplexity", "KL nats/token", "top-1", "greedy tokens"]
    with pytest.raises(InputError, match="image models"):
        compare_run(run, images_per_prompt=2)

    # exported: the prefill/decode graphs on ONNX Runtime's CPU provider, through the app's host-side KV-cache loop,
    # continue as the fake-quant model does (the FP model only agrees on a fraction of the tokens)
    from fraqat_deploy.export import export_run

    export_run(run)
    metrics = compare_run(run, prompts=prompts, text_rows=8, max_new_tokens=6)
    from fraqat_deploy.device import pipeline
    from fraqat_deploy.models.gemma import GemmaAdapter

    if not (hasattr(pipeline, "gemma_generate") and hasattr(GemmaAdapter, "bench_inputs")):
        # the host Gemma pipeline is not there yet: the source is left out, with the reason
        assert [s["source"] for s in metrics["skipped"]] == ["onnx_cpu"]
        return
    by = {s["key"]: s for s in metrics["sources"]}
    assert list(by) == ["fp", "fake_quant", "onnx_cpu", "sim"]
    onnx = by["onnx_cpu"]["outputs"]
    assert np.mean([o["vs_fake_quant"]["token_agreement"] for o in onnx]) >= 0.8
    assert [o["prompt"] for o in onnx] == prompts and all(len(o["tokens"]) <= 6 for o in onnx)

    from fraqat_deploy.report import write_report

    html = write_report(run).read_text()
    assert 'id="texts"' in html and "def main(" in html and "83%" in html
