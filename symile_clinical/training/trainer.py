"""The trainer: Symile, pairwise CLIP, GRAM, TRIANGLE or Gated Symile over a dataset
directory, on CPU, one GPU or many.

One optimiser step: a global batch of `batch_size` admissions (split evenly over the ranks
under torchrun), forward under autocast (bf16 on CUDA), the loss (which gathers the other
ranks' embeddings itself, so negatives are global), backward, gradient clipping, AdamW,
the warm-up + cosine schedule, and the logit scale clamped at ln 100. `compute_loss` picks
the objective's loss; the heads some objectives add (Gated Symile's gate, GRAM's matching
head) are submodules of the model, so that DDP averages their gradients like the encoders'.

`Trainer` holds one run's moving parts (model, optimiser, schedule, scaler, generators,
progress), built from a config, a `DatasetDir`, a `RunDir` and the `World`; its
`state_dict()` is the checkpoint. `train` drives it: `run_epoch()`, then `validate()` and
`end_epoch()` (keep the best, count patience, checkpoint), until the epochs, `max_steps` or
the patience run out.

Every source of randomness is explicit and checkpointed, so a run killed and resumed ends
with the same weights as one that never stopped (bit for bit on CPU):
- the data order is a permutation drawn per epoch from np.random.default_rng([seed, epoch]);
  resuming skips the batches the checkpoint had already used;
- lab dropout, augmentation, the "n" negatives' shuffles and GRAM's hard negatives draw
  from their own torch.Generators;
- dropout layers draw from torch's global generator (nn.Dropout takes no generator), which
  is seeded once here and saved with the checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from models import ThreeModalityModel, WeightsError, build_model
from symile_clinical.errors import SymileClinicalError
from symile_clinical.evaluation.embedding import SplitEmbeddings, autocast, embed_split, to_device
from symile_clinical.evaluation.retrieval import rank_queries
from symile_clinical.formats.atomic import remove_stale_temporaries, write_text_atomic
from symile_clinical.formats.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    check_model_shapes,
    load_checkpoint,
    previous_path,
    save_checkpoint,
)
from symile_clinical.formats.dataset_dir import CandidateSets, DatasetDir
from symile_clinical.formats.run_config import ConfigError, TrainConfig, config_to_dict
from symile_clinical.formats.run_dir import RunDir
from symile_clinical.objective.gated_symile import gated_symile_loss, missing_from_labs_observed
from symile_clinical.objective.gram import data_anchor_matching_loss, gram_loss
from symile_clinical.objective.losses import clip_loss, symile_loss
from symile_clinical.objective.scores import ObjectiveScore, objective_score
from symile_clinical.objective.triangle import triangle_loss
from symile_clinical.training.augment import augment, drop_labs
from symile_clinical.training.config import fit_model_to_data
from symile_clinical.training.distributed import World, joined_world
from symile_clinical.training.memmap_dataset import MemmapDataset

log = logging.getLogger(__name__)

RANK_SEED_STRIDE = 1_000_003


class RunExistsError(SymileClinicalError):
    """The run directory already holds a checkpoint and --resume was not asked for."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path, "already holds a run; pass --resume to continue it")


@dataclass(frozen=True)
class TrainResult:
    """What a finished (or early-stopped) run reached."""

    run_dir: Path
    steps: int
    epochs_completed: int
    best_val_acc: float | None
    best_epoch: int | None
    stopped_early: bool


