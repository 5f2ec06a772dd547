"""Model adapters on tiny configs of the real classes: loading, specs, sampling, distillation data."""

from __future__ import annotations

import json
import sysconfig
from fnmatch import fnmatchcase
from pathlib import Path

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, SanaPipeline
from PIL import Image
from torch import nn
from transformers import AutoTokenizer

from fraqat_deploy.errors import ConfigError, InputError
from fraqat_deploy.models import DistillData, LoadedModel, get_adapter, registered_models
from fraqat_deploy.models.gemma import stdlib_source_files
from fraqat_deploy.models.sampler import (
    PromptEmbeds,
    decode,
    encode_images,
    encode_prompts,
    euler_sample,
    flow_sigmas,
    generate,
    guided_velocity,
    sampling_noise,
)
from fraqat_deploy.models.sana import DEFAULT_PROMPTS
from fraqat_deploy.models.tokenizers import BOS_ID, EOS_ID, build_byte_tokenizer, build_caption_tokenizer

# What each registered adapter must look like; a registered model missing here fails the suite.
EXPECTED = {
    "sana": {
        "quant_targets": ("linear", "conv1x1"),
        "output_shape": lambda rows: rows["hidden_states"].shape,
        "ff": ["transformer_blocks.0.ff.conv_inverted", "transformer_blocks.1.ff.conv_point"],
        "attn": ["transformer_blocks.0.attn1.to_q", "transformer_blocks.1.attn2.to_out.0"],
        "last": ["proj_out"],
        "blocks": "transformer_blocks.",
        "block_layers": 2 * (4 + 4 + 2),  # attn1 q/k/v/out, attn2 q/k/v/out, ff 1x1 convs
    },
    "gemma": {
        "quant_targets": ("linear",),
        "output_shape": lambda rows: (*rows["input_ids"].shape, 260),
        "ff": ["model.layers.0.mlp.gate_proj", "model.layers.1.mlp.down_proj"],
        "attn": ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.o_proj"],
        "last": ["lm_head"],
        "blocks": "model.layers.",
        "block_layers": 2 * (4 + 3),  # q/k/v/o, gate/up/down
    },
    "tiny-gemma": {
        "quant_targets": ("linear",),
        "output_shape": lambda rows: (*rows["input_ids"].shape, 260),
        "ff": ["model.layers.0.mlp.gate_proj", "model.layers.3.mlp.down_proj"],
        "attn": ["model.layers.0.self_attn.q_proj", "model.layers.3.self_attn.o_proj"],
        "last": ["lm_head"],
        "blocks": "model.layers.",
        "block_layers": 4 * (4 + 3),
        "builtin": True,  # load(None) is the committed model, not an error
    },
    "digits": {
        "quant_targets": ("linear", "conv1x1"),
        "output_shape": lambda rows: rows["hidden_states"].shape,
        "ff": ["transformer_blocks.0.ff.conv_inverted", "transformer_blocks.3.ff.conv_point"],
        "attn": ["transformer_blocks.0.attn1.to_q", "transformer_blocks.3.attn2.to_out.0"],
        "last": ["proj_out"],
        "blocks": "transformer_blocks.",
        "block_layers": 4 * (4 + 4 + 2),
        "builtin": True,
    },
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny() -> dict[str, LoadedModel]:
    return {name: get_adapter(name).load(None, tiny=True, seed=0) for name in registered_models()}


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _modules(model: LoadedModel) -> list[str]:
    return [name for name, _ in model.student.named_modules()]


def _matching(names: list[str], patterns: tuple[str, ...]) -> list[str]:
    return [n for n in names if any(fnmatchcase(n, p) for p in patterns)]


# -- registry and interface -------------------------------------------------------------------------------


def test_registry_lists_both_and_each_has_expectations():
    assert {"gemma", "sana"} <= set(registered_models())
    assert set(EXPECTED) == set(registered_models())
    with pytest.raises(ConfigError) as err:
        get_adapter("flux")
    assert "gemma, sana" in err.value.fix


@pytest.mark.parametrize("name", registered_models())
def test_tiny_forward_shape(tiny, name):
    adapter, model = get_adapter(name), tiny[name]
    assert adapter.quant_targets == EXPECTED[name]["quant_targets"] and adapter.default_loss == "mse"
    data = adapter.distill_data(model, None, n_train=6, n_val=2, seed=0)
    with torch.no_grad():
        out = adapter.forward(model.student, data.val)
    assert tuple(out.shape) == tuple(EXPECTED[name]["output_shape"](data.val))
    assert torch.isfinite(out).all() and out.std() > 0


@pytest.mark.parametrize("name", registered_models())
def test_patterns_match_intended_modules(tiny, name):
    adapter, names = get_adapter(name), _modules(tiny[name])
    expected = EXPECTED[name]
    ff, attn = _matching(names, adapter.ff_patterns), _matching(names, adapter.attn_patterns)
    assert set(expected["ff"]) <= set(ff) and not set(ff) & set(attn)
    assert set(expected["attn"]) <= set(attn)
    assert _matching(names, adapter.last_layer_patterns) == expected["last"]
    # whole blocks: every parameter inside the repeated blocks, nothing outside them
    owners = {p.rpartition(".")[0] for p, _ in tiny[name].student.named_parameters()}
    in_blocks = {o for o in owners if o.startswith(expected["blocks"])}
    assert in_blocks and set(_matching(sorted(owners), adapter.block_patterns)) == in_blocks
    # every quantizable layer of the repeated blocks belongs to either the feed-forward or the attention group
    quantizable = [
        n
        for n, m in tiny[name].student.named_modules()
        if n.startswith(expected["blocks"])
        and (isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)))
    ]
    assert len(quantizable) == expected["block_layers"] and set(quantizable) <= set(ff) | set(attn)


