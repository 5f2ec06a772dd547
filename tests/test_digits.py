"""The embedded digits world: the committed digits-Sana model, its classifier and the digits metrics."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fraqat_deploy.errors import ConfigError, InputError
from fraqat_deploy.models import LoadedModel, get_adapter
from fraqat_deploy.models.digits import ASSET_DIR, DIGITS_CONFIG, weights_sha256
from fraqat_deploy.models.sana import DEFAULT_PROMPTS
from fraqat_deploy.quality.digits import (
    classify,
    digit_of_prompt,
    digit_prompts,
    evaluate_digits,
    fd_between,
    features,
    frechet_distance,
    load_classifier,
    prompt_accuracy,
    real_digits,
)

ROOT = Path(__file__).resolve().parent.parent


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    return get_adapter("digits").load(None)


@pytest.fixture(scope="module")
def evaluation(model) -> dict:
    return evaluate_digits(model, per_digit=20, seed=0)


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# -- the committed model ----------------------------------------------------------------------------------


def test_fp_model_draws_the_digit_asked_for(model, evaluation):
    """200 images (20 per digit) with the sampler settings the model ships: >= 90% show the right digit."""
    build = json.loads((ASSET_DIR / "build.json").read_text())
    assert len(evaluation["digits"]) == 200 and evaluation["images"].shape == (200, 3, 32, 32)
    assert evaluation["prompt_accuracy"] >= 0.90, evaluation["per_digit_accuracy"]
    assert min(evaluation["per_digit_accuracy"]) >= 0.7
    # the figure build.json reports is the one the shipped sampler gives here
    sampler = {k: model.parts[k] for k in ("steps", "guidance", "flow_shift")}
    assert sampler == build["evaluation"]["sampler"]
    assert evaluation["prompt_accuracy"] == pytest.approx(build["evaluation"]["prompt_accuracy"], abs=0.02)
    # guidance trades diversity for fidelity, so with it the distance to real digits is a few times the
    # real-vs-real floor, yet far from images that are not digits
    floor = build["evaluation"]["fd_real_train_vs_test"]
    noise = torch.rand((200, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    assert floor < evaluation["fd_real"] < min(8 * floor, 0.2 * fd_between(noise, real_digits("test")[0]))
    # without guidance the model's digits are about as close to the held-out digits as other real digits are
    unguided = evaluate_digits(model, per_digit=20, seed=0, guidance=1.0)
    assert unguided["fd_real"] < 2 * floor and unguided["prompt_accuracy"] >= 0.9


def test_generation_is_seeded_and_conditioned(model, evaluation):
    again = evaluate_digits(model, per_digit=1, seed=0)
    assert again["prompts"] == [
        f"a handwritten digit {w}"
        for w in ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
    ]
    # numerals work as well as words
    from fraqat_deploy.models.sampler import generate

    images = generate(model, [f"the digit {d}" for d in range(10)] * 2, seed=1)
    assert prompt_accuracy(images, list(range(10)) * 2) >= 0.8
    # a quantized student is passed as transformer=; the FP student itself gives the same images
    same = evaluate_digits(model, transformer=model.student, per_digit=1, seed=0)
    assert torch.equal(same["images"], again["images"])
    assert fd_between(evaluation["images"], evaluation["images"]) == pytest.approx(0.0, abs=1e-6)


def test_load_from_spec_and_folder(model):
    adapter = get_adapter("digits")
    spec = json.loads(json.dumps(model.spec))
    assert spec["builtin"] == "digits-sana" and spec["kind"] == "pretrained" and spec["adapter"] == "digits"
    assert spec["sha256"] == weights_sha256(ASSET_DIR)
    again = adapter.load_from_spec(spec)
    assert _same_weights(model.student, again.student)
    for part in ("text_encoder", "vae"):
        assert _same_weights(model.parts[part], again.parts[part])
    by_folder = adapter.load(str(ASSET_DIR))
    assert "builtin" not in by_folder.spec and _same_weights(model.student, by_folder.student)
    assert _same_weights(model.student, adapter.load_from_spec(by_folder.spec).student)
    # a plain Sana folder: the Sana adapter reads it too, with the same weights and sampler settings
    as_sana = get_adapter("sana").load(str(ASSET_DIR))
    assert as_sana.spec["adapter"] == "sana" and _same_weights(model.student, as_sana.student)
    assert all(as_sana.parts[k] == model.parts[k] for k in ("steps", "guidance", "flow_shift", "max_tokens"))
    # a run made with other built-in weights is not silently resumed with these
    with pytest.raises(InputError) as err:
        adapter.load_from_spec({**spec, "sha256": "0" * 64})
    assert "changed" in err.value.message
    with pytest.raises(ConfigError):
        adapter.load(str(ASSET_DIR), tiny=True)
    # tiny: the same architecture, random-initialised
    tiny = adapter.load(None, tiny=True, seed=0)
    assert tiny.spec["config"] == DIGITS_CONFIG and not _same_weights(tiny.student, model.student)
    assert {n: p.shape for n, p in tiny.student.named_parameters()} == {
        n: p.shape for n, p in model.student.named_parameters()
    }


def test_default_distillation_prompts_are_digit_prompts(model):
    digits = [digit_of_prompt(p) for p in DEFAULT_PROMPTS]
    assert None not in digits and sorted(set(digits)) == list(range(10))
    data = get_adapter("digits").distill_data(model, None, n_train=8, n_val=2, seed=0)
    assert data.train["hidden_states"].shape == (8, 4, 8, 8) and "built-in prompts" in data.description


def test_asset_is_small_and_complete():
    files = [p for p in ASSET_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 10 * 2**20
    names = {p.relative_to(ASSET_DIR).as_posix() for p in files}
    for name in (
        "build.json",
        "classifier.json",
        "classifier.safetensors",
        "fraqat_model.json",
        "model_index.json",
        "transformer/config.json",
        "vae/config.json",
        "text_encoder/config.json",
    ):
        assert name in names
    build = json.loads((ASSET_DIR / "build.json").read_text())
    assert not build["quick"] and build["classifier"]["held_out_accuracy"] >= 0.97
    assert 100_000 <= build["transformer"]["params"] <= 400_000


# -- classifier and metrics -------------------------------------------------------------------------------


def test_classifier_held_out_accuracy():
    images, labels = real_digits("test")
    # a fifth of every digit, held out from the classifier, the VAE and the transformer
    assert len(labels) == 355 and torch.bincount(labels).tolist() == [35, 36, 35, 36, 36, 36, 36, 35, 34, 36]
    assert prompt_accuracy(images, labels) >= 0.97
    assert classify(images).dtype == torch.long and classify(images[:, :1]).equal(classify(images))
    train, _ = real_digits("train")
    assert len(train) + len(images) == 1797 and images.min() >= 0 and images.max() <= 1
    assert images.shape == (355, 3, 32, 32) and torch.equal(images[:, 0], images[:, 2])
    with pytest.raises(InputError):
        load_classifier(ROOT)


def test_frechet_distance_separates_real_from_noise():
    images, _ = real_digits("all")
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    half_a, half_b = images[order[:600]], images[order[600:1200]]
    real_vs_real = fd_between(half_a, half_b)
    noise = torch.rand((600, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    real_vs_noise = fd_between(half_a, noise)
    assert real_vs_real < 0.05 * real_vs_noise and real_vs_noise > 10
    feats = features(half_a)
    assert feats.dtype == torch.float64 and feats.shape[0] == 600
    assert frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_values_and_small_samples():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    # two Gaussians with identity covariance: the distance is the squared distance of the means
    assert frechet_distance(a, a + np.array([1.0, 2.0, 0.0])) == pytest.approx(5.0, rel=1e-6)
    # a diagonal case in closed form: (sqrt(4) - sqrt(1))^2 per dimension
    b = rng.normal(size=(200_000, 2))
    assert frechet_distance(b, 2 * b) == pytest.approx(2.0, rel=1e-2)
    # fewer samples than features: singular covariances, still a finite, symmetric, non-negative value
    x, y = rng.normal(size=(10, 64)), rng.normal(size=(12, 64))
    d = frechet_distance(x, y)
    assert np.isfinite(d) and d > 0 and d == pytest.approx(frechet_distance(y, x), rel=1e-6)
    with pytest.raises(ValueError):
        frechet_distance(x[:1], y)
    with pytest.raises(ValueError):
        frechet_distance(x, y[:, :3])


@pytest.mark.parametrize(
    ("prompt", "digit"),
    [
        ("a handwritten digit seven", 7),
        ("The digit 7", 7),
        ("SEVEN", 7),
        ("zero", 0),
        ("a 0 drawn with a pen", 0),
        ("the number nine, nine again", 9),
        ("seven (7)", 7),
        ("a handwritten digit", None),
        ("", None),
        ("the number 10", None),
        ("ten", None),
        ("a three and a four", None),
        ("someone wrote it", None),  # "one" inside a word is not a digit
        ("a digit 3.", 3),
    ],
)
def test_digit_of_prompt(prompt, digit):
    assert digit_of_prompt(prompt) == digit


def test_digit_prompts_order():
    prompts, digits = digit_prompts(2)
    assert prompts[:3] == ["a handwritten digit zero", "a handwritten digit zero", "a handwritten digit one"]
    assert digits.tolist() == [d for d in range(10) for _ in range(2)]
    assert [digit_of_prompt(p) for p in prompts] == digits.tolist()


# -- the build script -------------------------------------------------------------------------------------


def test_quick_build_writes_a_loadable_world(tmp_path):
    out = tmp_path / "digits"
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_digits.py"), "--quick", "--out", str(out), "--seed", "3"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    build = json.loads((out / "build.json").read_text())
    assert build["seed"] == 3 and build["quick"] and 0 <= build["evaluation"]["prompt_accuracy"] <= 1
    assert set(build["seconds"]) >= {"classifier", "vae", "transformer", "total"}
    loaded = get_adapter("digits").load(str(out))
    assert loaded.spec["source"] == str(out.resolve())
    assert loaded.parts["latent_shape"] == (4, 8, 8) and loaded.parts["image_size"] == 32
    # the VAE's scaling factor was set from the data, not left at 1
    assert loaded.parts["vae"].config.scaling_factor != 1.0
    classifier = load_classifier(out)
    assert classify(real_digits("test")[0][:4], classifier).shape == (4,)
    # the script replaces an earlier build, never an unrelated folder
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    refused = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_digits.py"), "--quick", "--out", str(tmp_path / "precious")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode != 0 and "not an earlier digits build" in refused.stderr
    assert (tmp_path / "precious" / "notes.txt").read_text() == "keep me"