@dataclass
class _Progress:
    """Position in training and model-selection state; saved in every checkpoint."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_val_acc: float | None = None
    best_epoch: int | None = None
    epochs_without_improvement: int = 0
    stopped_early: bool = False


class WarmupCosine:
    """LR multiplier: linear warm-up over `warmup` steps, then cosine from 1 to `floor`.

    A class (not a closure) so LambdaLR's state_dict records its plain-number fields.
    """

    def __init__(self, warmup: int, total: int, floor: float) -> None:
        self.warmup = warmup
        self.total = total
        self.floor = floor

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        span = max(1, self.total - self.warmup)
        progress = min(1.0, (step - self.warmup) / span)
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * progress))


class GlobalBatchSampler(Sampler[list[int]]):
    """This rank's share of each global batch, for one epoch; drops the incomplete last batch.

    The epoch's order is np.random.default_rng([seed, epoch]).permutation(n); global batch s
    is perm[s*G : (s+1)*G] and rank r takes its r-th contiguous slice. Unlike
    torch's DistributedSampler (which interleaves ranks), the ranks' slices concatenated in
    rank order are exactly the batch one process would see, which is what makes a
    data-parallel run equal a single-process one; `skip` resumes mid-epoch.
    """

    def __init__(
        self,
        n: int,
        global_batch: int,
        rank: int,
        world_size: int,
        seed: int,
        epoch: int,
        skip: int = 0,
    ) -> None:
        if global_batch % world_size:
            raise ValueError(f"batch {global_batch} is not divisible by {world_size} ranks")
        self.n, self.global_batch, self.seed, self.epoch = n, global_batch, seed, epoch
        self.local = global_batch // world_size
        self.rank, self.skip = rank, skip

    def batches_per_epoch(self) -> int:
        """Complete global batches in one epoch."""
        return self.n // self.global_batch

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch() - self.skip)

    def __iter__(self) -> Iterator[list[int]]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        for s in range(self.skip, self.batches_per_epoch()):
            start = s * self.global_batch + self.rank * self.local
            yield order[start : start + self.local].tolist()


class TrainStep(nn.Module):
    """What DDP wraps: the three embeddings, exp(logit_scale) and, for Gated Symile, the gate
    run on the embeddings, in one forward, so that every parameter, the logit scale and the
    gate included, is used inside the wrapped call. GRAM's matching head is a submodule too
    (its gradients are averaged with the rest) but is called by the loss, which needs the
    global batch's hard negatives."""

    def __init__(self, model: ThreeModalityModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, ecg: torch.Tensor, labs: torch.Tensor, observed: torch.Tensor, cxr: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, Any]:
        """(ecg_emb, labs_emb, cxr_emb [B, d], exp(logit_scale), the gate's output or None)."""
        ecg_emb, labs_emb, cxr_emb = self.model(ecg, labs, observed, cxr)
        gate = self.model.gate
        gated = gate([ecg_emb, labs_emb, cxr_emb]) if gate is not None else None
        return ecg_emb, labs_emb, cxr_emb, self.model.logit_scale.exp(), gated


def _uses_cuda(requested: str) -> bool:
    return requested == "cuda" or (requested == "auto" and torch.cuda.is_available())


def resolve_device(requested: str, local_rank: int = 0) -> torch.device:
    """ "auto" -> cuda:<local_rank> when CUDA is available, else cpu."""
    if not _uses_cuda(requested):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("device", "cuda requested but torch.cuda.is_available() is False")
    return torch.device("cuda", local_rank)


