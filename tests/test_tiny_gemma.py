"""tiny-Gemma, the embedded default language model, and the text metrics that score it."""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from fraqat_deploy.errors import ConfigError, InputError
from fraqat_deploy.models import LoadedModel, get_adapter
from fraqat_deploy.models.gemma import POOL_FACTOR, stdlib_source_files
from fraqat_deploy.models.tiny_gemma import (
    ASSET_DIR,
    BUILD_FILE,
    TINY_GEMMA_CONFIG,
    corpus_rows,
    corpus_split,
    heldout_rows,
    split_files,
    weights_sha256,
)
from fraqat_deploy.quality.text import evaluate_text, logit_agreement, perplexity

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "build_tiny_gemma.py"
VOCAB = 260
#: held-out rows scored here: 4k tokens, a couple of seconds on one core
N_ROWS = 32


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def embedded() -> LoadedModel:
    return get_adapter("tiny-gemma").load()


@pytest.fixture(scope="module")
def heldout(embedded) -> torch.Tensor:
    return heldout_rows(embedded, N_ROWS, seed=0)


@pytest.fixture(scope="module")
def build() -> dict:
    return json.loads((ASSET_DIR / BUILD_FILE).read_text(encoding="utf-8"))


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _perturbed(model: nn.Module, scale: float) -> nn.Module:
    """A copy with seeded noise of ``scale`` times each weight's own spread: a stand-in for a quantized student."""
    student = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in student.parameters():
            if p.dim() > 1:
                p.add_(torch.randn(p.shape, generator=generator) * p.std() * scale)
    return student


# -- the committed model ----------------------------------------------------------------------------------


def test_committed_asset_is_small_and_described(build):
    size = sum(p.stat().st_size for p in ASSET_DIR.rglob("*") if p.is_file())
    assert 1_000_000 < size < 10_000_000
    assert build["model"] == "tiny-gemma" and build["quick"] is False and build["config"] == TINY_GEMMA_CONFIG
    assert build["weights_sha256"] == weights_sha256(ASSET_DIR)
    heldout = build["heldout"]
    assert heldout["perplexity"] < 0.5 * heldout["unigram_perplexity"] < heldout["uniform_perplexity"] == VOCAB
    assert build["training"]["loss_last_50"] < build["training"]["loss_first"] - 2
    assert build["timing_seconds"]["total"] < 600
    if build["corpus"]["python"] == platform.python_version():  # another stdlib has other files
        assert build["corpus"]["files_heldout"] == len(split_files("heldout"))
        assert build["corpus"]["files_train"] <= len(split_files("train"))  # empty files are skipped


def test_split_is_by_file_disjoint_and_fixed():
    train, held = split_files("train"), split_files("heldout")
    assert not set(train) & set(held) and set(train) | set(held) == set(stdlib_source_files())
    assert 0.05 < len(held) / (len(train) + len(held)) < 0.15
    # a pure function of the relative path: these must never move, or the committed held-out claims break
    assert [corpus_split(p) for p in ("functools.py", "struct.py", "urllib/request.py")] == ["heldout"] * 3
    assert [corpus_split(p) for p in ("os.py", "typing.py", "json/__init__.py")] == ["train"] * 3
    with pytest.raises(ValueError):
        split_files("test")  # type: ignore[arg-type]


def test_heldout_perplexity_beats_uniform_and_unigram(embedded, heldout, build):
    result = evaluate_text(embedded, n_rows=N_ROWS, seed=0)
    ppl = result["perplexity"]
    assert result["rows"] == N_ROWS and result["tokens"] == N_ROWS * (heldout.shape[1] - 1)
    assert result["kl"] == 0.0 and result["top1"] == 1.0  # the model against itself
    assert ppl == pytest.approx(perplexity(embedded.student, heldout), rel=1e-6)
    # a unigram byte model fitted on the training split, scored on the same next tokens
    train, _ = corpus_rows(embedded.parts["tokenizer"], "train", heldout.shape[1], want_rows=2000)
    counts = torch.bincount(train.flatten(), minlength=VOCAB).double() + 1
    unigram = math.exp(-float((counts / counts.sum()).log()[heldout[:, 1:].flatten()].mean()))
    assert math.isfinite(ppl) and ppl < VOCAB / 20 and ppl < 0.5 * unigram
    # the sample agrees with the whole held-out split the build scored
    assert ppl == pytest.approx(build["heldout"]["perplexity"], rel=0.25)


def test_perturbed_student_disagrees(embedded, heldout):
    fp = evaluate_text(embedded, n_rows=N_ROWS)
    student = _perturbed(embedded.student, 0.3)
    result = evaluate_text(embedded, student, n_rows=N_ROWS)
    assert result["kl"] > 0.01 and 0.2 < result["top1"] < 0.99 and result["perplexity"] > fp["perplexity"]
    again = logit_agreement(student, embedded.student, heldout)
    assert again["kl"] == pytest.approx(result["kl"], rel=1e-6) and again["top1"] == pytest.approx(result["top1"])
    assert logit_agreement(embedded.student, embedded.student, heldout) == {"kl": 0.0, "top1": 1.0}
    # evaluation leaves a training student in training mode
    student.train()
    evaluate_text(embedded, student, n_rows=2)
    assert student.training and not embedded.student.training