@pytest.mark.parametrize("name", registered_models())
def test_spec_rebuilds_same_weights(tiny, name):
    adapter, model = get_adapter(name), tiny[name]
    spec = json.loads(json.dumps(model.spec))
    again = adapter.load_from_spec(spec)
    assert _same_weights(model.student, again.student)
    for part in ("text_encoder", "vae"):
        if part in model.parts:
            assert _same_weights(model.parts[part], again.parts[part])
    other = adapter.load(None, tiny=True, seed=1)
    assert not _same_weights(model.student, other.student)
    # building the model must not disturb the caller's random stream
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    adapter.load(None, tiny=True, seed=5)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("name", registered_models())
def test_user_errors(tmp_path, name):
    adapter = get_adapter(name)
    with pytest.raises(InputError) as err:
        adapter.load(str(tmp_path / "no" / "such-model"))
    assert "does not exist" in err.value.message and "hub id" in err.value.fix
    with pytest.raises(InputError) as err:
        adapter.load(str(tmp_path))  # an existing folder that is no model
    assert err.value.fix
    if not EXPECTED[name].get("builtin"):
        with pytest.raises(InputError):
            adapter.load(None)
    with pytest.raises(ConfigError):
        adapter.load(str(tmp_path), tiny=True)
    with pytest.raises(ConfigError):
        adapter.load_from_spec({"adapter": "other", "kind": "tiny"})
    with pytest.raises(ConfigError):
        adapter.distill_data(adapter.load(None, tiny=True), None, n_train=0, n_val=1, seed=0)


# -- loading real folders ---------------------------------------------------------------------------------


def test_sana_component_folder_loads(tiny, tmp_path):
    """A folder of separately saved components (as found on the hub) loads with the same weights."""
    model = tiny["sana"]
    model.student.save_pretrained(tmp_path / "transformer")
    model.parts["text_encoder"].save_pretrained(tmp_path / "text_encoder")
    model.parts["tokenizer"].save_pretrained(tmp_path / "tokenizer")
    model.parts["vae"].save_pretrained(tmp_path / "vae")
    adapter = get_adapter("sana")
    loaded = adapter.load(str(tmp_path))
    assert loaded.spec == {"adapter": "sana", "kind": "pretrained", "source": str(tmp_path.resolve())}
    # without a scheduler config or our settings: SanaPipeline's defaults, capped by the text encoder
    assert (loaded.parts["flow_shift"], loaded.parts["steps"], loaded.parts["max_tokens"]) == (3.0, 20, 256)
    assert _same_weights(model.student, loaded.student)
    assert _same_weights(model.parts["text_encoder"], loaded.parts["text_encoder"])
    assert _same_weights(model.parts["vae"], loaded.parts["vae"])
    for key in ("latent_shape", "image_size", "timestep_scale"):
        assert loaded.parts[key] == model.parts[key]
    batch = adapter.distill_data(model, None, n_train=4, n_val=0, seed=0).train
    with torch.no_grad():
        assert torch.equal(adapter.forward(model.student, batch), adapter.forward(loaded.student, batch))
    assert _same_weights(loaded.student, adapter.load_from_spec(loaded.spec).student)
    FlowMatchEulerDiscreteScheduler(shift=2.5).save_pretrained(tmp_path / "scheduler")
    assert adapter.load(str(tmp_path)).parts["flow_shift"] == 2.5