def autocast_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for this config on this device; None means full fp32."""
    precision = config.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def compute_loss(
    config: TrainConfig,
    embeddings: list[torch.Tensor],
    scale: torch.Tensor,
    generator: torch.Generator,
    model: ThreeModalityModel | None = None,
    gated: Any = None,
    observed: torch.Tensor | None = None,
) -> torch.Tensor:
    """The configured objective on [ecg, labs, cxr] embeddings ([B, d] each).

    GRAM adds its data-anchor matching term with `model.matching_head` (hard negatives from
    `generator`); Gated Symile takes the gate's output `gated` (TrainStep's) and flags the labs
    of rows with no observed lab (`observed` [B, L], 1 = observed) missing.
    """
    objective = config.objective
    if objective == "clip":
        return clip_loss(embeddings, scale)
    if objective == "symile":
        return symile_loss(embeddings, scale, negatives=config.negatives, generator=generator)
    if objective == "triangle":
        return triangle_loss(embeddings, scale)
    if objective == "gram":
        head = model.matching_head if model is not None else None
        if head is None:
            raise ValueError("GRAM trains its matching head: build the model for it")
        return gram_loss(embeddings, scale) + data_anchor_matching_loss(
            embeddings, scale, head, generator
        )
    if objective == "gated-symile":
        if gated is None or observed is None:
            raise ValueError("Gated Symile needs the gate's output and the labs' observed mask")
        return gated_symile_loss(embeddings, scale, gated, missing_from_labs_observed(observed))
    raise ValueError(f"unknown objective {objective!r}")


def retrieval_accuracy(
    embeddings: SplitEmbeddings,
    candidates: CandidateSets,
    objective: str | ObjectiveScore,
    seed: int = 0,
    labs_missing: np.ndarray | None = None,
) -> float:
    """Top-1 accuracy of retrieving each query's CXR among its candidate set, ranked as the
    evaluation ranks (`retrieval.rank_queries`: the objective's score, ties broken at random,
    seeded); labs_missing: bool [N] per split row, for a score that takes missing flags."""
    ranks = rank_queries(
        objective,
        embeddings.ecg,
        embeddings.labs,
        embeddings.cxr,
        candidates,
        seed,
        labs_missing=labs_missing,
    )
    return ranks.candidate_top1()


def train_step(
    forward: nn.Module,
    model: ThreeModalityModel,
    batch: dict[str, torch.Tensor],
    config: TrainConfig,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    generator: torch.Generator,
    amp_dtype: torch.dtype | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step on a batch already on the device; returns (loss, gradient norm),
    the norm before clipping.

    `forward` is the (possibly DDP-wrapped or compiled) TrainStep around `model`; the
    caller steps the LR schedule. The logit scale is clamped at ln 100 afterwards.
    """
    device = batch["ecg"].device
    with autocast(device, amp_dtype):
        ecg_emb, labs_emb, cxr_emb, scale, gated = forward(
            batch["ecg"], batch["labs"], batch["labs_observed"], batch["cxr"]
        )
    loss = compute_loss(
        config,
        [ecg_emb, labs_emb, cxr_emb],
        scale,
        generator,
        model=model,
        gated=gated,
        observed=batch["labs_observed"],
    )
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    # grad_clip 0 means no clipping; the norm is measured (and logged) either way.
    max_norm = config.grad_clip if config.grad_clip > 0 else float("inf")
    grad_norm = nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    scaler.step(optimizer)
    scaler.update()
    model.clamp_logit_scale()
    return loss.detach(), grad_norm.detach()


class _MetricsLog:
    """The run's metrics log (one JSON object per event) and, if importable, TensorBoard;
    written by rank 0 only."""

    def __init__(self, run: RunDir, enabled: bool) -> None:
        self.path = run.metrics_log
        self.enabled = enabled
        self.tensorboard = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                log.debug("tensorboard not installed; metrics go to %s only", self.path)
            else:
                self.tensorboard = SummaryWriter(str(run.tensorboard_dir))

    def truncate_after(self, step: int) -> None:
        """Drop events logged after `step` (a killed run's steps that the resume repeats)."""
        if not self.enabled or not self.path.exists():
            return
        kept = [
            line
            for line in self.path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step
        ]
        write_text_atomic(self.path, "".join(line + "\n" for line in kept))

    def write(self, event: str, **values: Any) -> None:
        """Append one event (and its float values to TensorBoard)."""
        if not self.enabled:
            return
        record = {"event": event, "time": round(time.time(), 3), **values}
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            for key, value in values.items():
                if isinstance(value, float) and key != "step":
                    self.tensorboard.add_scalar(f"{event}/{key}", value, values.get("step", 0))

    def close(self) -> None:
        """Close TensorBoard's writer."""
        if self.tensorboard is not None:
            self.tensorboard.close()


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices and kernels only; biases, norms and the logit scale are exempt
    (CLIP's convention: decaying a temperature or a norm's gain is not regularisation)."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _rng_state(generators: dict[str, torch.Generator], device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    state.update({name: g.get_state() for name, g in generators.items()})
    return state


