"""FraQAT training: distil a frozen full-precision teacher into a fractional-bit quantized student.

Validation runs on held-out rows (``heldout.py``: prompts and noise seeds, or text files, that training never
sees) at every stage boundary and at the end; the teacher's outputs on them are computed once.
Activation encodings come from ``--calibration`` over ``--calib-samples`` training rows before the first step
(again at each stage start with ``--recalibrate-each-stage``); ``learned`` trains them with the weights.

Layout written under ``<run>/train/``: ``metrics.jsonl`` (one line per step and per validation),
``quant_state.json``, ``model.safetensors`` (final weights, as held: a 16-bit checkpoint's trained parameters in
float32, its others 16-bit, see ``float32_masters``), ``data.safetensors`` (the distillation inputs,
cached), ``checkpoints/step-N/``. ``--resume`` continues from the newest checkpoint and, on the CPU, ends
with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import Progress
from safetensors.torch import load_file, save_file
from torch import nn

from fraqat_deploy.errors import ConfigError, InputError
from fraqat_deploy.models import DistillData, LoadedModel, ModelAdapter, get_adapter
from fraqat_deploy.models.half import HALF, upcast_parameters
from fraqat_deploy.quant import (
    calibrate,
    clamp_learned,
    learned_parameters,
    load_quant_state,
    prepare,
    quant_layers,
    quant_state,
    set_trainable,
    set_weight_bits,
)
from fraqat_deploy.runs import RunDir, write_json_atomic
from fraqat_deploy.train import checkpoint as ckpt
from fraqat_deploy.train.config import TrainConfig
from fraqat_deploy.train.distributed import Distributed
from fraqat_deploy.train.heldout import heldout_rows
from fraqat_deploy.ui import console, progress

#: learned activation encodings train at this multiple of --lr (log-scale and zero-point steps, see LearnedEncoding)
ENCODING_LR_FACTOR = 10.0
#: validation batches (no gradients: larger batches, less overhead)
VAL_BATCH = 64


@dataclass
class TrainResult:
    run: Path
    steps: int
    final_bits: float
    val_loss: float
    stage_val: list[dict[str, Any]]  # per stage: bits, val loss at its start and end


def distill_loss(student_out: torch.Tensor, teacher_out: torch.Tensor, kind: str) -> torch.Tensor:
    s, t = student_out.float(), teacher_out.float()
    if kind == "mse":
        return F.mse_loss(s, t)
    # KL(teacher || student) per token, over the vocabulary
    return F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="none").sum(-1).mean()


def float32_masters(student: nn.Module) -> str:
    """Every trainable 16-bit parameter of ``student`` becomes float32 before the optimizer sees it: its "master"
    weight, as in any mixed-precision trainer. Updated in bfloat16 (8 significant bits), an Adam step smaller than
    half a unit in the last place of the weight (1.2e-4 at |w| ~ 0.02, above a 1e-4 step) would be rounded away.
    Parameters that do not train stay as loaded (16-bit, computing in float32: ``models/half.py``), and so does the
    teacher. Returns what run.json records."""
    trainable = [(name, p) for name, p in student.named_parameters() if p.requires_grad]
    half = {name: p.dtype for name, p in trainable if p.dtype in HALF}
    upcast_parameters(student, set(half))
    if not half:
        return f"as loaded ({', '.join(sorted({str(p.dtype).removeprefix('torch.') for _, p in trainable}))})"
    kinds = " / ".join(sorted({str(d).removeprefix("torch.") for d in half.values()}))
    return f"float32 ({len(half)} of {len(trainable)} trainable parameters were {kinds})"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _batches(tensors: dict[str, torch.Tensor], size: int):
    n = DistillData.rows(tensors)
    for i in range(0, n, size):
        yield {k: v[i : i + size] for k, v in tensors.items()}


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


class Trainer:
    def __init__(self, config: TrainConfig, show_progress: bool = True, bar: Progress | None = None) -> None:
        self.cfg = config
        self.bar = bar  # an outer progress display to add the training task to (the quick start's)
        self.dist = Distributed.from_env()
        self.device = self.dist.device()
        self.run = RunDir(config.out)
        self.dir = config.out / "train"
        self.adapter: ModelAdapter = get_adapter(config.model)
        self.loss_kind = config.loss or self.adapter.default_loss
        self.schedule = config.bit_schedule
        self.show_progress = show_progress and self.dist.is_main

    # ---- setup -------------------------------------------------------------------------------------------
    def _load_model(self) -> LoadedModel:
        manifest = self.run.manifest()
        if self.cfg.resume:
            spec = manifest.get("model", {}).get("spec")
            if spec is None:
                raise InputError(f"{self.run.path} has no model to resume", "start without --resume")
            return self.adapter.load_from_spec(spec)
        return self.adapter.load(self.cfg.source, tiny=self.cfg.tiny, seed=self.cfg.seed)

    def _data(self, model: LoadedModel) -> DistillData:
        """Training rows and validation rows: held-out ones where the model has a held-out source, else split
        from the training source. ``description`` says which (recorded in run.json)."""
        cache = self.dir / "data.safetensors"
        key = json.dumps({"data": str(self.cfg.data), "n_train": self.cfg.n_train, "n_val": self.cfg.n_val,
                          "seed": self.cfg.seed, "spec": model.spec, "val": "heldout-1"}, sort_keys=True)
        if cache.is_file():
            meta_path = cache.with_suffix(".json")
            if meta_path.is_file() and meta_path.read_text() == key:
                t = load_file(str(cache))
                split = lambda p: {k[len(p):]: v for k, v in t.items() if k.startswith(p)}  # noqa: E731
                desc_path = cache.with_name("data-description.txt")
                return DistillData(split("train."), split("val."),
                                   desc_path.read_text() if desc_path.is_file() else "")
        heldout = heldout_rows(self.adapter, model, self.cfg.data, self.cfg.n_val, self.cfg.seed)
        if heldout is not None:
            data = self.adapter.distill_data(model, self.cfg.data, n_train=self.cfg.n_train, n_val=0,
                                             seed=self.cfg.seed)
            data = DistillData(data.train, heldout[0], f"train: {data.description}; validation: {heldout[1]}")
        else:
            data = self.adapter.distill_data(model, self.cfg.data, n_train=self.cfg.n_train, n_val=self.cfg.n_val,
                                             seed=self.cfg.seed)
            data = DistillData(data.train, data.val, f"train: {data.description}; validation: {self.cfg.n_val} "
                               "rows split from the same source (no held-out source for this model and data)")
        if self.dist.is_main:
            cache.with_name("data-description.txt").write_text(data.description)
            flat = {f"train.{k}": v.contiguous() for k, v in data.train.items()}
            flat |= {f"val.{k}": v.contiguous() for k, v in data.val.items()}
            save_file(flat, str(cache))
            cache.with_suffix(".json").write_text(key)
        return data

    def _trainable_patterns(self) -> tuple[str, ...] | None:
        choice = self.cfg.trainable
        if choice == "all":
            return None
        patterns = {"ff": self.adapter.ff_patterns, "attn": self.adapter.attn_patterns,
                    "blocks": self.adapter.block_patterns}[choice]
        if not patterns:
            raise ConfigError(f"model '{self.adapter.name}' does not define '{choice}' modules", "use --trainable all")
        return patterns

    # ---- evaluation --------------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self, student: nn.Module, teacher: nn.Module, val: dict[str, torch.Tensor],
                 targets: list[torch.Tensor] | None = None) -> float:
        """Mean distillation loss over ``val``; ``targets`` are the teacher's outputs per batch, if computed."""
        student.eval()
        total, n = 0.0, 0
        for i, batch in enumerate(_batches(val, max(self.cfg.batch_size, VAL_BATCH))):
            batch = _to(batch, self.device)
            with self._autocast():
                target = targets[i].to(self.device) if targets else self.adapter.forward(teacher, batch)
                loss = distill_loss(self.adapter.forward(student, batch), target, self.loss_kind)
            rows = DistillData.rows(batch)
            total, n = total + float(loss) * rows, n + rows
        student.train()
        return total / max(n, 1)

    @torch.no_grad()
    def teacher_targets(self, teacher: nn.Module, val: dict[str, torch.Tensor]) -> list[torch.Tensor] | None:
        """The teacher's outputs on the validation rows, once (None when they would take over ~256 MB)."""
        targets, size = [], 0
        for batch in _batches(val, max(self.cfg.batch_size, VAL_BATCH)):
            with self._autocast():
                out = self.adapter.forward(teacher, _to(batch, self.device)).cpu()
            size += out.numel() * out.element_size()
            if size > 256 << 20:
                return None
            targets.append(out)
        return targets

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")

    # ---- the run -----------------------------------------------------------------------------------------
    def train(self) -> TrainResult:
        cfg = self.cfg
        if cfg.out.exists() and (self.dir / "checkpoints").exists() and not cfg.resume:
            raise InputError(f"{cfg.out} already holds a training run", "pass --resume to continue it, or a new --out")
        latest = ckpt.list_checkpoints(self.dir / "checkpoints")
        if cfg.resume and not latest:
            raise InputError(f"no checkpoint to resume in {self.dir / 'checkpoints'}", "start without --resume")
        seed_everything(cfg.seed)
        model = self._load_model()
        self.dir.mkdir(parents=True, exist_ok=True)
        data = self._data(model)  # before prepare(): Sana samples its trajectories with the FP model
        # the teacher shares the tensors the student never changes in place (no copy of a 2.6B model's weights):
        # every weight of a PTQ run, and a training run's 16-bit weights (a trainable one becomes a new float32
        # master, see float32_masters; the others stay frozen as loaded); a float32 weight that trains is copied
        shared = {id(p): p for p in model.student.parameters() if not self.schedule.trains or p.dtype in HALF}
        teacher = copy.deepcopy(model.student, memo=shared).to(self.device).eval()
        student = model.student.to(self.device)
        policy = cfg.policy(self.adapter.quant_targets, self.adapter.last_layer_patterns)
        try:
            prepared = prepare(student, policy)
            n_trainable = set_trainable(student, self._trainable_patterns())
        except ValueError as e:
            raise ConfigError(str(e)) from None
        # float32 master weights for what trains (before the optimizer, and on resume before the checkpoint's
        # float32 weights are copied in); a PTQ run updates nothing and keeps the weights as loaded
        if self.schedule.trains:
            masters = float32_masters(student)
            teacher.requires_grad_(False)  # (after the student's flags: the shared tensors that train are masters now)
        else:  # a PTQ teacher holds only the student's tensors (their flags stay the student's) and runs under no_grad
            masters = "none (PTQ: no weight is updated)"
        n_train = DistillData.rows(data.train)
        if self.dist.is_main:
            self.run.update(model={"adapter": self.adapter.name, "spec": model.spec})
            self.run.update_stage("train", "running", args=cfg.to_dict(), schedule=self.schedule.spec(),
                                  policy=policy.to_dict(), quantized_layers=len(prepared.layers),
                                  trainable_parameters=n_trainable, master_weights=masters)

        calib = {k: v[: cfg.calib_samples] for k, v in data.train.items()}

        def run_calibration(bits: float) -> None:
            """(Re)set the static activation encodings with the student at ``bits``."""
            set_weight_bits(student, bits)

            def forwards() -> None:
                for b in _batches(calib, cfg.batch_size):
                    self.adapter.forward(student, _to(b, self.device))

            calibrate(student, forwards, policy.calibration)

        if not (latest and cfg.resume):
            # once before the first step, with the student at its first bit-width (learned: the starting point)
            run_calibration(self.schedule.stages[0].bits)
        else:
            load_quant_state(student, json.loads((latest[-1] / "quant_state.json").read_text()))
        if self.dist.is_main:
            self.run.update_stage("train", "running", data=data.description, validation_rows=DistillData.rows(
                data.val), calibration={"method": policy.calibration, "samples": DistillData.rows(calib),
                                        "each_stage": cfg.recalibrate_each_stage})

        steps_per_epoch = max(1, n_train // (cfg.batch_size * cfg.grad_accum))
        total = cfg.steps or max(len(self.schedule.stages), round(self.schedule.total_duration * steps_per_epoch))
        if not self.schedule.trains:
            total = 0
        bounds = self.schedule.boundaries(total) if total else []
        params = [p for p in student.parameters() if p.requires_grad]
        encoding_params = learned_parameters(student)  # --calibration learned: scales and zero points
        opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        groups = [{"params": params}] + ([{"params": encoding_params, "weight_decay": 0.0,
                                           "lr": cfg.lr * ENCODING_LR_FACTOR}] if encoding_params else [])
        optimizer = opt_cls(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        gen = torch.Generator().manual_seed(cfg.seed)
        perm, pos, step = torch.randperm(n_train, generator=gen), 0, 0
        stage_val: list[dict[str, Any]] = []

        metrics_path = self.dir / "metrics.jsonl"
        if latest and cfg.resume:
            state = ckpt.load_trainer_state(latest[-1])
            ckpt.load_weights(student, latest[-1] / "model.safetensors")
            optimizer.load_state_dict(state["optimizer"])
            gen.set_state(state["generator"])
            perm, pos, step, stage_val = state["perm"], state["pos"], state["step"], state["stage_val"]
            ckpt.set_rng_state(state["rng"])
            if state["total"] != total:
                raise ConfigError(f"the run was started with {state['total']} steps, not {total}",
                                  "resume with the same --steps, --batch-size and data")
            self._truncate_metrics(metrics_path, step)
            if self.dist.is_main:
                console.print(f"resuming {cfg.out} at step {step}/{total}")
        elif self.dist.is_main:  # another rank unlinking would orphan the file rank 0 appends to
            metrics_path.unlink(missing_ok=True)
        val_targets = self.teacher_targets(teacher, data.val)

        metrics = open(metrics_path, "a") if self.dist.is_main else None
        ddp_student = self.dist.wrap(student)
        t0 = time.time()

        def log(record: dict[str, Any]) -> None:
            if metrics:
                metrics.write(json.dumps(record) + "\n")
                metrics.flush()

        def val_event(when: str, stage_index: int, bits: float) -> float:
            if not cfg.val_at_stages and not (when == "stage_start" and stage_index == 0) and not (
                    when == "stage_end" and stage_index == max(len(bounds) - 1, 0)):
                loss = float("nan")  # not measured: only the first start and the last end are
                if when == "stage_start":
                    stage_val.append({"stage": stage_index, "bits": bits, "start": loss})
                elif when == "stage_end":
                    stage_val[-1]["end"] = loss
                return loss
            loss = self.dist.mean(self.validate(student, teacher, data.val, val_targets))
            log({"event": "val", "when": when, "step": step, "stage": stage_index, "bits": bits, "val_loss": loss})
            if when == "stage_start":
                stage_val.append({"stage": stage_index, "bits": bits, "start": loss})
            elif when == "stage_end":
                stage_val[-1]["end"] = loss
            return loss

        with contextlib.nullcontext(self.bar) if self.bar is not None else progress(
                disable=not self.show_progress) as bar:
            task = bar.add_task(f"FraQAT {self.schedule.name}", total=total, completed=step, info="")
            if not self.schedule.trains:  # PTQ: round at the final bits, recalibrate, no step
                if self.schedule.stages[0].bits != self.schedule.final_bits:
                    run_calibration(self.schedule.final_bits)
                set_weight_bits(student, self.schedule.final_bits)
                val_event("stage_start", 0, self.schedule.final_bits)
                val_event("stage_end", 0, self.schedule.final_bits)
            while step < total:
                si = next(i for i, (s, e, _) in enumerate(bounds) if s <= step < e)
                start, end, bits = bounds[si]
                set_weight_bits(student, bits)
                if step == start:
                    if cfg.recalibrate_each_stage and si > 0:
                        run_calibration(bits)
                    val_event("stage_start", si, bits)
                optimizer.zero_grad(set_to_none=True)
                step_loss = 0.0
                for _ in range(cfg.grad_accum):
                    if pos + cfg.batch_size > n_train:
                        perm, pos = torch.randperm(n_train, generator=gen), 0
                    idx = self.dist.shard(perm[pos : pos + cfg.batch_size])
                    pos += cfg.batch_size
                    batch = _to({k: v[idx] for k, v in data.train.items()}, self.device)
                    with self._autocast():
                        with torch.no_grad():
                            target = self.adapter.forward(teacher, batch)
                        loss = distill_loss(self.adapter.forward(ddp_student, batch), target, self.loss_kind)
                    (loss / cfg.grad_accum).backward()
                    step_loss += float(loss.detach()) / cfg.grad_accum
                if not math.isfinite(step_loss):
                    raise ConfigError(f"the loss became {step_loss} at step {step}", "lower --lr")
                if encoding_params and self.dist.enabled:  # outside DDP: average their gradients by hand
                    for p in encoding_params:
                        if p.grad is not None:
                            torch.distributed.all_reduce(p.grad)
                            p.grad /= self.dist.world_size
                optimizer.step()
                clamp_learned(student)
                step += 1
                step_loss = self.dist.mean(step_loss)
                log({"event": "train", "step": step, "stage": si, "bits": bits, "loss": step_loss,
                     "lr": cfg.lr, "time": round(time.time() - t0, 3)})
                if cfg.eval_every and step % cfg.eval_every == 0 and step != end:
                    val_event("periodic", si, bits)
                if step == end:
                    val_event("stage_end", si, bits)
                bar.update(task, completed=step,
                           info=f"stage {si + 1}/{len(bounds)}  {bits:g} bits  loss {step_loss:.3g}")
                if self.dist.is_main and (step % cfg.checkpoint_every == 0 or step == total):
                    ckpt.save_checkpoint(self.dir / "checkpoints", step, student, quant_state(student, policy), {
                        "optimizer": optimizer.state_dict(), "generator": gen.get_state(), "perm": perm,
                        "pos": pos, "step": step, "total": total, "stage_val": stage_val,
                    }, cfg.keep_checkpoints)
        if metrics:
            metrics.close()

        final_loss = stage_val[-1]["end"] if stage_val else float("nan")
        if self.dist.is_main:
            qs = quant_state(student, policy)
            write_json_atomic(self.dir / "quant_state.json", qs)
            ckpt.save_weights(student, self.dir / "model.safetensors")
            self.run.update_stage("train", "done", steps=total, final_bits=self.schedule.final_bits,
                                  val_loss=final_loss, stage_val=stage_val, seconds=round(time.time() - t0, 1))
            self.run.record_outputs("train", [self.dir / "model.safetensors", self.dir / "quant_state.json",
                                              metrics_path])
        self.dist.barrier()
        self.dist.close()
        assert len(quant_layers(student)) == len(prepared.layers)
        return TrainResult(self.run.path, total, self.schedule.final_bits, final_loss, stage_val)

    @staticmethod
    def _truncate_metrics(path: Path, step: int) -> None:
        """Drop what a killed run logged after its last checkpoint: those steps are trained again."""
        if not path.is_file():
            return
        keep = []
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by the kill
            restarted = rec["step"] == step and rec.get("when") == "stage_start"  # logged again on resume
            if rec["step"] < step or (rec["step"] == step and not restarted):
                keep.append(line)
        path.write_text("".join(line + "\n" for line in keep))


def train(config: TrainConfig, show_progress: bool = True, bar: Progress | None = None) -> TrainResult:
    return Trainer(config, show_progress, bar).train()