@pytest.mark.parametrize("name", registered_models())
def test_save_pretrained_round_trip(tiny, tmp_path, name):
    adapter, model = get_adapter(name), tiny[name]
    adapter.save_pretrained(model, tmp_path / "saved")
    loaded = adapter.load(str(tmp_path / "saved"))
    assert _same_weights(model.student, loaded.student)
    settings = {k: v for k, v in model.parts.items() if isinstance(v, (int, float, tuple))}
    assert settings and {k: loaded.parts[k] for k in settings} == settings
    first = adapter.distill_data(model, None, n_train=5, n_val=2, seed=3)
    again = adapter.distill_data(loaded, None, n_train=5, n_val=2, seed=3)
    for key, value in first.train.items():
        assert torch.equal(value, again.train[key]), key
    # a folder of the other family: digits-Sana writes plain Sana folders, tiny-Gemma plain Gemma ones
    other = "sana" if "gemma" in name else "gemma"
    (tmp_path / "saved" / "fraqat_model.json").write_text(json.dumps({"adapter": other}))
    with pytest.raises(InputError) as err:
        adapter.load(str(tmp_path / "saved"))
    assert other in err.value.message


def test_saved_sana_runs_in_diffusers_pipeline(tiny, tmp_path):
    """Our sampler reproduces diffusers' own SanaPipeline (Euler flow scheduler, same sigmas) exactly."""
    model = tiny["sana"]
    get_adapter("sana").save_pretrained(model, tmp_path)
    pipeline = SanaPipeline.from_pretrained(tmp_path)
    pipeline.set_progress_bar_config(disable=True)
    prompts, steps = ["a handwritten digit seven", "a handwritten digit one"], 4
    noise = sampling_noise(2, model.parts["latent_shape"], torch.Generator().manual_seed(11))
    theirs = pipeline(
        prompt=prompts,
        sigmas=torch.linspace(1, 0, steps + 1)[:-1].tolist(),
        guidance_scale=model.parts["guidance"],
        height=model.parts["image_size"],
        width=model.parts["image_size"],
        max_sequence_length=model.parts["max_tokens"],
        complex_human_instruction=None,
        use_resolution_binning=False,
        latents=noise,
        output_type="pt",
    ).images
    ours = generate(model, prompts, seed=11, steps=steps)
    assert torch.allclose(ours, theirs, atol=1e-5) and ours.std() > 0.01


def test_sana_folder_missing_parts(tmp_path):
    (tmp_path / "transformer").mkdir()
    (tmp_path / "tokenizer").mkdir()
    with pytest.raises(InputError) as err:
        get_adapter("sana").load(str(tmp_path))
    assert "text_encoder/" in err.value.message and "vae/" in err.value.message
    assert "transformer/" not in err.value.message and "save_pretrained" in err.value.fix


def test_gemma_folder_round_trip(tiny, tmp_path):
    model = tiny["gemma"]
    model.student.save_pretrained(tmp_path)
    model.parts["tokenizer"].save_pretrained(tmp_path)
    adapter = get_adapter("gemma")
    loaded = adapter.load(str(tmp_path))
    # no settings file: the pretrained default, capped by the model's positions
    assert loaded.spec["source"] == str(tmp_path.resolve()) and loaded.parts["seq_len"] == 256
    assert _same_weights(model.student, loaded.student)
    text = "def f(x):\n    return x + 1\n"
    assert loaded.parts["tokenizer"](text)["input_ids"] == model.parts["tokenizer"](text)["input_ids"]
    ids = torch.tensor([model.parts["tokenizer"](text)["input_ids"]])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with torch.no_grad():
        assert torch.equal(adapter.forward(model.student, batch), adapter.forward(loaded.student, batch))