def _set_rng_state(
    state: dict[str, Any], generators: dict[str, torch.Generator], device: torch.device
) -> None:
    """Restore the random states a checkpoint saved (_rng_state). A generator the checkpoint
    has no state for (written before it existed) keeps its fresh seed, with a warning."""
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
    for name, generator in generators.items():
        if name not in state:
            log.warning(
                "the checkpoint has no state for the random generator %r (written before it "
                "existed): it keeps its fresh seed, so the resumed run's draws differ from an "
                "uninterrupted one",
                name,
            )
            continue
        generator.set_state(state[name])


def _load_resume_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint at `path`, or the one it replaced when it is unusable (the error is
    logged, naming it)."""
    try:
        return load_checkpoint(path)
    except CheckpointError as error:
        previous = previous_path(path)
        if not previous.exists():
            raise
        log.error("%s; resuming from the previous checkpoint %s", error, previous)
        return load_checkpoint(previous)


def _prepare_run_dir(
    config: TrainConfig, dataset: DatasetDir, run: RunDir, resume: bool, is_main: bool
) -> bool:
    """Check the run's config (on resume) or write it; True when there is a checkpoint to
    resume from."""
    has_checkpoint = run.has_checkpoint()
    if has_checkpoint and not resume:
        raise RunExistsError(run.path)
    if resume and run.has_config():
        if run.read_config() != config:
            raise ConfigError(
                run.config_path, "differs from the config given; resume with the run's own config"
            )
    elif is_main:
        run.write_config(config, dataset)
    return resume and has_checkpoint


@dataclass
class _LogWindow:
    """Losses, gradient norms and samples since the last "train" event (spans epochs)."""

    losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    samples: int = 0
    start: float = field(default_factory=time.perf_counter)

    def add(self, loss: float, grad_norm: float, samples: int) -> None:
        """Record one step."""
        self.losses.append(loss)
        self.grad_norms.append(grad_norm)
        self.samples += samples

    def flush(self) -> tuple[float, float, float]:
        """(mean loss, mean gradient norm, samples/s) of the window, which starts anew."""
        elapsed = time.perf_counter() - self.start
        samples_per_s = self.samples / elapsed if elapsed > 0 else float("nan")
        means = float(np.mean(self.losses)), float(np.mean(self.grad_norms))
        self.losses, self.grad_norms, self.samples = [], [], 0
        self.start = time.perf_counter()
        return (*means, samples_per_s)


class Trainer:
    """One run's moving parts: model (DDP-wrapped under torchrun), AdamW, the warm-up + cosine
    schedule, the gradient scaler, the seeded generators and the progress.

    Built from a config, a dataset, a run directory and the world; with `resume`, restored
    from the run's last checkpoint. `state_dict()` is the checkpoint's content.
    """

    def __init__(
        self,
        config: TrainConfig,
        dataset: DatasetDir,
        run: RunDir,
        world: World,
        resume: bool = False,
    ) -> None:
        self.world, self.dataset, self.run = world, dataset, run
        self.device = device = resolve_device(config.device, world.local_rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        config = fit_model_to_data(config, dataset.split("train"))
        if config.batch_size % world.world_size:
            raise ConfigError(
                "batch_size", f"{config.batch_size} not divisible by {world.world_size} ranks"
            )
        self.config = config
        resuming = _prepare_run_dir(config, dataset, run, resume, world.is_main)
        if world.is_main:  # a run killed while writing a checkpoint left its temporary
            remove_stale_temporaries(run.checkpoints_dir)
        world.barrier()  # the config is written before any rank reads the run directory

        self.fill = torch.from_numpy(dataset.fill_values)
        self.val_arrays = dataset.split("val")
        self.val_candidates = dataset.candidates("val")
        if len(self.val_candidates) == 0:
            log.warning(
                "no val candidate sets in %s: the best checkpoint is the last", dataset.path
            )
        self.amp_dtype = autocast_dtype(config, device)
        self.channels_last = (
            config.channels_last if config.channels_last is not None else device.type == "cuda"
        )
        self.model, self.step_module = self._build_model(resuming)
        self.forward = torch.compile(self.step_module) if config.compile else self.step_module
        self.optimizer = torch.optim.AdamW(
            _param_groups(self.model, config.weight_decay),
            lr=config.lr,
            betas=config.betas,
            foreach=True,
        )
        self.train_data = MemmapDataset(dataset, "train")
        self.batches_per_epoch = len(self.train_data) // config.batch_size
        if self.batches_per_epoch == 0:
            raise ConfigError(
                "batch_size",
                f"{config.batch_size} exceeds the {len(self.train_data)} training rows",
            )
        total = config.epochs * self.batches_per_epoch
        self.total_steps = total if config.max_steps is None else min(total, config.max_steps)
        schedule = WarmupCosine(
            min(config.warmup_steps, self.total_steps), self.total_steps, config.min_lr_ratio
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.generators = {
            "loss": torch.Generator(device=device).manual_seed(config.seed),
            "lab_dropout": torch.Generator().manual_seed(config.seed + 1),
        }
        self.augmentation = config.augmentation
        if self.augmentation.enabled:  # absent otherwise, so older checkpoints still resume
            self.generators["augment"] = torch.Generator().manual_seed(config.seed + 2)
        if self.augmentation.noise_enabled:  # drawn where the batch is: no host-to-device copy
            self.generators["augment_noise"] = torch.Generator(device=device).manual_seed(
                config.seed + 3
            )
        self.progress = _Progress()
        self.metrics = _MetricsLog(run, enabled=world.is_main)
        self.window = _LogWindow()
        if resuming:
            state = _load_resume_checkpoint(run.last_checkpoint)
            check_model_shapes(run.last_checkpoint, self.model, state)
            self.load_state_dict(state)
            self.metrics.truncate_after(self.progress.step)
            log.info(
                "resumed %s at step %d (epoch %d)",
                run.path,
                self.progress.step,
                self.progress.epoch,
            )

    def _build_model(self, resuming: bool) -> tuple[ThreeModalityModel, nn.Module]:
        """The model on the device and the TrainStep around it (DDP-wrapped under torchrun);
        weights files start a new run only (a resumed one has its checkpoint)."""
        config, device = self.config, self.device
        # The global generator drives dropout layers only; seeded per rank, saved in checkpoints.
        # Ranks are RANK_SEED_STRIDE apart so that no rank's stream is a named generator's
        # (seed + 1, seed + 2, ...).
        torch.manual_seed(config.seed + RANK_SEED_STRIDE * self.world.rank)
        try:
            model = build_model(
                config.model,
                seed=config.seed,
                cxr_weights=Path(config.cxr_weights)
                if config.cxr_weights and not resuming
                else None,
                encoder_weights=(
                    Path(config.encoder_weights)
                    if config.encoder_weights and not resuming
                    else None
                ),
            ).to(device)
        except WeightsError as error:  # models/ knows only torch: its error joins ours here
            raise ConfigError(error.path, error.reason) from error
        if self.channels_last:
            model.cxr_encoder.to(memory_format=torch.channels_last)
        step_module: nn.Module = TrainStep(model)
        if self.world.joined:
            step_module = nn.parallel.DistributedDataParallel(
                step_module, device_ids=[device.index] if device.type == "cuda" else None
            )
        return model, step_module

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The checkpoint: format, model, optimizer, scheduler, scaler, rng, progress, config."""
        return {
            "format": CHECKPOINT_FORMAT,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": _rng_state(self.generators, self.device),
            "progress": dataclasses.asdict(self.progress),
            "config": json.dumps(config_to_dict(self.config)),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore everything `state_dict()` saved (its config is checked by the caller)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"], self.generators, self.device)
        self.progress = _Progress(**state["progress"])

    def save(self, path: Path) -> None:
        """Write the checkpoint to `path` (rank 0 only); the last one keeps its previous."""
        if self.world.is_main:
            keep_previous = path == self.run.last_checkpoint
            save_checkpoint(path, self.state_dict(), keep_previous=keep_previous)

    # ------------------------------------------------------------------ the loop
    def wants_more(self) -> bool:
        """Whether steps, epochs and patience allow another (part of an) epoch."""
        state = self.progress
        return (
            state.step < self.total_steps
            and state.epoch < self.config.epochs
            and not state.stopped_early
        )

    def run_epoch(self, bar: tqdm, stop_after_steps: int | None = None) -> int:
        """Train the rest of the current epoch (or up to max_steps); returns its index.

        `stop_after_steps` is a test hook: SIGKILL this process right after that step.
        """
        config, state = self.config, self.progress
        self.step_module.train()
        sampler = GlobalBatchSampler(
            len(self.train_data),
            config.batch_size,
            self.world.rank,
            self.world.world_size,
            config.seed,
            state.epoch,
            skip=state.batch_in_epoch,
        )
        loader = DataLoader(
            self.train_data,
            batch_sampler=sampler,
            num_workers=config.num_workers,
            pin_memory=self.device.type == "cuda",
            # Worker seeds come from this generator, not from torch's global state.
            generator=torch.Generator().manual_seed(config.seed),
        )
        for batch in loader:
            self._step(batch, bar)
            # The end of an epoch (or of training) checkpoints anyway, after validation.
            epoch_done = state.batch_in_epoch >= self.batches_per_epoch
            epoch_done = epoch_done or state.step >= self.total_steps
            every = config.checkpoint_every
            if every and state.step % every == 0 and not epoch_done:
                self.save(self.run.last_checkpoint)
            if stop_after_steps is not None and state.step >= stop_after_steps:
                log.warning("stop_after_steps=%d reached: killing this process", state.step)
                os.kill(os.getpid(), signal.SIGKILL)
            if state.step >= self.total_steps:
                break
        # The epoch ended, or max_steps cut it short: it is validated and checkpointed either way.
        completed_epoch = state.epoch
        if state.batch_in_epoch >= self.batches_per_epoch:
            state.epoch += 1
            state.batch_in_epoch = 0
        return completed_epoch

    def _step(self, batch: dict[str, torch.Tensor], bar: tqdm) -> None:
        """Lab dropout, augmentation, one optimiser step and the schedule's; logs every
        log_every steps."""
        config, state = self.config, self.progress
        labs, observed = batch["labs"], batch["labs_observed"]
        if config.lab_dropout > 0:
            labs, observed = drop_labs(
                labs,
                observed,
                self.fill,
                config.lab_dropout,
                self.generators["lab_dropout"],
                self.world.rank,
                self.world.world_size,
            )
        batch = to_device(
            {**batch, "labs": labs, "labs_observed": observed}, self.device, self.channels_last
        )
        if self.augmentation.enabled:  # on the device: the pinned copies stay asynchronous
            batch = augment(
                batch,
                self.augmentation,
                self.generators["augment"],
                self.world.rank,
                self.world.world_size,
                self.generators.get("augment_noise"),
            )
            if self.channels_last:
                batch["cxr"] = batch["cxr"].contiguous(memory_format=torch.channels_last)
        loss, grad_norm = train_step(
            self.forward,
            self.model,
            batch,
            config,
            self.optimizer,
            self.scaler,
            self.generators["loss"],
            self.amp_dtype,
        )
        self.scheduler.step()
        state.step += 1
        state.batch_in_epoch += 1
        self.window.add(float(loss), float(grad_norm), config.batch_size)
        if state.step % config.log_every == 0 or state.step == self.total_steps:
            mean_loss, mean_grad_norm, samples_per_s = self.window.flush()
            self.metrics.write(
                "train",
                step=state.step,
                epoch=state.epoch,
                loss=mean_loss,
                grad_norm=mean_grad_norm,
                lr=float(self.scheduler.get_last_lr()[0]),
                logit_scale=float(self.model.logit_scale.detach().exp()),
                samples_per_s=samples_per_s,
            )
            bar.set_postfix(loss=f"{mean_loss:.4f}", samples_s=f"{samples_per_s:.1f}")
        bar.update(1)

    def validate(self) -> float | None:
        """Top-1 val retrieval accuracy of the current model; None without val candidate sets."""
        if not len(self.val_candidates):
            return None
        config = self.config
        embeddings = embed_split(
            self.model,
            self.val_arrays,
            self.device,
            config.eval_batch_size,
            self.amp_dtype,
            self.channels_last,
        )
        score = objective_score(config.objective, self.model)
        labs_missing = self.val_arrays.labs_missing
        return retrieval_accuracy(
            embeddings, self.val_candidates, score, config.seed, labs_missing=labs_missing
        )

    def end_epoch(self, completed_epoch: int, val_acc: float | None) -> None:
        """Keep the best, count patience, log, and checkpoint (called on every rank)."""
        state = self.progress
        improved = val_acc is None or state.best_val_acc is None or val_acc > state.best_val_acc
        if improved:
            state.best_val_acc, state.best_epoch = val_acc, completed_epoch
            state.epochs_without_improvement = 0
        else:
            state.epochs_without_improvement += 1
        if self.config.patience and state.epochs_without_improvement >= self.config.patience:
            state.stopped_early = True
        candidates = self.val_candidates
        self.metrics.write(
            "val",
            step=state.step,
            epoch=completed_epoch,
            val_acc=val_acc,
            chance=1.0 / candidates.candidate_rows.shape[1] if len(candidates) else None,
            best_val_acc=state.best_val_acc,
            best_epoch=state.best_epoch,
        )
        if self.world.is_main:
            log.info(
                "epoch %d: val top-1 %s (best %s at epoch %s)",
                completed_epoch,
                _fmt(val_acc),
                _fmt(state.best_val_acc),
                state.best_epoch,
            )
        self.save(self.run.last_checkpoint)
        if improved:
            self.save(self.run.best_checkpoint)

    def result(self) -> TrainResult:
        """What the run has reached so far."""
        state = self.progress
        return TrainResult(
            run_dir=self.run.path,
            steps=state.step,
            epochs_completed=state.epoch,
            best_val_acc=state.best_val_acc,
            best_epoch=state.best_epoch,
            stopped_early=state.stopped_early,
        )


def _fmt(accuracy: float | None) -> str:
    return f"{accuracy:.3f}" if accuracy is not None else "n/a"


def train(
    config: TrainConfig,
    data_dir: str | os.PathLike[str] | DatasetDir,
    run_dir: str | os.PathLike[str] | RunDir,
    resume: bool = False,
    progress: bool = True,
    stop_after_steps: int | None = None,
) -> TrainResult:
    """Train config.model on DATASET's train split; select by val retrieval accuracy.

    Writes the run directory: its config (recording the dataset's absolute path), the last
    and best checkpoints and the metrics log. `config.model`'s input shapes are taken from
    the dataset. `stop_after_steps` is a test hook: the process SIGKILLs itself right after
    that step (as a crash would). Under torchrun, call it in every process; rank 0 alone
    writes files.
    """
    dataset = data_dir if isinstance(data_dir, DatasetDir) else DatasetDir(data_dir)
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    with joined_world(cuda=_uses_cuda(config.device)) as world:
        trainer = Trainer(config, dataset, run, world, resume=resume)
        bar = tqdm(
            total=trainer.total_steps,
            initial=trainer.progress.step,
            desc="train",
            unit="step",
            disable=not (progress and world.is_main),
            dynamic_ncols=True,
        )
        try:
            while trainer.wants_more():
                epoch = trainer.run_epoch(bar, stop_after_steps)
                trainer.end_epoch(epoch, trainer.validate())
            state = trainer.progress
            trainer.metrics.write(
                "end",
                step=state.step,
                epoch=state.epoch,
                best_val_acc=state.best_val_acc,
                best_epoch=state.best_epoch,
                stopped_early=state.stopped_early,
            )
        finally:
            bar.close()
            trainer.metrics.close()
        world.barrier()  # rank 0's checkpoints are on disk before any rank returns
        return trainer.result()
