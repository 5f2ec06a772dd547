"""digits-Sana: the project's embedded default text-to-image model.

A small Sana pipeline of the real classes (Gemma-2 text encoder, the caption tokenizer,
``SanaTransformer2DModel``, ``AutoencoderDC``) trained on scikit-learn's handwritten digits by
``scripts/build_digits.py`` and committed under ``fraqat_deploy/assets/digits-sana/``, so the whole
toolkit runs offline on a laptop. It is prompted like "a handwritten digit seven" or "the digit 7".
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from fraqat_deploy.models.base import LoadedModel, register_model
from fraqat_deploy.models.builtin import BuiltinModel
from fraqat_deploy.models.sana import SanaAdapter

#: the committed full-precision digits-Sana (a diffusers SanaPipeline folder plus our files)
ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "digits-sana"
#: how specs name the committed model
BUILTIN = "digits-sana"
BUILD_SCRIPT = "scripts/build_digits.py"

# The architecture of digits-Sana; ``load(tiny=True)`` builds it random-initialised, the build script trains
# it. JSON-able (lists, not tuples) because it is copied into LoadedModel.spec.
DIGITS_CONFIG: dict[str, Any] = {
    # random-initialised and frozen: a fixed feature extractor is enough for ten digit names
    "text_encoder": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 16,
        "query_pre_attn_scalar": 16,
        "max_position_embeddings": 64,
    },
    "transformer": {
        "in_channels": 4,
        "out_channels": 4,
        "num_attention_heads": 4,
        "attention_head_dim": 16,
        "num_layers": 4,
        "num_cross_attention_heads": 4,
        "cross_attention_head_dim": 16,
        "cross_attention_dim": 64,
        "caption_channels": 32,
        "mlp_ratio": 2.5,
        "sample_size": 8,
        "patch_size": 1,
        # sin-cos position embeddings: 64 tokens and 4 blocks are too few for the depthwise convolutions
        # alone to tell where a token sits
        "interpolation_scale": 1,
    },
    # 32x32 RGB (grey digits in all channels) <-> 4x8x8 latents
    "vae": {
        "in_channels": 3,
        "latent_channels": 4,
        "attention_head_dim": 8,
        "encoder_block_types": "ResBlock",
        "decoder_block_types": "ResBlock",
        "encoder_block_out_channels": [16, 32, 64],
        "decoder_block_out_channels": [16, 32, 64],
        "encoder_layers_per_block": [1, 1, 1],
        "decoder_layers_per_block": [1, 1, 1],
        "encoder_qkv_multiscales": [[], [], []],
        "decoder_qkv_multiscales": [[], [], []],
    },
    "sampler": {"steps": 8, "guidance": 2.0, "flow_shift": 1.5, "max_tokens": 16},
}


@register_model("digits")
class DigitsAdapter(BuiltinModel, SanaAdapter):
    example_prompt = "a handwritten digit seven"
    """A Sana adapter whose default model is the committed digits-Sana.

    ``load()`` (or ``load(None)``) is the committed model; ``load(folder)`` any Sana folder (the build script's
    output, or a ``save_pretrained`` one); ``load(tiny=True, seed=...)`` the same architecture random-initialised
    (what the build script trains), for tests that need the shapes and not the training. Its default
    distillation prompts are the Sana adapter's, which are already digit prompts ("a handwritten digit seven").
    """

    asset_dir = ASSET_DIR
    asset_marker = "transformer"
    builtin = BUILTIN
    build_script = BUILD_SCRIPT
    tiny_config = DIGITS_CONFIG
    tiny_with_source_fix = "drop the source to build the random-initialised digits, or drop --tiny to load it"

    def weights_sha256(self, folder: Path) -> str:
        return weights_sha256(folder)

    def _load_pretrained(self, source: str) -> LoadedModel:
        # the folder is a plain Sana folder (its settings file says "sana"), read by the Sana adapter's code;
        # only the name and the spec are ours
        model = SanaAdapter().load(source)
        return LoadedModel(self.name, model.student, model.parts, {**model.spec, "adapter": self.name})

    def save_pretrained(self, model: LoadedModel, folder: Path) -> None:
        """A plain Sana folder, so both the ``sana`` and the ``digits`` adapters load it."""
        SanaAdapter().save_pretrained(model, folder)


def weights_sha256(folder: Path) -> str:
    """One hash over the weights of the three networks (transformer, text encoder, VAE) of a Sana folder."""
    digest = hashlib.sha256()
    for path in sorted(Path(folder).glob("*/*.safetensors")):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()