def test_gemma_folder_of_another_model(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(InputError) as err:
        get_adapter("gemma").load(str(tmp_path))
    assert "'llama'" in err.value.message and "Gemma-2" in err.value.fix


# -- tokenizers -------------------------------------------------------------------------------------------


def test_byte_tokenizer_round_trip(tmp_path):
    tok = build_byte_tokenizer()
    source = next(p for p in stdlib_source_files() if p.name == "__init__.py" and p.parent.name == "json")
    text = source.read_text(encoding="utf-8")
    assert text.isascii()
    ids = tok(text)["input_ids"]
    assert ids[0] == BOS_ID and len(ids) == len(text.encode()) + 1
    assert tok.decode(ids, skip_special_tokens=True) == text
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again(text)["input_ids"] == ids and again.decode(ids, skip_special_tokens=True) == text
    assert (again.pad_token_id, again.eos_token_id, again.bos_token_id) == (0, EOS_ID, BOS_ID)


def test_caption_tokenizer_knows_the_prompts(tmp_path):
    tok = build_caption_tokenizer()
    for prompt in DEFAULT_PROMPTS:
        ids = tok(prompt)["input_ids"]
        assert ids[0] == BOS_ID and tok.unk_token_id not in ids, prompt
    assert tok("A Handwritten digit SEVEN")["input_ids"] == tok("a handwritten digit seven")["input_ids"]
    tok.save_pretrained(tmp_path)
    assert (
        AutoTokenizer.from_pretrained(tmp_path)(list(DEFAULT_PROMPTS))["input_ids"]
        == tok(list(DEFAULT_PROMPTS))["input_ids"]
    )


# -- sampler ----------------------------------------------------------------------------------------------


def test_flow_sigmas_values():
    assert torch.allclose(flow_sigmas(4, 3.0), torch.tensor([1.0, 0.9, 0.75, 0.5, 0.0]), atol=1e-7)
    assert torch.allclose(flow_sigmas(4, 1.0), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))


