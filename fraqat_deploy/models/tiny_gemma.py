"""tiny-Gemma: the project's embedded default language model.

A small ``Gemma2ForCausalLM`` with the byte-level tokenizer, trained by ``scripts/build_tiny_gemma.py`` on
the Python standard library's own source and committed under ``fraqat_deploy/assets/tiny-gemma/``. The
corpus is split by file into a training part (the default distillation data) and a held-out part (for
evaluation only), so a quantized student is never scored on text its teacher or its own training saw.
"""

from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import PreTrainedTokenizerBase

from fraqat_deploy.errors import ConfigError
from fraqat_deploy.models.base import (
    DistillData,
    LoadedModel,
    check_row_counts,
    register_model,
    split_rows,
)
from fraqat_deploy.models.builtin import BuiltinModel
from fraqat_deploy.models.gemma import (
    POOL_FACTOR,
    STDLIB_FILE_CHARS,
    STDLIB_MIN_FILES,
    GemmaAdapter,
    _rows,
    _tokenize,
    stdlib_source_files,
)

#: the committed model folder (a Gemma-2 folder that ``GemmaAdapter.load`` reads as well)
ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny-gemma"
BUILD_FILE = "build.json"
WEIGHTS_FILE = "model.safetensors"
BUILD_SCRIPT = "scripts/build_tiny_gemma.py"
#: how specs name the committed model
BUILTIN = "tiny-gemma"

#: the architecture the build script trains: bigger than the adapter's --tiny config so it learns real
#: structure, small enough to train in minutes on two CPU cores and to commit (about 3 MB of float32)
TINY_GEMMA_CONFIG: dict[str, Any] = {
    "model": {
        "hidden_size": 128,
        "intermediate_size": 384,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "query_pre_attn_scalar": 32,
        "max_position_embeddings": 256,
    },
    "seq_len": 128,
}

Split = Literal["train", "heldout"]
#: percent of the stdlib files held out from training
HELDOUT_PERCENT = 10
# Salted so the choice is independent of the order stdlib_source_files() reads files in (sorted by the unsalted
# sha1 of the same paths): the held-out files are spread evenly over that order.
_SPLIT_SALT = b"tiny-gemma heldout v1:"


def _stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def corpus_split(relative_path: str) -> Split:
    """Which split a stdlib file belongs to, from its path relative to the stdlib root alone: the same file
    lands in the same split on every machine and Python version, whatever other files exist."""
    digest = hashlib.sha1(_SPLIT_SALT + relative_path.encode()).digest()
    return "heldout" if int.from_bytes(digest[:8], "big") % 100 < HELDOUT_PERCENT else "train"


def split_files(split: Split) -> list[Path]:
    """The stdlib source files of one split, in ``stdlib_source_files()``'s fixed order."""
    if split not in ("train", "heldout"):
        raise ValueError(f"unknown split '{split}' (train or heldout)")
    root = _stdlib_root()
    return [p for p in stdlib_source_files() if corpus_split(p.relative_to(root).as_posix()) == split]


def corpus_rows(
    tokenizer: PreTrainedTokenizerBase, split: Split, seq_len: int, want_rows: int | None = None
) -> tuple[torch.Tensor, int]:
    """``(rows [n, seq_len], files read)`` of one split, built like the Gemma adapter's stdlib rows (each
    file capped at ``STDLIB_FILE_CHARS``, between <bos> and <eos>, one stream cut into full rows). Files are
    read in their fixed order until ``want_rows`` rows exist from at least ``STDLIB_MIN_FILES`` files (None:
    all files), so the rows of a smaller request are a prefix of a larger one's."""
    docs: list[list[int]] = []
    tokens = 0
    for path in split_files(split):
        text = path.read_text(encoding="utf-8", errors="replace")[:STDLIB_FILE_CHARS]
        if not text.strip():
            continue
        # tokenized file by file to count tokens, not characters: a pretrained tokenizer's tokens are
        # several characters long, the byte tokenizer's shorter than one non-ASCII character
        docs.append(_tokenize(tokenizer, [text])[0])
        tokens += len(docs[-1]) + 2  # + <bos> and <eos>
        if want_rows is not None and tokens >= want_rows * seq_len and len(docs) >= STDLIB_MIN_FILES:
            break
    return _rows(tokenizer, docs, seq_len), len(docs)


