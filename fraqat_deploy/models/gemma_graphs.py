"""Gemma-2 as deployed: a prefill graph and a decode graph with static shapes and an explicit KV cache, and the
host-side greedy loop that drives them.

Context length ``C`` (tokens a conversation can hold, prompt included) and prompt length ``N`` are fixed at
export (``GemmaGraphSpec``). Each layer's cache lives on the host as ``[1, kv_heads, C - 1, head_dim]`` arrays
whose slot ``j`` holds the (rotated) key and the value of the token at position ``j``. The graphs never write it:

* ``prefill``: ``input_ids [1, N]`` (or ``inputs_embeds [1, N, hidden]``, see below), ``position_ids [1, N]``,
  ``attention_mask [1, N]`` (1 for prompt tokens, 0 for padding, on either side) -> ``logits [1, N, V]``,
  ``key_i`` / ``value_i [1, kv_heads, N, head_dim]``;
* ``decode``: ``input_ids [1, 1]`` (or ``inputs_embeds [1, 1, hidden]``), ``position_ids [1, 1]``,
  ``attention_mask [1, C - 1]`` (1 for the cache slots that hold a token), ``sliding_mask [1, C - 1]`` (only when
  a sliding window is shorter than ``C``: the valid slots inside the window), ``past_key_i`` / ``past_value_i
  [1, kv_heads, C - 1, head_dim]`` -> ``logits [1, 1, V]`` and the new token's ``key_i`` / ``value_i [1, kv_heads,
  1, head_dim]``, which the host writes into slot ``position``.

HTP-friendly forms (the same maths as transformers' eager Gemma-2): masks are small additive 4-D biases built in
the graph from 0/1 masks (no GatherND; the attention logits are soft-capped to +-softcap, so a bias of
2 softcap + 64 gives masked keys the same zero weight as -inf); RoPE's cos/sin come from a ``[C, head_dim]`` table
gathered by position id (never a sine of a large argument in the graph); both graphs group the query heads by their
key/value head instead of repeating keys and values (which the HTP reorders wrongly, and which would copy a
``C``-long cache). The graphs call the model's own modules (projections,
MLPs, norms, embedding, LM head), so a trained student's quantized layers are the ones exported.

The embedding lookup runs in the graphs (``embedding="graph"``: both graphs Gather from the ``[vocab, hidden]``
table, which the export stores as a uint16 constant in each graph) or on the host (``embedding="host"``, the
default for a big table: ``default_embedding``): the graphs then take ``inputs_embeds``, the embedding module's
output (Gemma-2's ``sqrt(hidden)`` scaling included) rounded to float16, and the host reads those rows from a float16
table file written beside the graphs (``write_embedding_table``; one row per decoded token). The calibration
inputs and hence the export's torch reference take the same float16-rounded rows the host feeds, so export parity
compares like with like.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fraqat_deploy.errors import ConfigError, InputError
from fraqat_deploy.models.base import Component, LoadedModel

#: the additive bias of masked keys beyond twice the attention softcap (see sana_graphs.MASK_BIAS)
MASK_BIAS = 64.0
#: longest context exported by default (the cache of a pretrained model grows with it)
MAX_CONTEXT = 1024
#: longest prompt one prefill takes by default; longer prompts continue through the decode graph
MAX_PROMPT = 128

#: where the embedding lookup runs: in the graphs (they take input_ids) or on the host (they take inputs_embeds)
EMBEDDING_MODES = ("graph", "host")
#: the default placement is "host" when the table holds at least this share of the model's weights and at least
#: HOST_TABLE_ENTRIES entries: Gemma-2-2B's 256000 x 2304 table is 23% of its weights, 1.18 GB at 16 bits in each
#: context binary (~1.0 byte per weight against 0.51 with the lookup on the host, measured at real size: README);
#: the small models keep the lookup in their graphs
HOST_TABLE_SHARE = 0.10
HOST_TABLE_ENTRIES = 1 << 24
#: the host-side table beside the graphs (export/), float16 [vocab, hidden], a .npy file
EMBEDDING_FILE = "embedding.npy"
#: rows per block when the table file is written (a block, not the table, is ever held in float32)
TABLE_BLOCK_ROWS = 4096

Feed = Mapping[str, np.ndarray]
#: runs one component ("prefill" or "decode") on named inputs and returns its named outputs: torch modules, ONNX
#: Runtime sessions on the CPU, the HTP simulator or the phone all fit behind it
Runner = Callable[[str, Feed], dict[str, np.ndarray]]


@dataclass(frozen=True)
class GemmaGraphSpec:
    """The static shapes of the two graphs (recorded in the export manifest as the components' ``info``)."""

    context: int  # C: positions 0..C-1; the decode graph reads C-1 cache slots
    prompt_length: int  # N: tokens per prefill
    layers: int
    kv_heads: int
    head_dim: int
    vocab: int
    sliding_window: int | None  # None: no sliding layers, or the window covers the whole context
    sliding_layers: tuple[int, ...]
    pad_id: int = 0
    embedding: str = "graph"  # one of EMBEDDING_MODES

    def __post_init__(self) -> None:
        if self.embedding not in EMBEDDING_MODES:
            raise ConfigError(f"unknown embedding placement '{self.embedding}'",
                              f"use one of: {', '.join(EMBEDDING_MODES)}")

    @property
    def host_embedding(self) -> bool:
        """Whether the graphs take ``inputs_embeds`` (the host looks the rows up) instead of ``input_ids``."""
        return self.embedding == "host"

    @property
    def token_input(self) -> str:
        return "inputs_embeds" if self.host_embedding else "input_ids"

    @property
    def cache_slots(self) -> int:
        return self.context - 1

    @property
    def sliding_mask(self) -> bool:
        """Whether the decode graph takes a second mask for its sliding-window layers."""
        return self.sliding_window is not None

    def prefill_inputs(self) -> list[str]:
        return [self.token_input, "position_ids", "attention_mask"]

    def decode_inputs(self) -> list[str]:
        masks = ["attention_mask"] + (["sliding_mask"] if self.sliding_mask else [])
        past = [f"past_{kind}_{i}" for i in range(self.layers) for kind in ("key", "value")]
        return [self.token_input, "position_ids", *masks, *past]

    def outputs(self) -> list[str]:
        return ["logits"] + [f"{kind}_{i}" for i in range(self.layers) for kind in ("key", "value")]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["sliding_layers"] = list(self.sliding_layers)
        d["cache_layout"] = "per layer [1, kv_heads, context - 1, head_dim], slot = position"
        return d


def graph_spec(lm: nn.Module, *, context: int, prompt_length: int | None = None, pad_id: int = 0,
               embedding: str = "graph") -> GemmaGraphSpec:
    config = lm.config
    limit = int(config.max_position_embeddings)
    if not 2 <= context <= limit:
        raise ConfigError(f"context length {context} is outside 2..{limit} (the model's max_position_embeddings)",
                          "choose a shorter context")
    prompt_length = prompt_length or min(context // 2, MAX_PROMPT)
    if not 1 <= prompt_length <= context:
        raise ConfigError(f"prompt length {prompt_length} is outside 1..{context}", "choose a shorter prompt length")
    layer_types = list(getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers)
    sliding = tuple(i for i, t in enumerate(layer_types) if t == "sliding_attention")
    window = getattr(config, "sliding_window", None)
    window = int(window) if sliding and window is not None and int(window) < context else None
    return GemmaGraphSpec(
        context=context, prompt_length=prompt_length, layers=int(config.num_hidden_layers),
        kv_heads=int(config.num_key_value_heads), head_dim=int(_head_dim(config)), vocab=int(config.vocab_size),
        sliding_window=window, sliding_layers=sliding if window is not None else (), pad_id=pad_id,
        embedding=embedding,
    )


def default_context(model: LoadedModel) -> int:
    """The model's distillation length, within its positions and ``MAX_CONTEXT``."""
    limit = int(model.student.config.max_position_embeddings)
    return int(min(int(model.parts.get("seq_len", limit)), limit, MAX_CONTEXT))


def _head_dim(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class _GemmaGraph(nn.Module):
    """What the two graphs share: the model, the RoPE table and one decoder layer's computation."""

    def __init__(self, lm: nn.Module, spec: GemmaGraphSpec) -> None:
        super().__init__()
        self.lm = lm
        self.spec = spec
        config = lm.config
        self.heads = int(config.num_attention_heads)
        self.groups = self.heads // spec.kv_heads
        self.scaling = float(config.query_pre_attn_scalar) ** -0.5
        self.attn_softcap = float(config.attn_logit_softcapping or 0.0)
        self.final_softcap = float(config.final_logit_softcapping or 0.0)
        self.mask_bias = 2.0 * self.attn_softcap + MASK_BIAS
        rotary = lm.model.rotary_emb
        # the same float32 arithmetic as Gemma2RotaryEmbedding, once per position
        freqs = torch.arange(spec.context, dtype=torch.float32)[:, None] * rotary.inv_freq.float()[None]
        emb = torch.cat((freqs, freqs), dim=-1)
        scale = float(getattr(rotary, "attention_scaling", 1.0))
        self.register_buffer("rope_cos", emb.cos() * scale, persistent=False)
        self.register_buffer("rope_sin", emb.sin() * scale, persistent=False)

    def rope(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [B, 1, T, head_dim] of the positions (a table lookup)."""
        # F.embedding exports as Gather (indexing the table would export as GatherND, which the HTP does not run)
        cos, sin = F.embedding(position_ids, self.rope_cos), F.embedding(position_ids, self.rope_sin)
        return cos.unsqueeze(1), sin.unsqueeze(1)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """``input_ids`` -> their rows (the model's embedding module), or ``inputs_embeds`` as they are."""
        return tokens if self.spec.host_embedding else self.lm.model.embed_tokens(tokens)

    def project(self, layer: nn.Module, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normed input -> rotated q [B, H, T, d], rotated k and v [B, KV, T, d]."""
        attn = layer.self_attn
        b, t, _ = h.shape
        d = self.spec.head_dim
        q = attn.q_proj(h).view(b, t, self.heads, d).transpose(1, 2)
        k = attn.k_proj(h).view(b, t, self.spec.kv_heads, d).transpose(1, 2)
        v = attn.v_proj(h).view(b, t, self.spec.kv_heads, d).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        return q, k, v

    def capped(self, scores: torch.Tensor) -> torch.Tensor:
        """Raw q.k -> scaled, soft-capped attention logits."""
        scores = scores * self.scaling
        if self.attn_softcap:
            scores = torch.tanh(scores / self.attn_softcap) * self.attn_softcap
        return scores

    def finish_layer(self, layer: nn.Module, residual: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        h = residual + layer.post_attention_layernorm(layer.self_attn.o_proj(attn_out))
        ff = layer.post_feedforward_layernorm(layer.mlp(layer.pre_feedforward_layernorm(h)))
        return h + ff

    def head(self, h: torch.Tensor) -> torch.Tensor:
        logits = self.lm.lm_head(self.lm.model.norm(h))
        if self.final_softcap:
            logits = torch.tanh(logits / self.final_softcap) * self.final_softcap
        return logits

    def bias(self, allowed: torch.Tensor) -> torch.Tensor:
        """0/1 -> 0 / -mask_bias."""
        return (allowed - 1.0) * self.mask_bias


class PrefillGraph(_GemmaGraph):
    """input_ids (or inputs_embeds [1, N, hidden]), position_ids, attention_mask [1, N] -> logits [1, N, V],
    key_i, value_i [1, KV, N, d]."""

    def __init__(self, lm: nn.Module, spec: GemmaGraphSpec) -> None:
        super().__init__(lm, spec)
        n = spec.prompt_length
        index = torch.arange(n)
        causal = (index[None, :] <= index[:, None]).float()
        # one copy per query head of a group: the scores are [1, KV, G * N, N] (see forward)
        self.register_buffer("causal", causal.repeat(self.groups, 1), persistent=False)
        if spec.sliding_window is not None and spec.sliding_window < n:
            band = (index[None, :] > index[:, None] - spec.sliding_window).float()
            self.register_buffer("causal_sliding", (causal * band).repeat(self.groups, 1), persistent=False)
        else:
            self.causal_sliding = None

    def forward(self, tokens: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor
                ) -> tuple[torch.Tensor, ...]:
        keys_valid = attention_mask.float()[:, None, None, :]  # [1, 1, 1, N]
        full = self.bias(self.causal[None, None] * keys_valid)  # [1, 1, G * N, N]
        sliding = full if self.causal_sliding is None else self.bias(self.causal_sliding[None, None] * keys_valid)
        cos, sin = self.rope(position_ids)
        h = self.embed(tokens)
        b, t, _ = h.shape
        spec = self.spec
        outputs: list[torch.Tensor] = []
        for i, layer in enumerate(self.lm.model.layers):
            q, k, v = self.project(layer, layer.input_layernorm(h), cos, sin)
            # the query heads grouped by their key/value head, [1, KV, G * N, d] (head h = kv * G + g): no repeat of
            # k and v (the HTP reorders Gemma-2's repeat_kv, Expand -> Reshape, wrongly; see htp_forms)
            qg = q.reshape(b, spec.kv_heads, self.groups * t, spec.head_dim)
            bias = sliding if i in spec.sliding_layers else full
            probs = torch.softmax(self.capped(qg @ k.transpose(2, 3)) + bias, dim=-1)
            attn_out = (probs @ v).reshape(b, self.heads, t, spec.head_dim).transpose(1, 2).reshape(b, t, -1)
            h = self.finish_layer(layer, h, attn_out)
            outputs += [k, v]
        return (self.head(h), *outputs)


class DecodeGraph(_GemmaGraph):
    """input_ids [1, 1] (or inputs_embeds [1, 1, hidden]), position_ids [1, 1], attention_mask [1, C-1],
    (sliding_mask [1, C-1]), past_key_i, past_value_i [1, KV, C-1, d] -> logits [1, 1, V], key_i, value_i
    [1, KV, 1, d] of the new token."""

    def forward(self, tokens: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor,
                *rest: torch.Tensor) -> tuple[torch.Tensor, ...]:
        spec = self.spec
        if spec.sliding_mask:
            sliding_mask, past = rest[0], rest[1:]
        else:
            sliding_mask, past = None, rest
        full = self.bias(attention_mask.float())[:, None, None, :]  # [1, 1, 1, C-1]
        sliding = full if sliding_mask is None else self.bias(sliding_mask.float())[:, None, None, :]
        cos, sin = self.rope(position_ids)
        h = self.embed(tokens)
        b = h.shape[0]
        outputs: list[torch.Tensor] = []
        for i, layer in enumerate(self.lm.model.layers):
            q, k, v = self.project(layer, layer.input_layernorm(h), cos, sin)
            # the query heads of one key/value head side by side: [1, KV, G, d] (head h = kv * G + g)
            qg = q.reshape(b, spec.kv_heads, self.groups, spec.head_dim)
            # the cached slots (masked) and the token itself (always visible), side by side: no constant joins
            # the mask (a padded or concatenated constant comes out wrong on the HTP)
            past_scores = self.capped(qg @ past[2 * i].transpose(2, 3))
            past_scores = past_scores + (sliding if i in spec.sliding_layers else full)
            scores = torch.cat([past_scores, self.capped(qg @ k.transpose(2, 3))], dim=-1)  # [1, KV, G, C]
            values = torch.cat([past[2 * i + 1], v], dim=2)  # [1, KV, C, d]
            attn_out = (torch.softmax(scores, dim=-1) @ values).reshape(b, 1, -1)
            h = self.finish_layer(layer, h, attn_out)
            outputs += [k, v]
        return (self.head(h), *outputs)


# ---------------------------------------------------------------- the host side


class _Session(Protocol):
    def run(self, output_names: list[str] | None, feed: Mapping[str, np.ndarray]) -> list[Any]: ...


def torch_runner(graphs: Mapping[str, nn.Module], spec: GemmaGraphSpec) -> Runner:
    """A ``Runner`` over the PyTorch graphs (``{"prefill": PrefillGraph, "decode": DecodeGraph}``)."""
    names = {"prefill": spec.prefill_inputs(), "decode": spec.decode_inputs()}
    outputs = spec.outputs()

    @torch.no_grad()
    def run(component: str, feed: Feed) -> dict[str, np.ndarray]:
        args = [torch.from_numpy(np.asarray(feed[n])) for n in names[component]]
        result = graphs[component](*args)
        return {n: t.detach().float().cpu().numpy() for n, t in zip(outputs, result, strict=True)}

    return run


def session_runner(sessions: Mapping[str, _Session]) -> Runner:
    """A ``Runner`` over ONNX Runtime sessions (CPU, the HTP simulator, the phone's), one per component."""

    def run(component: str, feed: Feed) -> dict[str, np.ndarray]:
        session = sessions[component]
        names = [o.name for o in session.get_outputs()]  # type: ignore[attr-defined]
        return dict(zip(names, session.run(names, dict(feed)), strict=True))

    return run


class HostEmbedding(Protocol):
    """The host's embedding lookup: token ids [...] -> float16-rounded rows [..., hidden], float32."""

    def rows(self, ids: np.ndarray) -> np.ndarray: ...


class TableFile:
    """The exported table file (``EMBEDDING_FILE``: float16 [vocab, hidden] .npy), memory-mapped: a lookup reads
    only the rows it asks for (one 2 x hidden-byte row per decoded token)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"no embedding table at {self.path}",
                             "export the run again: fraqat-deploy export <model> --run R --embedding host")
        try:
            self.table = np.load(self.path, mmap_mode="r")
        except ValueError as err:
            raise InputError(f"{self.path} is not a .npy table: {err}", "export the run again") from None
        if self.table.dtype != np.float16 or self.table.ndim != 2:
            raise InputError(f"{self.path} holds {self.table.dtype} {list(self.table.shape)}, not float16 "
                             "[vocab, hidden]", "export the run again")

    def rows(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.table.shape[0]):
            raise ConfigError(f"token ids outside 0..{self.table.shape[0] - 1}", "check the tokenizer's vocabulary")
        return np.asarray(self.table[ids], dtype=np.float32)


class ModuleRows:
    """The rows the table file holds, computed from the embedding module itself (before the file exists): its output
    (any scaling it applies included) rounded to float16."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    @torch.no_grad()
    def rows(self, ids: np.ndarray) -> np.ndarray:
        out = self.module(torch.from_numpy(np.asarray(ids, dtype=np.int64)))
        return out.to(torch.float16).float().numpy()


def default_embedding(lm: nn.Module) -> str:
    """Where the embedding lookup runs unless asked: "host" for a big table (see ``HOST_TABLE_SHARE``)."""
    table = lm.get_input_embeddings().weight.numel()
    total = sum(p.numel() for p in lm.parameters())  # a tied head counted once
    return "host" if table >= HOST_TABLE_ENTRIES and table >= HOST_TABLE_SHARE * total else "graph"


def write_embedding_table(module: nn.Module, vocab: int, path: Path, block: int = TABLE_BLOCK_ROWS
                          ) -> dict[str, Any]:
    """``module``'s rows for every token id, float16 [vocab, hidden], as a .npy file (little-endian, C order: the
    Kotlin app reads it memory-mapped). Written a block of rows at a time from the module's own lookup (a 16-bit
    weight is never upcast whole). Returns its manifest record: file, dtype, shape, bytes, sha256."""
    rows = ModuleRows(module)
    hidden = int(rows.rows(np.zeros(1, dtype=np.int64)).shape[-1])
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f2", "fortran_order": False, "shape": (vocab, hidden)})
    digest = hashlib.sha256(header.getvalue())
    part = path.with_name(path.name + ".part")
    with open(part, "wb") as f:
        f.write(header.getvalue())
        for start in range(0, vocab, block):
            data = rows.rows(np.arange(start, min(start + block, vocab))).astype("<f2").tobytes()
            digest.update(data)
            f.write(data)
    part.replace(path)
    return {"file": path.name, "dtype": "float16", "shape": [vocab, hidden], "bytes": path.stat().st_size,
            "sha256": digest.hexdigest(),
            "what": "the embedding module's output per token id (its scaling included), rounded to float16; the "
                    "graphs take these rows as inputs_embeds"}


def token_feed(spec: GemmaGraphSpec, ids: np.ndarray, embedding: HostEmbedding | None = None
               ) -> dict[str, np.ndarray]:
    """The graphs' token input for ``ids`` [1, T]: the ids themselves, or (host embedding) their rows
    ``inputs_embeds`` [1, T, hidden] float32 looked up in ``embedding``."""
    ids = np.asarray(ids, dtype=np.int64)
    if not spec.host_embedding:
        return {"input_ids": ids}
    if embedding is None:
        raise ConfigError("these Gemma graphs take inputs_embeds (exported with --embedding host) and no "
                          "embedding table was given", f"pass the export's {EMBEDDING_FILE}")
    return {"inputs_embeds": embedding.rows(ids)}


def prefill_feed(spec: GemmaGraphSpec, prompt: list[int], embedding: HostEmbedding | None = None
                 ) -> dict[str, np.ndarray]:
    """The prompt right-padded to N (it must fit)."""
    n = spec.prompt_length
    ids = np.full((1, n), spec.pad_id, dtype=np.int64)
    ids[0, : len(prompt)] = prompt
    mask = np.zeros((1, n), dtype=np.int64)
    mask[0, : len(prompt)] = 1
    return token_feed(spec, ids, embedding) | {"position_ids": np.arange(n, dtype=np.int64)[None],
                                               "attention_mask": mask}


class KvCache:
    """The host's cache arrays, slot = position (and, for graphs that take ``inputs_embeds``, the table)."""

    def __init__(self, spec: GemmaGraphSpec, embedding: HostEmbedding | None = None) -> None:
        self.spec = spec
        self.embedding = embedding
        shape = (1, spec.kv_heads, spec.cache_slots, spec.head_dim)
        self.arrays = {f"past_{kind}_{i}": np.zeros(shape, dtype=np.float32)
                       for i in range(spec.layers) for kind in ("key", "value")}
        self.length = 0  # positions 0..length-1 are filled

    def write(self, outputs: Mapping[str, np.ndarray], start: int, count: int) -> None:
        """Slots start..start+count-1 from the outputs' first ``count`` tokens (those past the cache are dropped:
        no later token reads them)."""
        count = min(count, self.spec.cache_slots - start)
        for i in range(self.spec.layers):
            for kind in ("key", "value"):
                self.arrays[f"past_{kind}_{i}"][:, :, start : start + count] = outputs[f"{kind}_{i}"][:, :, :count]

    def decode_feed(self, token: int, position: int) -> dict[str, np.ndarray]:
        spec = self.spec
        slots = np.arange(spec.cache_slots)
        valid = slots < position
        feed = token_feed(spec, np.array([[token]], dtype=np.int64), self.embedding)
        feed |= {"position_ids": np.array([[position]], dtype=np.int64),
                 "attention_mask": valid.astype(np.int64)[None]}
        if spec.sliding_mask:
            inside = slots > position - int(spec.sliding_window)  # type: ignore[arg-type]
            feed["sliding_mask"] = (valid & inside).astype(np.int64)[None]
        return feed | self.arrays


def greedy_decode(run: Runner, spec: GemmaGraphSpec, prompt: list[int], *, max_new_tokens: int,
                  eos_id: int | None = None, embedding: HostEmbedding | None = None) -> list[int]:
    """Greedy continuation of ``prompt`` (token ids) through the prefill and decode graphs: the new token ids.

    The first N prompt tokens go through one prefill, the rest through the decode graph one by one. Stops at
    ``eos_id`` (not returned), after ``max_new_tokens``, or when the context is full (as
    ``GemmaAdapter.generate`` stops at the model's last position). ``embedding``: the host's table, for graphs
    that take ``inputs_embeds`` (``spec.host_embedding``).
    """
    if not prompt:
        raise ConfigError("an empty prompt cannot be decoded", "pass at least one token (e.g. <bos>)")
    if len(prompt) > spec.context:
        raise ConfigError(f"the prompt has {len(prompt)} tokens, the exported context holds {spec.context}",
                          "shorten the prompt or export a longer context")
    cache = KvCache(spec, embedding)
    first = prompt[: spec.prompt_length]
    out = run("prefill", prefill_feed(spec, first, embedding))
    cache.write(out, 0, len(first))
    cache.length = len(first)
    logits = out["logits"][0, len(first) - 1]

    def step(token: int) -> np.ndarray:
        position = cache.length
        result = run("decode", cache.decode_feed(token, position))
        cache.write(result, position, 1)
        cache.length += 1
        return result["logits"][0, -1]

    for token in prompt[spec.prompt_length :]:
        logits = step(token)
    new: list[int] = []
    while len(new) < max_new_tokens and cache.length < spec.context:
        token = int(np.argmax(logits))
        if eos_id is not None and token == eos_id:
            break
        new.append(token)
        if len(new) < max_new_tokens and cache.length < spec.context:
            logits = step(token)
    return new


def recording(run: Runner, log: list[tuple[str, dict[str, np.ndarray]]]) -> Runner:
    """``run`` that also appends a copy of every call's inputs to ``log``."""

    def recorded(component: str, feed: Feed) -> dict[str, np.ndarray]:
        log.append((component, {k: np.array(v, copy=True) for k, v in feed.items()}))
        return run(component, feed)

    return recorded


# ---------------------------------------------------------------- components


def build_graphs(lm: nn.Module, spec: GemmaGraphSpec) -> dict[str, nn.Module]:
    return {"prefill": PrefillGraph(lm, spec).eval(), "decode": DecodeGraph(lm, spec).eval()}


@torch.no_grad()
def gemma_components(model: LoadedModel, student: nn.Module, prompts: torch.Tensor, *, n_calibration: int,
                     context: int | None = None, prompt_length: int | None = None, embedding: str = "graph"
                     ) -> list[Component]:
    """The prefill and decode graphs around ``student``, calibrated on the full-precision model reading held-out
    text: ``prompts`` are token rows [n, >= C - 1] that follow <bos> as the tokenizer starts a prompt.

    Prefill inputs: the first tokens of each row, full (the sample, i = 0) or from a quarter to almost all of N.
    Decode inputs: the decode graph's call at position ``p`` of the same text, as the deployed loop makes it for a
    prompt longer than N (the token at ``p``, the cache of positions 0..p-1), at a full cache for the sample and
    spread over the positions after each row's prefill for the others. The cache is the FP model's keys and values
    of the text, computed in one pass over positions 0..p-1 (a prefill graph of length p): one forward of at most C
    tokens per input, where the FP model's own greedy run to position p would take p - N decode calls (hours for a
    2B model on a few CPU cores).

    ``embedding="host"``: the graphs take ``inputs_embeds``; every calibration input (the sample too, hence the
    export's torch reference) holds the float16-rounded rows of ``student``'s embedding that the host will feed
    from the table file, which the components write beside the graphs (``Component.files``: ``EMBEDDING_FILE``).
    The FP model's cache is computed as for the graph form."""
    tokenizer = model.parts.get("tokenizer")
    pad_id = int(getattr(tokenizer, "pad_token_id", None) or 0)
    bos = [int(tokenizer.bos_token_id)] if getattr(tokenizer, "bos_token_id", None) is not None else []
    spec = graph_spec(model.student, context=context or default_context(model), prompt_length=prompt_length,
                      pad_id=pad_id, embedding=embedding)
    table = ModuleRows(student.model.embed_tokens) if spec.host_embedding else None
    n = spec.prompt_length
    if n_calibration < 1 or prompts.shape[0] < n_calibration or len(bos) + prompts.shape[1] < spec.context:
        raise ConfigError(f"need {n_calibration} calibration rows of {spec.context - len(bos)} tokens, got "
                          f"{tuple(prompts.shape)}", "ask for fewer calibration examples")
    prefill_rows: list[tuple[torch.Tensor, ...]] = []
    decode_rows: list[tuple[torch.Tensor, ...]] = []
    for i in range(n_calibration):
        length = n if i == 0 else max(1, n // 4 + (3 * n // 4) * (i - 1) // max(n_calibration - 1, 1))
        text = (bos + prompts[i].tolist())[: spec.context]
        prefill_rows.append(_row(prefill_feed(spec, text[:length], table), spec.prefill_inputs()))
        steps = spec.context - length  # decode calls at positions length..C-1 after this prefill
        position = spec.context - 1 if i == 0 else length + steps * i // n_calibration
        if position >= length:
            decode_rows.append(_row(text_decode_feed(model.student, spec, text[: position + 1], table),
                                    spec.decode_inputs()))
    if not decode_rows:
        raise ConfigError("the calibration prompts leave no position to decode", "export a longer context")
    info = spec.to_dict()
    files: dict[str, Callable[[Path], dict[str, Any]]] = {}
    if spec.host_embedding:
        embed_tokens, vocab = student.model.embed_tokens, spec.vocab
        files["embedding"] = lambda out: write_embedding_table(embed_tokens, vocab, out / EMBEDDING_FILE)
    return [
        Component("prefill", PrefillGraph(student, spec), spec.prefill_inputs(), spec.outputs(), prefill_rows,
                  holds_student=True, info=info, files=files),
        Component("decode", DecodeGraph(student, spec), spec.decode_inputs(), spec.outputs(), decode_rows,
                  holds_student=True, info=info, files=files),
    ]


@torch.no_grad()
def text_decode_feed(lm: nn.Module, spec: GemmaGraphSpec, tokens: list[int], embedding: HostEmbedding | None = None
                     ) -> dict[str, np.ndarray]:
    """The decode graph's feed for the last of ``tokens`` at its position ``p = len(tokens) - 1``, with the cache of
    ``lm`` over ``tokens[:p]`` (computed by one prefill graph of length p, which looks the ids up itself);
    ``embedding``: the host's rows, for graphs that take ``inputs_embeds``."""
    position = len(tokens) - 1
    if not 1 <= position <= spec.cache_slots:
        raise ConfigError(f"a decode call at position {position} is outside 1..{spec.cache_slots}",
                          "pass between 2 and C tokens")
    prefix = replace(spec, prompt_length=position, embedding="graph")
    out = torch_runner({"prefill": PrefillGraph(lm, prefix).eval()}, prefix)("prefill",
                                                                             prefill_feed(prefix, tokens[:position]))
    cache = KvCache(spec, embedding)
    cache.write(out, 0, position)
    return cache.decode_feed(tokens[position], position)


def _row(feed: Mapping[str, np.ndarray], names: list[str]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(np.array(feed[n], copy=True)) for n in names)