def _embeds(model: LoadedModel, prompts: list[str]) -> tuple[PromptEmbeds, PromptEmbeds]:
    parts = model.parts
    cond = encode_prompts(parts["text_encoder"], parts["tokenizer"], prompts, parts["max_tokens"])
    uncond = encode_prompts(
        parts["text_encoder"], parts["tokenizer"], [""] * len(prompts), parts["max_tokens"]
    )
    return cond, uncond


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_sampler_matches_diffusers_scheduler(tiny, shift):
    model, steps, guidance = tiny["sana"], 6, 4.5
    cond, uncond = _embeds(model, ["a handwritten digit seven", "a handwritten digit two"])
    noise = torch.randn((2, *model.parts["latent_shape"]), generator=torch.Generator().manual_seed(0))
    ours = euler_sample(
        model.student,
        noise,
        cond,
        uncond,
        steps=steps,
        guidance=guidance,
        shift=shift,
        return_trajectory=True,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    # our sigmas are the scheduler's when it is given the unshifted grid without its final 0
    scheduler.set_timesteps(sigmas=torch.linspace(1, 0, steps + 1)[:-1].numpy())
    assert torch.allclose(scheduler.sigmas, flow_sigmas(steps, shift), rtol=0, atol=1e-7)
    x = noise.clone()
    with torch.no_grad():
        for i, t in enumerate(scheduler.timesteps):
            timestep = t.expand(2)
            assert torch.allclose(ours.trajectory[i][0], x, atol=1e-6)
            assert torch.allclose(ours.trajectory[i][1], timestep, atol=1e-4)
            v = guided_velocity(model.student, x, timestep, cond, uncond, guidance)
            x = scheduler.step(v, t, x, return_dict=False)[0]
    assert torch.allclose(ours.latents, x, atol=1e-5)
    assert (ours.latents - noise).abs().mean() > 0.1  # the model actually moved the latents
    # the scheduler's default grid is not ours: its last step starts at a twice-shifted sigma_min (~0.009)
    default = FlowMatchEulerDiscreteScheduler(shift=3.0)
    default.set_timesteps(steps)
    assert default.sigmas[-2] < 0.01 and flow_sigmas(steps, 3.0)[-2] == pytest.approx(3 / 8)


def test_guidance_combines_conditional_and_unconditional(tiny):
    model = tiny["sana"]
    cond, uncond = _embeds(model, ["a handwritten digit seven"])
    x, t = torch.randn(1, *model.parts["latent_shape"]), torch.tensor([700.0])
    with torch.no_grad():
        v_cond = guided_velocity(model.student, x, t, cond, None, 1.0)
        v_uncond = guided_velocity(model.student, x, t, uncond, None, 1.0)
        v = guided_velocity(model.student, x, t, cond, uncond, 3.0)
    assert torch.allclose(v, v_uncond + 3.0 * (v_cond - v_uncond), atol=1e-5)
    assert not torch.allclose(v_cond, v_uncond)


def test_generate_and_decode(tiny):
    model = tiny["sana"]
    images = generate(model, ["a handwritten digit one", "a handwritten digit two"], seed=3, steps=3)
    assert images.shape == (2, 3, 32, 32) and images.min() >= 0 and images.max() <= 1 and images.std() > 0
    assert torch.equal(
        images, generate(model, ["a handwritten digit one", "a handwritten digit two"], seed=3, steps=3)
    )
    assert not torch.equal(
        images, generate(model, ["a handwritten digit one", "a handwritten digit two"], seed=4, steps=3)
    )
    latents = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        raw = model.parts["vae"].decode(latents).sample
    assert torch.allclose(decode(model.parts["vae"], latents), (raw / 2 + 0.5).clamp(0, 1))


# -- distillation data ------------------------------------------------------------------------------------


def test_sana_default_rows_are_teacher_trajectories(tiny):
    model, adapter = tiny["sana"], get_adapter("sana")
    data = adapter.distill_data(model, None, n_train=30, n_val=10, seed=7)
    parts = model.parts
    shapes = {k: tuple(v.shape) for k, v in data.train.items()}
    assert shapes == {
        "hidden_states": (30, 4, 8, 8),
        "timestep": (30,),
        "encoder_hidden_states": (30, parts["max_tokens"], 32),
        "encoder_attention_mask": (30, parts["max_tokens"]),
    }
    assert data.train["timestep"].dtype == torch.float32 and DistillData.rows(data.val) == 10
    # the timesteps are the sampler's, and the first step starts from unit-variance noise
    grid = flow_sigmas(parts["steps"], parts["flow_shift"])[:-1] * 1000
    every = torch.cat([data.train["timestep"], data.val["timestep"]])
    assert all(torch.isclose(grid, t).any() for t in every)
    # the embeddings are the prompts' own
    cond, _ = _embeds(model, list(DEFAULT_PROMPTS))
    row = data.train["encoder_hidden_states"][0]
    assert any(torch.equal(row, e) for e in cond.embeds)
    again = adapter.distill_data(model, None, n_train=30, n_val=10, seed=7)
    for split in ("train", "val"):
        for key, value in getattr(data, split).items():
            assert torch.equal(value, getattr(again, split)[key]), key
    other = adapter.distill_data(model, None, n_train=30, n_val=10, seed=8)
    assert not torch.equal(data.train["hidden_states"], other.train["hidden_states"])


def test_sana_prompt_file(tiny, tmp_path):
    model, adapter = tiny["sana"], get_adapter("sana")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n\n  a blue square  \n")
    data = adapter.distill_data(model, prompts, n_train=12, n_val=3, seed=0)
    tok = model.parts["tokenizer"]
    lengths = {len(tok(p)["input_ids"]) for p in ("a red circle", "a blue square")}
    assert set(data.train["encoder_attention_mask"].sum(1).tolist()) <= lengths
    assert "2 prompts" in data.description
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(InputError) as err:
        adapter.distill_data(model, tmp_path / "empty.txt", n_train=2, n_val=1, seed=0)
    assert "one prompt per line" in err.value.fix
    with pytest.raises(InputError):
        adapter.distill_data(model, tmp_path / "missing.txt", n_train=2, n_val=1, seed=0)
    (tmp_path / "prompts.csv").write_text("a,b\n")
    with pytest.raises(InputError):
        adapter.distill_data(model, tmp_path / "prompts.csv", n_train=2, n_val=1, seed=0)


def test_sana_image_caption_folder(tiny, tmp_path):
    model, adapter = tiny["sana"], get_adapter("sana")
    colors, words = [(255, 0, 0), (0, 255, 0), (0, 0, 255)], ["one", "two", "three"]
    for i, color in enumerate(colors):
        Image.new("RGB", (40, 48), color).save(tmp_path / f"{i}.png")
        (tmp_path / f"{i}.txt").write_text(f"a handwritten digit {words[i]}\n")
    data = adapter.distill_data(model, tmp_path, n_train=20, n_val=4, seed=0)
    assert tuple(data.train["hidden_states"].shape) == (20, 4, 8, 8)
    assert "3 images" in data.description
    rows = {k: torch.cat([data.train[k], data.val[k]]) for k in data.train}
    sigma = rows["timestep"] / 1000
    assert ((sigma > 0) & (sigma <= 1)).all() and sigma.unique().numel() == 24
    # each row is its caption's image, encoded by the VAE and noised with unit Gaussian noise
    captions, _ = _embeds(model, [f"a handwritten digit {w}" for w in words])
    pixels = torch.tensor(colors, dtype=torch.float32)[:, :, None, None].expand(3, 3, 32, 32) / 255
    x0 = encode_images(model.parts["vae"], pixels)
    which = [
        next(i for i in range(3) if torch.equal(e, captions.embeds[i])) for e in rows["encoder_hidden_states"]
    ]
    assert sorted(which.count(i) for i in range(3)) == [8, 8, 8]  # every image as often as the others
    s = sigma[:, None, None, None]
    noise = (rows["hidden_states"] - (1 - s) * x0[which]) / s
    assert noise.mean().abs() < 0.1 and 0.9 < noise.std() < 1.1
    again = adapter.distill_data(model, tmp_path, n_train=20, n_val=4, seed=0)
    assert torch.equal(data.train["hidden_states"], again.train["hidden_states"])
    (tmp_path / "2.txt").unlink()
    with pytest.raises(InputError) as err:
        adapter.distill_data(model, tmp_path, n_train=5, n_val=2, seed=0)
    assert "2.txt" in err.value.fix
    empty = tmp_path / "none"
    empty.mkdir()
    with pytest.raises(InputError):
        adapter.distill_data(model, empty, n_train=5, n_val=2, seed=0)


def _stream(text: str) -> list[int]:
    return [BOS_ID, *(4 + b for b in text.encode()), EOS_ID]


def _is_slice(row: list[int], stream: list[int], seq_len: int) -> bool:
    return any(stream[i : i + seq_len] == row for i in range(0, len(stream) - seq_len + 1, seq_len))


def test_gemma_default_corpus(tiny):
    model, adapter = tiny["gemma"], get_adapter("gemma")
    data = adapter.distill_data(model, None, n_train=40, n_val=8, seed=0)
    ids = data.train["input_ids"]
    assert ids.shape == (40, 64) and ids.dtype == torch.long
    assert torch.equal(data.train["attention_mask"], torch.ones_like(ids))
    assert data.val["input_ids"].shape == (8, 64)
    assert "standard library" in data.description
    # every row is a piece of stdlib source: its bytes between special tokens occur in some file
    sources = [p.read_bytes() for p in stdlib_source_files()[:64]]
    for row in ids[:8].tolist():
        pieces = bytes(t - 4 if t >= 4 else 0 for t in row).split(b"\0")
        assert all(any(piece in src for src in sources) for piece in pieces if piece)
    again = adapter.distill_data(model, None, n_train=40, n_val=8, seed=0)
    assert torch.equal(ids, again.train["input_ids"]) and torch.equal(
        data.val["input_ids"], again.val["input_ids"]
    )
    assert not torch.equal(
        ids, adapter.distill_data(model, None, n_train=40, n_val=8, seed=1).train["input_ids"]
    )
    rows = {tuple(r) for r in torch.cat([ids, data.val["input_ids"]]).tolist()}
    assert len(rows) == 48  # distinct rows, none shared between train and validation


def test_gemma_text_inputs(tiny, tmp_path):
    model, adapter = tiny["gemma"], get_adapter("gemma")
    text = "".join(f"line {i}: the quick brown fox jumps over the lazy dog\n" for i in range(40))
    (tmp_path / "a.txt").write_text(text)
    data = adapter.distill_data(model, tmp_path / "a.txt", n_train=20, n_val=5, seed=0)
    stream = _stream(text)
    assert all(_is_slice(row, stream, 64) for row in data.train["input_ids"].tolist())
    docs = ["first document " * 30, "second document " * 30]
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in docs) + "\n\n")
    data = adapter.distill_data(model, tmp_path / "b.jsonl", n_train=8, n_val=2, seed=0)
    stream = _stream(docs[0]) + _stream(docs[1])
    assert all(_is_slice(row, stream, 64) for row in data.val["input_ids"].tolist())
    both = adapter.distill_data(model, tmp_path, n_train=30, n_val=5, seed=0)
    assert "3 documents" in both.description
    with pytest.raises(InputError) as err:
        adapter.distill_data(model, tmp_path / "b.jsonl", n_train=100, n_val=5, seed=0)
    assert "fewer rows" in err.value.fix
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(InputError) as err:
        adapter.distill_data(model, tmp_path / "bad.jsonl", n_train=1, n_val=0, seed=0)
    assert "bad.jsonl:2" in err.value.message
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(InputError):
        adapter.distill_data(model, tmp_path / "empty.txt", n_train=1, n_val=0, seed=0)
    with pytest.raises(InputError):
        adapter.distill_data(model, tmp_path / "missing.jsonl", n_train=1, n_val=0, seed=0)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(InputError):
        adapter.distill_data(model, tmp_path / "empty_dir", n_train=1, n_val=0, seed=0)


