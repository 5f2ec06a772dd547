"""Gemma-2 causal LM: the whole ``Gemma2ForCausalLM`` is the student; distilled on fixed-length text rows."""

from __future__ import annotations

import hashlib
import json
import os
import sysconfig
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import AutoTokenizer, Gemma2Config, Gemma2ForCausalLM

from fraqat_deploy.errors import ConfigError, InputError
from fraqat_deploy.models.base import (
    Component,
    DistillData,
    LoadedModel,
    ModelAdapter,
    check_row_counts,
    read_settings,
    register_model,
    resolve_source,
    split_rows,
    write_settings,
)
from fraqat_deploy.models.gemma_graphs import default_context, default_embedding, gemma_components, graph_spec
from fraqat_deploy.models.half import checkpoint_dtype, keep_half
from fraqat_deploy.models.tokenizers import BOS_ID, EOS_ID, PAD_ID, build_byte_tokenizer

HUB_EXAMPLE = "google/gemma-2-2b-it"
TEXT_SUFFIXES = (".txt", ".jsonl")

TINY_CONFIG: dict[str, Any] = {
    "model": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 16,
        "query_pre_attn_scalar": 16,
        "max_position_embeddings": 256,
    },
    "seq_len": 64,
}
PRETRAINED_SEQ_LEN = 512

# The default offline corpus: the standard library's own source, minus tests and installed packages.
_SKIP_DIRS = frozenset(
    {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "encodings", "pydoc_data"}
)
#: per-file cap, so one huge module cannot dominate the rows
STDLIB_FILE_CHARS = 8_000
#: files read at least, so even a few rows come from many modules
STDLIB_MIN_FILES = 32
#: rows to draw from, as a multiple of the rows asked for, so the seeded choice still spreads over files
POOL_FACTOR = 4