def test_metrics_ignore_padding(embedded, heldout):
    lm, length = embedded.student, 50
    ids, mask = heldout[:2].clone(), torch.ones(2, heldout.shape[1], dtype=torch.long)
    mask[1, length:] = 0
    padded = perplexity(lm, ids, mask, batch_size=1)
    # token-weighted mean of the two rows scored on their own
    full, short = perplexity(lm, ids[:1]), perplexity(lm, ids[1:, :length])
    n_full, n_short = ids.shape[1] - 1, length - 1
    expected = math.exp((n_full * math.log(full) + n_short * math.log(short)) / (n_full + n_short))
    assert padded == pytest.approx(expected, rel=1e-5)
    ids[1, length:] = 7  # what sits under the padding does not matter
    assert perplexity(lm, ids, mask) == pytest.approx(padded, rel=1e-5)
    student = _perturbed(lm, 0.3)
    on_padded = logit_agreement(student, lm, ids, mask)
    alone = [logit_agreement(student, lm, ids[:1]), logit_agreement(student, lm, ids[1:, :length])]
    weights = (ids.shape[1], length)
    for key in ("kl", "top1"):
        combined = sum(w * a[key] for w, a in zip(weights, alone, strict=True)) / sum(weights)
        assert on_padded[key] == pytest.approx(combined, rel=1e-4)
    with pytest.raises(ValueError):
        perplexity(lm, ids, mask[:, :10])
    with pytest.raises(ValueError):
        perplexity(lm, ids[:, :1])


def test_evaluate_text_refuses_image_models():
    fake = LoadedModel("sana", nn.Linear(1, 1))
    with pytest.raises(ConfigError):
        evaluate_text(fake)


# -- loading ----------------------------------------------------------------------------------------------


def test_load_from_spec_gives_identical_weights(embedded, tmp_path):
    adapter = get_adapter("tiny-gemma")
    spec = json.loads(json.dumps(embedded.spec))
    assert spec == {
        "adapter": "tiny-gemma",
        "kind": "pretrained",
        "source": str(ASSET_DIR),
        "builtin": "tiny-gemma",
        "sha256": weights_sha256(ASSET_DIR),
    }
    # by name, not path: a run made elsewhere resumes with this installation's copy
    assert _same_weights(embedded.student, adapter.load_from_spec({**spec, "source": "/moved/away"}).student)
    with pytest.raises(InputError) as err:
        adapter.load_from_spec({**spec, "sha256": "0" * 64})
    assert "changed" in err.value.message
    # tiny=True: the same architecture, random-initialised from the seed (what the build script starts from)
    tiny = adapter.load(None, tiny=True, seed=3)
    assert tiny.spec["kind"] == "tiny" and tiny.spec["config"] == TINY_GEMMA_CONFIG
    assert _same_weights(tiny.student, adapter.load_from_spec(json.loads(json.dumps(tiny.spec))).student)
    assert tiny.student.state_dict().keys() == embedded.student.state_dict().keys()
    assert not _same_weights(tiny.student, embedded.student)
    with pytest.raises(ConfigError):
        adapter.load(str(tmp_path), tiny=True)
    # the committed folder is a plain Gemma-2 folder
    plain = get_adapter("gemma").load(str(ASSET_DIR))
    assert plain.adapter == "gemma" and _same_weights(embedded.student, plain.student)
    assert plain.parts["seq_len"] == embedded.parts["seq_len"] == TINY_GEMMA_CONFIG["seq_len"]
    # a source stands in for the committed model and is recorded by path
    adapter.save_pretrained(embedded, tmp_path / "copy")
    copied = adapter.load(str(tmp_path / "copy"))
    assert copied.spec == {"adapter": "tiny-gemma", "kind": "pretrained", "source": str((tmp_path / "copy").resolve())}
    assert _same_weights(embedded.student, adapter.load_from_spec(copied.spec).student)


def test_distill_data_comes_from_the_training_split(embedded):
    adapter = get_adapter("tiny-gemma")
    data = adapter.distill_data(embedded, None, n_train=12, n_val=4, seed=0)
    assert data.train["input_ids"].shape == (12, TINY_GEMMA_CONFIG["seq_len"]) and "training split" in data.description
    tokenizer, seq_len = embedded.parts["tokenizer"], TINY_GEMMA_CONFIG["seq_len"]
    train = {tuple(r) for r in corpus_rows(tokenizer, "train", seq_len, POOL_FACTOR * 16)[0].tolist()}
    held = {tuple(r) for r in corpus_rows(tokenizer, "heldout", seq_len)[0].tolist()}
    for split in (data.train, data.val):
        rows = {tuple(r) for r in split["input_ids"].tolist()}
        assert rows <= train and not rows & held
    assert torch.equal(data.train["input_ids"], adapter.distill_data(embedded, None, n_train=12, n_val=4, seed=0)
                       .train["input_ids"])


# -- the build script -------------------------------------------------------------------------------------


def test_quick_build_writes_a_loadable_reproducible_folder(embedded, tmp_path):
    out = tmp_path / "built"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--seed", "3", "--out", str(out)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((out / BUILD_FILE).read_text(encoding="utf-8"))
    assert report["quick"] is True and report["seed"] == 3 and report["training"]["steps"] == 12
    assert math.isfinite(report["heldout"]["perplexity"]) and not (tmp_path / "built.building").exists()
    loaded = get_adapter("tiny-gemma").load(str(out))
    assert _same_weights(loaded.student, get_adapter("gemma").load(str(out)).student)
    assert not _same_weights(loaded.student, embedded.student)
    ids = heldout_rows(loaded, 2)
    assert loaded.student(input_ids=ids).logits.shape == (2, ids.shape[1], VOCAB)
    # the same seed in another process gives the same weights, bit for bit
    spec = importlib.util.spec_from_file_location("build_tiny_gemma", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    again = module.main(["--quick", "--seed", "3", "--out", str(tmp_path / "again")])
    assert again["weights_sha256"] == report["weights_sha256"] == weights_sha256(out)
    # it never replaces a folder it did not write
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit):
        module.main(["--quick", "--steps", "1", "--out", str(tmp_path / "other")])
    assert (tmp_path / "other" / "keep.txt").read_text() == "mine"
