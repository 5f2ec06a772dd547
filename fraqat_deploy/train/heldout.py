"""Held-out validation rows: inputs the training never sees, so that a validation figure measures the student
and not how well it learned its own training rows.

- Sana-family models on their built-in prompts (digits-Sana among them): the FP teacher's sampling trajectories
  for ``HELDOUT_PROMPTS`` (none of them a training prompt) from noise drawn with a generator seed no training
  run uses (``HELDOUT_SEED + seed``).
- tiny-Gemma on its built-in text: rows of the held-out files of its corpus (the training split never reads them).
- Anything else (your own data, a pretrained Gemma): no separate held-out source is known, so validation uses
  ``n_val`` rows split from the same source as training (``DistillData.val``), and the run says so.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from fraqat_deploy.models import LoadedModel, ModelAdapter
from fraqat_deploy.models.tokenizers import NUMBER_WORDS

#: digit prompts worded unlike every training prompt (the built-in ones are "a handwritten digit seven" and the like)
HELDOUT_TEMPLATES: tuple[str, ...] = (
    "a pencil sketch of the numeral {}",
    "the number {} drawn by hand on paper",
    "a single digit {} written in ink",
    "a simple drawing of a {}",
)
HELDOUT_PROMPTS: tuple[str, ...] = tuple(t.format(w) for t in HELDOUT_TEMPLATES for w in NUMBER_WORDS[:10])
#: offset of the generator seed of the held-out sampling noise from the training seed
HELDOUT_SEED = 1_000_003


def heldout_rows(adapter: ModelAdapter, model: LoadedModel, data: Path | None, n: int,
                 seed: int) -> tuple[dict[str, torch.Tensor], str] | None:
    """``n`` held-out validation rows for ``model`` and a description of them, or None when there is no held-out
    source for this model and data (then validation uses the rows split from the training source)."""
    if data is not None:
        return None
    if adapter.name == "tiny-gemma":
        from fraqat_deploy.models.tiny_gemma import heldout_rows as text_rows

        ids = text_rows(model, n, seed=seed)
        return ({"input_ids": ids, "attention_mask": torch.ones_like(ids)},
                f"{n} rows of tiny-gemma's held-out files (never in training)")
    from fraqat_deploy.models.sana import SanaAdapter

    if isinstance(adapter, SanaAdapter):
        with tempfile.TemporaryDirectory(prefix="fraqat-heldout-") as tmp:
            prompts = Path(tmp) / "heldout-prompts.txt"
            prompts.write_text("\n".join(HELDOUT_PROMPTS) + "\n")
            rows = adapter.distill_data(model, prompts, n_train=n, n_val=0, seed=HELDOUT_SEED + seed).train
        return rows, (f"{n} rows of the FP teacher's trajectories for {len(HELDOUT_PROMPTS)} held-out prompts "
                      f"and held-out noise seeds (never in training)")
    return None