def stdlib_source_files() -> list[Path]:
    """The stdlib's .py files (no tests, installed packages or data tables), in a fixed order that
    interleaves packages: sorted by a hash of the path relative to the stdlib root."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files: list[Path] = []
    for folder, subfolders, names in os.walk(root):
        # pruned in place so os.walk never descends into site-packages (often far bigger than the stdlib)
        subfolders[:] = sorted(d for d in subfolders if d not in _SKIP_DIRS)
        files.extend(Path(folder, name) for name in names if name.endswith(".py"))
    return sorted(files, key=lambda p: hashlib.sha1(p.relative_to(root).as_posix().encode()).hexdigest())


@register_model("gemma")
class GemmaAdapter(ModelAdapter):
    example_prompt = "def main("
    quant_targets = ("linear",)
    default_loss = "mse"
    ff_patterns = ("*.mlp.*",)
    attn_patterns = ("*.self_attn.*",)
    block_patterns = ("model.layers.*",)
    last_layer_patterns = ("lm_head",)

    # -- loading -------------------------------------------------------------------------------------------

    tiny_config = TINY_CONFIG
    missing_source = (
        "no Gemma-2 model given",
        f"pass a Gemma-2 model folder or hub id (e.g. {HUB_EXAMPLE}), or ask for the tiny model",
    )

    def _build_tiny(self, config: dict[str, Any], seed: int) -> LoadedModel:
        tokenizer = build_byte_tokenizer()
        model_config = Gemma2Config(
            vocab_size=len(tokenizer),
            pad_token_id=PAD_ID,
            eos_token_id=EOS_ID,
            bos_token_id=BOS_ID,
            attn_implementation="eager",
            **config["model"],
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = Gemma2ForCausalLM(model_config)
        spec = {"adapter": self.name, "kind": "tiny", "seed": seed, "config": config}
        parts = {"tokenizer": tokenizer, "seq_len": int(config["seq_len"])}
        return LoadedModel(self.name, model.eval(), parts, spec)

    def _load_pretrained(self, source: str) -> LoadedModel:
        where, local = resolve_source(source, HUB_EXAMPLE)
        if local:
            _check_gemma2_folder(Path(where), source)
        try:
            tokenizer = AutoTokenizer.from_pretrained(where)
            # a 16-bit checkpoint stays 16-bit in memory and computes in float32 (models/half.py)
            model = keep_half(Gemma2ForCausalLM.from_pretrained(where, dtype=checkpoint_dtype(where, local),
                                                                attn_implementation="eager"))
        except (OSError, ValueError) as err:
            where_hint = "the folder's files" if local else "the hub id, your network and HF token"
            raise InputError(
                f"could not load a Gemma-2 model from '{source}': {err}",
                f"check {where_hint}, or download the model and pass its local folder",
            ) from err
        seq_len = min(PRETRAINED_SEQ_LEN, int(model.config.max_position_embeddings))
        seq_len = int(read_settings(where, local, self.name).get("seq_len", seq_len))
        spec = {"adapter": self.name, "kind": "pretrained", "source": where}
        parts = {"tokenizer": tokenizer, "seq_len": seq_len}
        return LoadedModel(self.name, model.eval(), parts, spec)

    def save_pretrained(self, model: LoadedModel, folder: Path) -> None:
        """A transformers model folder (model and tokenizer) plus the distillation sequence length."""
        folder = Path(folder)
        model.student.save_pretrained(folder)
        model.parts["tokenizer"].save_pretrained(folder)
        write_settings(folder, self.name, {"seq_len": model.parts["seq_len"]})

    # -- distillation data ---------------------------------------------------------------------------------

    def distill_data(
        self, model: LoadedModel, data: Path | None, *, n_train: int, n_val: int, seed: int
    ) -> DistillData:
        """Fixed-length token rows of ``data`` (a .txt file, a .jsonl file with a "text" field per line, or a
        folder of them) or, for None, of the Python standard library's source files."""
        check_row_counts(n_train, n_val)
        total, seq_len, tokenizer = n_train + n_val, model.parts["seq_len"], model.parts["tokenizer"]
        if data is None:
            rows, n_docs = _stdlib_rows(tokenizer, seq_len, POOL_FACTOR * total)
            origin = f"{n_docs} Python standard library source files"
            if rows.shape[0] < total:
                raise ConfigError(
                    f"the standard library gives only {rows.shape[0]} rows of {seq_len} tokens, not {total}",
                    "ask for fewer rows or pass your own text data",
                )
        else:
            docs = _read_documents(Path(data))
            rows = _rows(tokenizer, _tokenize(tokenizer, docs), seq_len)
            origin = f"{len(docs)} documents from {data}"
            if rows.shape[0] < total:
                raise InputError(
                    f"'{data}' gives only {rows.shape[0]} rows of {seq_len} tokens, not {n_train} + {n_val}",
                    "add more text or ask for fewer rows",
                )
        tensors = {"input_ids": rows, "attention_mask": torch.ones_like(rows)}
        return split_rows(tensors, n_train, n_val, seed, f"{seq_len}-token rows of {origin}")

    # -- deployment ----------------------------------------------------------------------------------------

    def components(self, model: LoadedModel, student: nn.Module | None = None, *, n_calibration: int = 8,
                   seed: int = 0, embedding: str | None = None) -> list[Component]:
        """``prefill`` and ``decode`` graphs with an explicit KV cache (see ``gemma_graphs``), at the model's
        distillation length as context; calibrated on the full-precision model reading held-out text.
        ``embedding``: "graph" (the graphs take input_ids) or "host" (they take inputs_embeds; the table is written
        beside them); None: host for a big table (Gemma-2-2B's), graph otherwise (``default_embedding``)."""
        embedding = embedding or default_embedding(model.student)
        spec = graph_spec(model.student, context=default_context(model), embedding=embedding)
        prompts = self.calibration_rows(model, n_calibration, spec.context, seed)
        return gemma_components(model, student if student is not None else model.student, prompts,
                                n_calibration=n_calibration, context=spec.context, embedding=embedding)

    def calibration_rows(self, model: LoadedModel, n: int, length: int, seed: int) -> torch.Tensor:
        """``n`` token rows of ``length`` to start calibration prompts from: the default distillation text."""
        rows, _ = _stdlib_rows(model.parts["tokenizer"], length, POOL_FACTOR * n)
        if rows.shape[0] < n:
            raise ConfigError(f"the standard library gives only {rows.shape[0]} prompts of {length} tokens, not {n}",
                              "ask for fewer calibration examples")
        chosen = torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
        return rows[chosen]

    # -- forward -------------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, model: LoadedModel, prompts: list[str], *, seed: int = 0,
                 student: nn.Module | None = None, max_new_tokens: int = 48, **options: Any) -> list[str]:
        """Greedy continuation of each prompt (``seed`` is unused: greedy decoding is deterministic)."""
        lm = student if student is not None else model.student
        tokenizer = model.parts["tokenizer"]
        limit = int(getattr(getattr(lm, "config", None), "max_position_embeddings", 1 << 30))
        texts = []
        for prompt in prompts:
            ids = torch.tensor([tokenizer(prompt)["input_ids"]], device=next(lm.parameters()).device)
            start = ids.shape[1]
            for _ in range(max_new_tokens):
                if ids.shape[1] >= limit:
                    break
                nxt = lm(input_ids=ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
                if int(nxt) == EOS_ID:
                    break
                ids = torch.cat([ids, nxt], dim=1)
            texts.append(prompt + tokenizer.decode(ids[0, start:].tolist(), skip_special_tokens=True))
        return texts

    def bench_inputs(self, model: LoadedModel, prompts: list[str], *, seed: int = 0, max_new_tokens: int = 32,
                     **options: Any):
        """The decode settings (the exported graphs' shapes at the default context) and each prompt's token ids
        (``seed`` is recorded only: greedy decoding is deterministic)."""
        tokenizer = model.parts["tokenizer"]
        spec = graph_spec(model.student, context=default_context(model),
                          pad_id=int(getattr(tokenizer, "pad_token_id", None) or 0))
        pipeline = {"kind": "gemma", "max_new_tokens": int(max_new_tokens), "context": spec.context,
                    "eos_token_id": getattr(tokenizer, "eos_token_id", None), "spec": spec.to_dict()}
        rows = []
        for prompt in prompts:
            ids = tokenizer(prompt)["input_ids"]
            if len(ids) >= spec.context:
                raise ConfigError(f"the prompt has {len(ids)} tokens; the exported context holds {spec.context}",
                                  "shorten the prompt")
            rows.append({"prompt_ids": np.asarray([ids], dtype=np.int64)})
        return pipeline, rows

    def forward(self, student: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return student(
            input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"), use_cache=False
        ).logits


def _check_gemma2_folder(folder: Path, source: str) -> None:
    fix = f"pass a folder with config.json, tokenizer and weights of a Gemma-2 model (e.g. {HUB_EXAMPLE})"
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise InputError(f"'{source}' is not a transformers model folder (no config.json)", fix)
    try:
        model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read '{config_file}': {err}", fix) from err
    if model_type != "gemma2":
        raise InputError(f"'{source}' holds a '{model_type}' model, not Gemma-2", fix)


def _rows(tokenizer, docs: list[list[int]], seq_len: int) -> torch.Tensor:
    """Tokenized documents as one stream, each between <bos> and <eos> as Gemma saw text in training, cut
    into full rows of ``seq_len`` tokens (the incomplete tail is dropped)."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stream = [token for ids in docs for token in (*bos, *ids, *eos)]
    n = len(stream) // seq_len
    return torch.tensor(stream[: n * seq_len], dtype=torch.long).view(n, seq_len)


def _tokenize(tokenizer, texts: list[str]) -> list[list[int]]:
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def _stdlib_rows(tokenizer, seq_len: int, want_rows: int) -> tuple[torch.Tensor, int]:
    """Rows from stdlib files, read in their fixed order until ``want_rows`` rows (or the files) run out."""
    docs: list[list[int]] = []
    tokens = 0
    for path in stdlib_source_files():
        text = path.read_text(encoding="utf-8", errors="replace")[:STDLIB_FILE_CHARS]
        if not text.strip():
            continue
        docs.append(_tokenize(tokenizer, [text])[0])
        tokens += len(docs[-1]) + 2
        if tokens >= want_rows * seq_len and len(docs) >= STDLIB_MIN_FILES:
            break
    return _rows(tokenizer, docs, seq_len), len(docs)


def _read_documents(path: Path) -> list[str]:
    fix = 'pass a .txt file, a .jsonl file with a "text" field per line, or a folder of them'
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
        if not files:
            raise InputError(f"no .txt or .jsonl files in '{path}'", fix)
    elif path.is_file():
        if path.suffix.lower() not in TEXT_SUFFIXES:
            raise InputError(f"cannot read text data from '{path}' (not .txt or .jsonl)", fix)
        files = [path]
    else:
        raise InputError(f"distillation data '{path}' does not exist", fix)
    docs = [doc for file in files for doc in _read_text_file(file) if doc.strip()]
    if not docs:
        raise InputError(f"no text in '{path}'", fix)
    return docs


def _read_text_file(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".txt":
        return [text]
    docs = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"{path}:{number} is not JSON: {err}", "write one JSON object per line") from err
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise InputError(
                f'{path}:{number} has no string "text" field', 'write each line as {"text": "..."}'
            )
        docs.append(record["text"])
    return docs
