"""Sana text-to-image: diffusers' ``SanaTransformer2DModel`` is the student; the Gemma-2 text encoder,
its tokenizer and the DC-AE VAE stay frozen around it."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderDC, FlowMatchEulerDiscreteScheduler, SanaPipeline, SanaTransformer2DModel
from PIL import Image
from torch import nn
from transformers import AutoTokenizer, Gemma2Config, Gemma2Model

from fraqat_deploy.errors import InputError
from fraqat_deploy.models.base import (
    Component,
    DistillData,
    LoadedModel,
    ModelAdapter,
    check_row_counts,
    freeze,
    read_settings,
    register_model,
    resolve_source,
    split_rows,
    write_settings,
)
from fraqat_deploy.models.half import checkpoint_dtype, keep_half
from fraqat_deploy.models.sampler import (
    NUM_TRAIN_TIMESTEPS,
    PromptEmbeds,
    encode_images,
    encode_prompts,
    euler_sample,
    sampling_noise,
)
from fraqat_deploy.models.sampler import (
    generate as generate_images,
)
from fraqat_deploy.models.sana_graphs import sana_bench_inputs, sana_components
from fraqat_deploy.models.tokenizers import BOS_ID, EOS_ID, NUMBER_WORDS, PAD_ID, build_caption_tokenizer
from fraqat_deploy.ui import task

HUB_EXAMPLE = "Efficient-Large-Model/Sana_600M_1024px_diffusers"
PIPELINE_FOLDERS = ("transformer", "text_encoder", "tokenizer", "vae")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: prompts (or images) per batch when making distillation rows; the CFG batch is twice this
ROW_BATCH = 16

# JSON-able (lists, not tuples) because it is copied into LoadedModel.spec.
TINY_CONFIG: dict[str, Any] = {
    "text_encoder": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 16,
        "query_pre_attn_scalar": 16,
        "max_position_embeddings": 256,
    },
    "transformer": {
        "in_channels": 4,
        "out_channels": 4,
        "num_attention_heads": 2,
        "attention_head_dim": 8,
        "num_layers": 2,
        "num_cross_attention_heads": 2,
        "cross_attention_head_dim": 8,
        "cross_attention_dim": 16,
        "caption_channels": 32,
        "mlp_ratio": 2.5,
        "sample_size": 8,
        "patch_size": 1,
    },
    # three stages: 32x32 images <-> 4x8x8 latents
    "vae": {
        "in_channels": 3,
        "latent_channels": 4,
        "attention_head_dim": 8,
        "encoder_block_types": "ResBlock",
        "decoder_block_types": "ResBlock",
        "encoder_block_out_channels": [8, 16, 32],
        "decoder_block_out_channels": [8, 16, 32],
        "encoder_layers_per_block": [1, 1, 1],
        "decoder_layers_per_block": [1, 1, 1],
        "encoder_qkv_multiscales": [[], [], []],
        "decoder_qkv_multiscales": [[], [], []],
    },
    "sampler": {"steps": 10, "guidance": 4.5, "flow_shift": 3.0, "max_tokens": 16},
}
#: diffusers' SanaPipeline defaults, for pretrained folders without our settings file or a scheduler config
PRETRAINED_SAMPLER: dict[str, Any] = {"steps": 20, "guidance": 4.5, "flow_shift": 3.0, "max_tokens": 300}
#: sampler settings kept in our settings file; flow_shift lives in the scheduler config instead
SAVED_SAMPLER_KEYS = ("steps", "guidance", "max_tokens")

_TEMPLATES = (
    "a handwritten digit {}",
    "a handwritten number {}",
    "the digit {}, written with a pen",
    "a small drawing of the number {}",
)
DEFAULT_PROMPTS: tuple[str, ...] = tuple(t.format(w) for t in _TEMPLATES for w in NUMBER_WORDS[:10])


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def _sampler_parts(sampler: dict[str, Any], transformer: SanaTransformer2DModel, vae: AutoencoderDC) -> dict:
    size = int(transformer.config.sample_size)
    return {
        "steps": int(sampler["steps"]),
        "guidance": float(sampler["guidance"]),
        "flow_shift": float(sampler["flow_shift"]),
        "max_tokens": int(sampler["max_tokens"]),
        "latent_shape": (int(transformer.config.in_channels), size, size),
        "image_size": size * int(vae.spatial_compression_ratio),
        "timestep_scale": float(transformer.config.timestep_scale),
    }


def _pretrained_flow_shift(where: str) -> float:
    try:
        config = FlowMatchEulerDiscreteScheduler.load_config(where, subfolder="scheduler")
    except (OSError, ValueError):
        return PRETRAINED_SAMPLER["flow_shift"]
    # Sana ships a DPM-Solver config whose flow_shift is the same shift
    return float(config.get("flow_shift") or config.get("shift") or PRETRAINED_SAMPLER["flow_shift"])


@register_model("sana")
class SanaAdapter(ModelAdapter):
    # GLUMBConv's 1x1 convolutions are Linear layers over channels
    quant_targets = ("linear", "conv1x1")
    default_loss = "mse"
    ff_patterns = ("*.ff.*",)
    attn_patterns = ("*.attn1.*", "*.attn2.*")
    block_patterns = ("transformer_blocks.*",)
    last_layer_patterns = ("proj_out",)

    # -- loading -------------------------------------------------------------------------------------------

    tiny_config = TINY_CONFIG
    missing_source = (
        "no Sana model given",
        f"pass a diffusers Sana pipeline folder or hub id (e.g. {HUB_EXAMPLE}), or ask for the tiny model",
    )

    def _build_tiny(self, config: dict[str, Any], seed: int) -> LoadedModel:
        tokenizer = build_caption_tokenizer()
        text_config = Gemma2Config(
            vocab_size=len(tokenizer),
            pad_token_id=PAD_ID,
            eos_token_id=EOS_ID,
            bos_token_id=BOS_ID,
            attn_implementation="eager",
            **config["text_encoder"],
        )
        # one seed per component, so changing one component's config leaves the others' weights alone
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            text_encoder = Gemma2Model(text_config)
            torch.manual_seed(seed + 1)
            transformer = SanaTransformer2DModel(**config["transformer"])
            torch.manual_seed(seed + 2)
            vae = AutoencoderDC(**config["vae"])
        parts = {
            "text_encoder": freeze(text_encoder),
            "tokenizer": tokenizer,
            "vae": freeze(vae),
            **_sampler_parts(config["sampler"], transformer, vae),
        }
        spec = {"adapter": self.name, "kind": "tiny", "seed": seed, "config": config}
        return LoadedModel(self.name, transformer.eval(), parts, spec)

    def _load_pretrained(self, source: str) -> LoadedModel:
        where, local = resolve_source(source, HUB_EXAMPLE)
        missing = [name + "/" for name in PIPELINE_FOLDERS if local and not (Path(where) / name).is_dir()]
        if missing:
            raise InputError(
                f"'{source}' is not a diffusers Sana pipeline folder (no {', '.join(missing)})",
                f"pass a folder with {', '.join(f + '/' for f in PIPELINE_FOLDERS)} as written by "
                f"SanaPipeline.save_pretrained or downloaded from {HUB_EXAMPLE}",
            )
        try:
            tokenizer = AutoTokenizer.from_pretrained(where, subfolder="tokenizer")
            # a 16-bit text encoder (Sana ships Gemma-2 in bfloat16) stays 16-bit in memory and computes in float32
            # (models/half.py): the same prompt embeddings as a float32 load, at half its memory
            text_encoder = keep_half(Gemma2Model.from_pretrained(
                where, subfolder="text_encoder", dtype=checkpoint_dtype(where, local, "text_encoder"),
                attn_implementation="eager",
            ))
            # low_cpu_mem_usage needs accelerate, which we do not depend on
            transformer = SanaTransformer2DModel.from_pretrained(
                where, subfolder="transformer", torch_dtype=torch.float32, low_cpu_mem_usage=False
            )
            vae = AutoencoderDC.from_pretrained(
                where, subfolder="vae", torch_dtype=torch.float32, low_cpu_mem_usage=False
            )
        except (OSError, ValueError) as err:
            where_hint = "the folder's files" if local else "the hub id, your network and HF token"
            raise InputError(
                f"could not load a Sana pipeline from '{source}': {err}",
                f"check {where_hint}, or download the pipeline and pass its local folder",
            ) from err
        max_tokens = min(PRETRAINED_SAMPLER["max_tokens"], int(text_encoder.config.max_position_embeddings))
        sampler = {
            **PRETRAINED_SAMPLER,
            "max_tokens": max_tokens,
            "flow_shift": _pretrained_flow_shift(where),
            **read_settings(where, local, self.name).get("sampler", {}),
        }
        parts = {
            "text_encoder": freeze(text_encoder),
            "tokenizer": tokenizer,
            "vae": freeze(vae),
            **_sampler_parts(sampler, transformer, vae),
        }
        spec = {"adapter": self.name, "kind": "pretrained", "source": where}
        return LoadedModel(self.name, transformer.eval(), parts, spec)

    def save_pretrained(self, model: LoadedModel, folder: Path) -> None:
        """A diffusers ``SanaPipeline`` folder (loadable by diffusers too) plus our sampler settings."""
        parts = model.parts
        pipeline = SanaPipeline(
            tokenizer=parts["tokenizer"],
            text_encoder=parts["text_encoder"],
            vae=parts["vae"],
            transformer=model.student,
            scheduler=FlowMatchEulerDiscreteScheduler(shift=parts["flow_shift"]),
        )
        folder = Path(folder)
        pipeline.save_pretrained(folder)
        write_settings(folder, self.name, {"sampler": {k: parts[k] for k in SAVED_SAMPLER_KEYS}})

    # -- distillation data ---------------------------------------------------------------------------------

    def distill_data(
        self, model: LoadedModel, data: Path | None, *, n_train: int, n_val: int, seed: int
    ) -> DistillData:
        """``data`` None: the built-in prompts; a .txt file: prompts, one per line. Both become the FP
        teacher's (``model.student``, so call this before quantizing it) own sampling trajectories. A folder:
        images with same-name .txt captions, VAE-encoded and noised at seeded noise levels."""
        check_row_counts(n_train, n_val)
        total = n_train + n_val
        if data is None:
            rows = self._trajectory_rows(model, list(DEFAULT_PROMPTS), total, seed)
            origin = f"{len(DEFAULT_PROMPTS)} built-in prompts"
        else:
            path = Path(data)
            if path.is_dir():
                rows, n_images = self._image_rows(model, path, total, seed)
                return split_rows(
                    rows, n_train, n_val, seed, f"noised latents of {n_images} images in {path}"
                )
            prompts = _read_prompts(path)
            rows = self._trajectory_rows(model, prompts, total, seed)
            origin = f"{len(prompts)} prompts from {path}"
        parts = model.parts
        description = (
            f"teacher sampling trajectories ({parts['steps']} Euler steps, guidance {parts['guidance']}, "
            f"shift {parts['flow_shift']}) for {origin}"
        )
        return split_rows(rows, n_train, n_val, seed, description)

    @torch.no_grad()
    def _trajectory_rows(
        self, model: LoadedModel, prompts: list[str], total: int, seed: int
    ) -> dict[str, torch.Tensor]:
        """Every step's transformer input along the FP teacher's own CFG sampling runs from seeded noise:
        at least ``total`` rows, of which ``split_rows`` picks a seeded subset."""
        parts, teacher = model.parts, model.student
        steps, device = parts["steps"], _device(model.student)
        generator = torch.Generator().manual_seed(seed)
        n_runs = -(-total // steps)
        order = torch.randperm(len(prompts), generator=generator).tolist()
        chosen = [prompts[order[i % len(prompts)]] for i in range(n_runs)]
        empty = self._encode(model, [""], device)
        rows: dict[str, list[torch.Tensor]] = {k: [] for k in _ROW_KEYS}
        with task("teacher trajectories (distillation data)", n_runs) as tick:
            for start in range(0, n_runs, ROW_BATCH):
                batch = chosen[start : start + ROW_BATCH]
                cond = self._encode(model, batch, device)
                uncond = PromptEmbeds(empty.embeds.expand(len(batch), -1, -1), empty.mask.expand(len(batch), -1))
                noise = sampling_noise(len(batch), parts["latent_shape"], generator).to(device)
                result = euler_sample(
                    teacher,
                    noise,
                    cond,
                    uncond,
                    steps=steps,
                    guidance=parts["guidance"],
                    shift=parts["flow_shift"],
                    timestep_scale=parts["timestep_scale"],
                    return_trajectory=True,
                )
                for x_t, timestep in result.trajectory:
                    _append_rows(rows, x_t, timestep, cond)
                tick(len(batch))
        return {k: torch.cat(v).cpu() for k, v in rows.items()}

    @torch.no_grad()
    def _image_rows(
        self, model: LoadedModel, folder: Path, total: int, seed: int
    ) -> tuple[dict[str, torch.Tensor], int]:
        """Captioned images encoded to latents ``x0`` and noised: ``x_t = (1 - sigma) x0 + sigma noise``."""
        images, captions = _read_image_folder(folder)
        parts, vae, cpu = model.parts, model.parts["vae"], torch.device("cpu")
        generator = torch.Generator().manual_seed(seed)
        # every image once before any repeats, in a seeded order; only the images picked are encoded
        rounds = -(-total // len(images))
        pick = torch.cat([torch.randperm(len(images), generator=generator) for _ in range(rounds)])[:total]
        used = pick.unique()
        latents, embeds, masks = [], [], []
        for start in range(0, len(used), ROW_BATCH):
            chunk = used[start : start + ROW_BATCH].tolist()
            pixels = _load_images([images[i] for i in chunk], parts["image_size"]).to(_device(vae))
            latents.append(encode_images(vae, pixels).cpu())
            text = self._encode(model, [captions[i] for i in chunk], cpu)
            embeds.append(text.embeds)
            masks.append(text.mask)
        row_of = torch.searchsorted(used, pick)
        x0 = torch.cat(latents)[row_of]
        noise = torch.randn(x0.shape, generator=generator)
        # sigmas on the sampler's shifted time scale, so training noise levels follow inference's
        t = torch.rand(total, generator=generator)
        shift = parts["flow_shift"]
        sigma = shift * t / (1 + (shift - 1) * t)
        x_t = (1 - sigma[:, None, None, None]) * x0 + sigma[:, None, None, None] * noise
        rows = {
            "hidden_states": x_t.float(),
            "timestep": (sigma * NUM_TRAIN_TIMESTEPS * parts["timestep_scale"]).float(),
            "encoder_hidden_states": torch.cat(embeds)[row_of],
            "encoder_attention_mask": torch.cat(masks)[row_of],
        }
        return rows, len(images)

    def _encode(self, model: LoadedModel, prompts: list[str], device: torch.device) -> PromptEmbeds:
        parts = model.parts
        out = encode_prompts(parts["text_encoder"], parts["tokenizer"], prompts, parts["max_tokens"])
        return PromptEmbeds(out.embeds.to(device), out.mask.to(device))

    # -- forward -------------------------------------------------------------------------------------------

    def components(self, model: LoadedModel, student: nn.Module | None = None, *, n_calibration: int = 8,
                   seed: int = 0, guidance_batch: int = 2) -> list[Component]:
        # the components own the student they get: the FP model's is copied, a given one is taken as it is
        student = student if student is not None else copy.deepcopy(model.student)
        return sana_components(model, student, list(DEFAULT_PROMPTS),
                               n_calibration=n_calibration, seed=seed, guidance_batch=guidance_batch)

    def bench_inputs(self, model: LoadedModel, prompts: list[str], *, seed: int = 0, **options: Any):
        return sana_bench_inputs(model, prompts, seed=seed, steps=options.get("steps"))

    def generate(self, model: LoadedModel, prompts: list[str], *, seed: int = 0,
                 student: nn.Module | None = None, **options: Any) -> torch.Tensor:
        return generate_images(model, prompts, seed=seed, transformer=student, **options)

    def forward(self, student: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return student(
            hidden_states=batch["hidden_states"],
            encoder_hidden_states=batch["encoder_hidden_states"],
            timestep=batch["timestep"],
            encoder_attention_mask=batch["encoder_attention_mask"],
            return_dict=False,
        )[0]


_ROW_KEYS = ("hidden_states", "timestep", "encoder_hidden_states", "encoder_attention_mask")


def _append_rows(
    rows: dict[str, list[torch.Tensor]], x_t: torch.Tensor, timestep: torch.Tensor, cond: PromptEmbeds
) -> None:
    rows["hidden_states"].append(x_t.float())
    rows["timestep"].append(timestep.float())
    rows["encoder_hidden_states"].append(cond.embeds)
    rows["encoder_attention_mask"].append(cond.mask)


def _read_prompts(path: Path) -> list[str]:
    if not path.is_file():
        raise InputError(
            f"distillation data '{path}' does not exist",
            "pass a .txt file of prompts (one per line), a folder of images with .txt captions, or nothing "
            "for the built-in prompts",
        )
    if path.suffix.lower() != ".txt":
        raise InputError(
            f"cannot read Sana distillation data from '{path}'",
            "pass a .txt file of prompts (one per line) or a folder of images with same-name .txt captions",
        )
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise InputError(f"prompt file '{path}' has no prompts", "write one prompt per line")
    return prompts


def _read_image_folder(folder: Path) -> tuple[list[Path], list[str]]:
    images = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise InputError(
            f"no images ({', '.join(IMAGE_SUFFIXES)}) in '{folder}'",
            "put images with same-name .txt captions in the folder (0001.png + 0001.txt), or pass a .txt "
            "file of prompts instead",
        )
    missing = [p for p in images if not p.with_suffix(".txt").is_file()]
    if missing:
        raise InputError(
            f"{len(missing)} of {len(images)} images in '{folder}' have no caption, e.g. '{missing[0]}'",
            f"write each image's caption into a .txt file of the same name ({missing[0].stem}.txt)",
        )
    return images, [p.with_suffix(".txt").read_text(encoding="utf-8").strip() for p in images]


def _load_images(paths: list[Path], size: int) -> torch.Tensor:
    """RGB images, centre-cropped to a square and resized to ``size``, as [B, 3, size, size] in [0, 1]."""
    out = []
    for path in paths:
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
        except OSError as err:
            raise InputError(f"cannot read image '{path}': {err}", "remove or replace the file") from err
        side = min(img.size)
        left, top = (img.width - side) // 2, (img.height - side) // 2
        img = img.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)
        pixels = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(size, size, 3)
        out.append(pixels.permute(2, 0, 1).float() / 255)
    return torch.stack(out)