def heldout_rows(model: LoadedModel, n: int | None = None, seq_len: int | None = None, seed: int = 0) -> torch.Tensor:
    """Token rows [n, seq_len] of the held-out stdlib files in ``model``'s tokenizer: all of them for
    ``n`` None, else a seeded choice of ``n`` (in corpus order). ``seq_len`` defaults to the model's."""
    tokenizer = model.parts.get("tokenizer")
    if tokenizer is None:
        raise ConfigError(f"model '{model.adapter}' has no tokenizer", "use a text model such as tiny-gemma")
    seq_len = int(seq_len or model.parts["seq_len"])
    rows, _ = corpus_rows(tokenizer, "heldout", seq_len)
    if n is None:
        return rows
    if not 1 <= n <= rows.shape[0]:
        raise ConfigError(
            f"the held-out split has {rows.shape[0]} rows of {seq_len} tokens, {n} asked for",
            f"ask for 1 to {rows.shape[0]} rows, or shorter rows",
        )
    chosen = torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
    return rows[chosen.sort().values].contiguous()


def weights_sha256(folder: Path) -> str:
    return hashlib.sha256((Path(folder) / WEIGHTS_FILE).read_bytes()).hexdigest()


@register_model("tiny-gemma")
class TinyGemmaAdapter(BuiltinModel, GemmaAdapter):
    """A Gemma adapter whose default model is the committed tiny-Gemma.

    ``load()`` (or ``load(None)``) is the committed model; ``load(source)`` any Gemma-2 folder or hub id in its
    place; ``load(tiny=True, seed=...)`` the same architecture random-initialised (what the build script
    trains), for tests that need the shapes and not the training.
    """

    asset_dir = ASSET_DIR
    asset_marker = WEIGHTS_FILE
    builtin = BUILTIN
    build_script = BUILD_SCRIPT
    tiny_config = TINY_GEMMA_CONFIG
    tiny_with_source_fix = "drop the source to build the random-initialised tiny-gemma, or drop --tiny to load it"

    def weights_sha256(self, folder: Path) -> str:
        return weights_sha256(folder)

    def _load_pretrained(self, source: str) -> LoadedModel:
        return self._relabel(GemmaAdapter().load(source), {})

    def _relabel(self, model: LoadedModel, extra: dict[str, Any]) -> LoadedModel:
        # loaded through the plain Gemma adapter because the folder is a plain Gemma-2 folder (its settings
        # file says "gemma"); only the name and the spec are ours
        spec = {**model.spec, "adapter": self.name, **extra}
        return LoadedModel(self.name, model.student, model.parts, spec)

    def save_pretrained(self, model: LoadedModel, folder: Path) -> None:
        """A plain Gemma-2 folder, so both the ``gemma`` and the ``tiny-gemma`` adapters load it."""
        GemmaAdapter().save_pretrained(model, folder)

    def calibration_rows(self, model: LoadedModel, n: int, length: int, seed: int) -> torch.Tensor:
        """Export calibration prompts from the held-out files (text the training never saw)."""
        return heldout_rows(model, n, seq_len=length, seed=seed)

    def distill_data(
        self, model: LoadedModel, data: Path | None, *, n_train: int, n_val: int, seed: int
    ) -> DistillData:
        """Like the Gemma adapter's, but the default rows come from the training split only: the held-out
        files stay unseen for ``quality.text.evaluate_text``."""
        if data is not None:
            return super().distill_data(model, data, n_train=n_train, n_val=n_val, seed=seed)
        check_row_counts(n_train, n_val)
        total, seq_len = n_train + n_val, int(model.parts["seq_len"])
        rows, n_files = corpus_rows(model.parts["tokenizer"], "train", seq_len, POOL_FACTOR * total)
        if rows.shape[0] < total:
            raise ConfigError(
                f"the training split gives only {rows.shape[0]} rows of {seq_len} tokens, not {total}",
                "ask for fewer rows or pass your own text data",
            )
        tensors = {"input_ids": rows, "attention_mask": torch.ones_like(rows)}
        origin = f"{n_files} Python standard library source files (tiny-gemma training split)"
        return split_rows(tensors, n_train, n_val, seed, f"{seq_len}-token rows of {origin}")