def test_stdlib_corpus_skips_tests_and_packages():
    files = stdlib_source_files()
    assert len(files) > 100
    root = Path(sysconfig.get_paths()["stdlib"])
    assert not [p for p in files if {"test", "tests", "site-packages"} & set(p.relative_to(root).parts)]
    assert files == stdlib_source_files()


def test_calibration_sampling_in_batches_is_the_one_batch_sampling(tiny):
    """The export makes its calibration trajectories a few prompts at a time (memory at real size): the same
    latents and trajectory as sampling every prompt in one batch."""
    import torch

    from fraqat_deploy.models.sampler import PromptEmbeds, encode_prompts, euler_sample, sampling_noise
    from fraqat_deploy.models.sana_graphs import _sample_in_batches

    model = tiny["sana"]
    parts = model.parts
    prompts = ["a red square", "a blue circle", "a green line", "a dot", "a cat"]
    cond = encode_prompts(parts["text_encoder"], parts["tokenizer"], prompts, parts["max_tokens"])
    uncond = encode_prompts(parts["text_encoder"], parts["tokenizer"], [""], parts["max_tokens"])
    noise = sampling_noise(len(prompts), parts["latent_shape"], torch.Generator().manual_seed(0))
    whole = euler_sample(model.student, noise, cond,
                         PromptEmbeds(uncond.embeds.expand(5, -1, -1), uncond.mask.expand(5, -1)),
                         steps=parts["steps"], guidance=parts["guidance"], shift=parts["flow_shift"],
                         timestep_scale=parts.get("timestep_scale", 1.0), return_trajectory=True)
    parted = _sample_in_batches(model, noise, cond, uncond, batch=2)
    torch.testing.assert_close(parted.latents, whole.latents, rtol=1e-5, atol=1e-5)
    assert len(parted.trajectory) == len(whole.trajectory) == parts["steps"]
    for (x, t), (x_ref, t_ref) in zip(parted.trajectory, whole.trajectory, strict=True):
        torch.testing.assert_close(x, x_ref, rtol=1e-5, atol=1e-5)
        assert torch.equal(t, t_ref)
