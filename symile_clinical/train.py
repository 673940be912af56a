"""The trainer: Symile or pairwise CLIP over a dataset directory, on CPU, one GPU or many.

One optimiser step: a global batch of `batch_size` admissions (split evenly over the ranks
under torchrun), forward under autocast (bf16 on CUDA), the loss (which gathers the other
ranks' embeddings itself, so negatives are global), backward, gradient clipping, AdamW,
the warm-up + cosine schedule, and the logit scale clamped at ln 100.

Every source of randomness is explicit and checkpointed, so a run killed and resumed ends
with the same weights as one that never stopped (bit for bit on CPU):
- the data order is a permutation drawn per epoch from np.random.default_rng([seed, epoch]);
  resuming skips the batches the checkpoint had already used;
- lab dropout and the "n" negatives' shuffles draw from their own torch.Generators;
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
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from models import SymileModel, build_model
from symile_clinical.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    load_checkpoint,
    previous_path,
    save_checkpoint,
)
from symile_clinical.config import ConfigError, TrainConfig, config_from_dict, config_to_dict
from symile_clinical.data import (
    CandidateSets,
    MemmapDataset,
    SplitArrays,
    fill_percentiles,
    load_candidate_sets,
    read_dataset_json,
)
from symile_clinical.losses import clip_loss, symile_loss
from symile_clinical.retrieval import candidate_set_scores, true_item_ranks
from symile_clinical.runs import CHECKPOINT_DIR, CONFIG_FILE, METRICS_FILE
from symile_clinical.similarity import score_fn

log = logging.getLogger(__name__)


class RunExistsError(FileExistsError):
    """The run directory already holds a checkpoint and --resume was not asked for."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"{path}: already holds a run; pass --resume to continue it")
        self.path = path


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


@dataclass(frozen=True)
class _World:
    rank: int
    world_size: int
    local_rank: int
    initialised_here: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0


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
    """What DDP wraps: the three embeddings and exp(logit_scale) in one forward, so that every
    parameter, the logit scale included, is used inside the wrapped call."""

    def __init__(self, model: SymileModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, ecg: torch.Tensor, labs: torch.Tensor, observed: torch.Tensor, cxr: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        ecg_emb, labs_emb, cxr_emb = self.model(ecg, labs, observed, cxr)
        return ecg_emb, labs_emb, cxr_emb, self.model.logit_scale.exp()


def _setup_world(device_kind: str) -> _World:
    """Join the torchrun process group when launched by torchrun (WORLD_SIZE > 1)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return _World(0, 1, 0, False)
    initialised_here = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
        initialised_here = True
    return _World(
        dist.get_rank(),
        dist.get_world_size(),
        int(os.environ.get("LOCAL_RANK", "0")),
        initialised_here,
    )


def resolve_device(requested: str, local_rank: int = 0) -> torch.device:
    """ "auto" -> cuda:<local_rank> when CUDA is available, else cpu."""
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
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


def fit_model_to_data(config: TrainConfig, train: SplitArrays) -> TrainConfig:
    """The model's input shapes (labs, leads, samples) come from the dataset, not the preset."""
    model = dataclasses.replace(
        config.model,
        n_labs=train.n_labs,
        ecg_leads=int(train.ecg.shape[1]),
        ecg_samples=int(train.ecg.shape[2]),
    )
    return dataclasses.replace(config, model=model)


def compute_loss(
    config: TrainConfig,
    embeddings: list[torch.Tensor],
    scale: torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    """The configured objective on [ecg, labs, cxr] embeddings ([B, d] each)."""
    if config.objective == "clip":
        return clip_loss(embeddings, scale)
    return symile_loss(embeddings, scale, negatives=config.negatives, generator=generator)


def drop_labs(
    labs: torch.Tensor,
    observed: torch.Tensor,
    fill: torch.Tensor,
    rate: float,
    generator: torch.Generator,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mark each observed lab missing with probability `rate`: observed -> 0, value -> fill.

    labs, observed float32 [B, L] (this rank's rows); fill float32 [L] (the dataset's fill
    percentiles). The draw covers the global batch and each rank keeps its own rows, so
    data-parallel runs drop the same labs as one process would.
    """
    rows = labs.shape[0]
    draw = torch.rand((rows * world_size, labs.shape[1]), generator=generator)
    drop = (draw[rank * rows : (rank + 1) * rows] < rate) & (observed > 0)
    return torch.where(drop, fill.expand_as(labs), labs), torch.where(drop, 0.0, observed)


@torch.no_grad()
def embed_split(
    model: SymileModel,
    arrays: SplitArrays,
    device: torch.device,
    batch_size: int,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ecg_emb, labs_emb, cxr_emb), float32 [N, d] each on CPU, for every row of a split."""
    was_training = model.training
    model.eval()
    outputs: list[tuple[torch.Tensor, ...]] = []
    try:
        for start in range(0, len(arrays), batch_size):
            rows = np.arange(start, min(start + batch_size, len(arrays)))
            batch = _to_device(arrays.batch(rows), device, channels_last)
            with _autocast(device, amp_dtype):
                embs = model(batch["ecg"], batch["labs"], batch["labs_observed"], batch["cxr"])
            outputs.append(tuple(e.float().cpu() for e in embs))
    finally:
        model.train(was_training)
    return tuple(torch.cat(parts) for parts in zip(*outputs, strict=True))  # type: ignore[return-value]


def retrieval_accuracy(
    embeddings: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    candidates: CandidateSets,
    objective: str,
    seed: int = 0,
) -> float:
    """Top-1 accuracy of retrieving each query's CXR among its candidate set.

    Scores every query against the whole split's CXRs with `similarity.score_fn(objective)`
    (one matrix product) and picks each query's own candidates; ties break at random
    (seeded), as in the evaluation.
    """
    ecg_emb, labs_emb, cxr_emb = embeddings
    rows = torch.as_tensor(np.array(candidates.query_rows, dtype=np.int64))
    scores = score_fn(objective)(cxr_emb, [ecg_emb[rows], labs_emb[rows]]).numpy()
    candidate_scores = candidate_set_scores(scores, candidates.candidate_rows)
    ranks = true_item_ranks(candidate_scores, candidates.true_position, np.random.default_rng(seed))
    return float((ranks == 1).mean())


def train_step(
    forward: nn.Module,
    model: SymileModel,
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
    with _autocast(device, amp_dtype):
        ecg_emb, labs_emb, cxr_emb, scale = forward(
            batch["ecg"], batch["labs"], batch["labs_observed"], batch["cxr"]
        )
    loss = compute_loss(config, [ecg_emb, labs_emb, cxr_emb], scale, generator)
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


def _autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _to_device(
    batch: dict[str, torch.Tensor], device: torch.device, channels_last: bool
) -> dict[str, torch.Tensor]:
    moved = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
    if channels_last:
        moved["cxr"] = moved["cxr"].contiguous(memory_format=torch.channels_last)
    return moved


class _MetricsLog:
    """metrics.jsonl (one JSON object per event) and, if importable, TensorBoard; rank 0 only."""

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.path = run_dir / METRICS_FILE
        self.enabled = enabled
        self.tensorboard = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                log.debug("tensorboard not installed; metrics go to %s only", self.path)
            else:
                self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"))

    def truncate_after(self, step: int) -> None:
        """Drop events logged after `step` (a killed run's steps that the resume repeats)."""
        if not self.enabled or not self.path.exists():
            return
        kept = [
            line
            for line in self.path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step
        ]
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.path)

    def write(self, event: str, **values: Any) -> None:
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
        if self.tensorboard is not None:
            self.tensorboard.close()


def _write_json_atomic(path: Path, values: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(values, indent=2) + "\n")
    os.replace(tmp, path)


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
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
    for name, generator in generators.items():
        generator.set_state(state[name])


def _load_resume_checkpoint(path: Path) -> dict[str, Any]:
    """last.pt, or last.prev.pt when last.pt is unusable (the error is logged, naming it)."""
    try:
        return load_checkpoint(path)
    except CheckpointError as error:
        previous = previous_path(path)
        if not previous.exists():
            raise
        log.error("%s; resuming from the previous checkpoint %s", error, previous)
        return load_checkpoint(previous)


def _prepare_run_dir(
    config: TrainConfig, data_dir: Path, run_dir: Path, resume: bool, is_main: bool
) -> bool:
    """Check or write RUN/config.json; True when there is a checkpoint to resume from."""
    last = run_dir / CHECKPOINT_DIR / "last.pt"
    config_path = run_dir / CONFIG_FILE
    has_checkpoint = last.exists() or previous_path(last).exists()
    if has_checkpoint and not resume:
        raise RunExistsError(run_dir)
    if resume and config_path.exists():
        saved = json.loads(config_path.read_text())
        if config_from_dict(saved, source=str(config_path)) != config:
            raise ConfigError(
                str(config_path), "differs from the config given; resume with the run's own config"
            )
    elif is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / CHECKPOINT_DIR).mkdir(exist_ok=True)
        _write_json_atomic(config_path, {**config_to_dict(config), "data": str(data_dir)})
    return resume and has_checkpoint


def train(
    config: TrainConfig,
    data_dir: Path | str,
    run_dir: Path | str,
    resume: bool = False,
    progress: bool = True,
    stop_after_steps: int | None = None,
) -> TrainResult:
    """Train a SymileModel on DATASET's train split; select by val retrieval accuracy.

    Writes RUN/config.json, RUN/checkpoints/{last,best}.pt and RUN/metrics.jsonl.
    `config.model`'s input shapes are taken from the dataset. `stop_after_steps` is a test
    hook: the process SIGKILLs itself right after that step (as a crash would).
    Under torchrun, call it in every process; rank 0 alone writes files.
    """
    data_dir, run_dir = Path(data_dir), Path(run_dir)
    requested = config.device
    device_kind = (
        "cuda"
        if requested == "cuda" or (requested == "auto" and torch.cuda.is_available())
        else "cpu"
    )
    world = _setup_world(device_kind)
    try:
        return _train(config, data_dir, run_dir, resume, progress, stop_after_steps, world)
    finally:
        if world.initialised_here:
            dist.destroy_process_group()


def _train(
    config: TrainConfig,
    data_dir: Path,
    run_dir: Path,
    resume: bool,
    progress: bool,
    stop_after_steps: int | None,
    world: _World,
) -> TrainResult:
    device = resolve_device(config.device, world.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    train_arrays = SplitArrays(data_dir, "train")
    config = fit_model_to_data(config, train_arrays)
    if config.batch_size % world.world_size:
        raise ConfigError(
            "batch_size", f"{config.batch_size} not divisible by {world.world_size} ranks"
        )
    resuming = _prepare_run_dir(config, data_dir, run_dir, resume, world.is_main)
    if world.world_size > 1:
        dist.barrier()  # config.json exists before any rank reads the run directory

    dataset_json = read_dataset_json(data_dir)
    fill = torch.from_numpy(fill_percentiles(dataset_json))
    if fill.shape[0] != train_arrays.n_labs:
        raise ConfigError(
            str(data_dir / "dataset.json"),
            f"{fill.shape[0]} labs listed, arrays have {train_arrays.n_labs}",
        )
    val_arrays = SplitArrays(data_dir, "val")
    val_candidates = load_candidate_sets(data_dir, "val")
    if len(val_candidates) == 0:
        log.warning("no val candidate sets in %s: best.pt follows last.pt", data_dir)

    amp_dtype = autocast_dtype(config, device)
    channels_last = (
        config.channels_last if config.channels_last is not None else device.type == "cuda"
    )
    # The global generator drives dropout layers only; seeded per rank, saved in checkpoints.
    torch.manual_seed(config.seed + world.rank)
    model = build_model(
        config.model,
        seed=config.seed,
        cxr_weights=Path(config.cxr_weights) if config.cxr_weights else None,
    ).to(device)
    if channels_last:
        model.cxr_encoder.to(memory_format=torch.channels_last)
    step_module: nn.Module = TrainStep(model)
    if world.world_size > 1:
        step_module = nn.parallel.DistributedDataParallel(
            step_module, device_ids=[device.index] if device.type == "cuda" else None
        )
    forward = torch.compile(step_module) if config.compile else step_module

    optimizer = torch.optim.AdamW(
        _param_groups(model, config.weight_decay), lr=config.lr, betas=config.betas, foreach=True
    )
    sampler_len = len(train_arrays) // config.batch_size
    if sampler_len == 0:
        raise ConfigError(
            "batch_size", f"{config.batch_size} exceeds the {len(train_arrays)} training rows"
        )
    total_steps = config.epochs * sampler_len
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    schedule = WarmupCosine(min(config.warmup_steps, total_steps), total_steps, config.min_lr_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    generators = {
        "loss": torch.Generator(device=device).manual_seed(config.seed),
        "lab_dropout": torch.Generator().manual_seed(config.seed + 1),
    }
    state = _Progress()
    metrics = _MetricsLog(run_dir, enabled=world.is_main)
    checkpoints = run_dir / CHECKPOINT_DIR

    if resuming:
        saved = _load_resume_checkpoint(checkpoints / "last.pt")
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
        _set_rng_state(saved["rng"], generators, device)
        state = _Progress(**saved["progress"])
        metrics.truncate_after(state.step)
        log.info("resumed %s at step %d (epoch %d)", run_dir, state.step, state.epoch)

    def checkpoint_state() -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": _rng_state(generators, device),
            "progress": dataclasses.asdict(state),
            "config": json.dumps(config_to_dict(config)),
        }

    def save(name: str = "last.pt") -> None:
        if world.is_main:
            save_checkpoint(checkpoints / name, checkpoint_state(), keep_previous=name == "last.pt")

    def end_epoch(completed_epoch: int) -> None:
        """Validate, keep the best, count patience, and checkpoint (called on every rank)."""
        val_acc = None
        if len(val_candidates):
            embs = embed_split(
                model, val_arrays, device, config.eval_batch_size, amp_dtype, channels_last
            )
            val_acc = retrieval_accuracy(embs, val_candidates, config.objective, config.seed)
        improved = val_acc is None or state.best_val_acc is None or val_acc > state.best_val_acc
        if improved:
            state.best_val_acc, state.best_epoch = val_acc, completed_epoch
            state.epochs_without_improvement = 0
        else:
            state.epochs_without_improvement += 1
        if config.patience and state.epochs_without_improvement >= config.patience:
            state.stopped_early = True
        metrics.write(
            "val",
            step=state.step,
            epoch=completed_epoch,
            val_acc=val_acc,
            chance=1.0 / val_candidates.candidate_rows.shape[1] if len(val_candidates) else None,
            best_val_acc=state.best_val_acc,
            best_epoch=state.best_epoch,
        )
        if world.is_main:
            log.info(
                "epoch %d: val top-1 %s (best %s at epoch %s)",
                completed_epoch,
                f"{val_acc:.3f}" if val_acc is not None else "n/a",
                f"{state.best_val_acc:.3f}" if state.best_val_acc is not None else "n/a",
                state.best_epoch,
            )
        save("last.pt")
        if improved:
            save("best.pt")

    dataset = MemmapDataset(data_dir, "train")
    bar = tqdm(
        total=total_steps,
        initial=state.step,
        desc="train",
        unit="step",
        disable=not (progress and world.is_main),
        dynamic_ncols=True,
    )
    step_module.train()
    window_losses: list[float] = []
    window_grad_norms: list[float] = []
    window_start = time.perf_counter()
    window_samples = 0
    try:
        while state.step < total_steps and state.epoch < config.epochs and not state.stopped_early:
            sampler = GlobalBatchSampler(
                len(dataset),
                config.batch_size,
                world.rank,
                world.world_size,
                config.seed,
                state.epoch,
                skip=state.batch_in_epoch,
            )
            loader = DataLoader(
                dataset,
                batch_sampler=sampler,
                num_workers=config.num_workers,
                pin_memory=device.type == "cuda",
                # Worker seeds come from this generator, not from torch's global state.
                generator=torch.Generator().manual_seed(config.seed),
            )
            for batch in loader:
                labs, observed = batch["labs"], batch["labs_observed"]
                if config.lab_dropout > 0:
                    labs, observed = drop_labs(
                        labs,
                        observed,
                        fill,
                        config.lab_dropout,
                        generators["lab_dropout"],
                        world.rank,
                        world.world_size,
                    )
                batch = _to_device(
                    {**batch, "labs": labs, "labs_observed": observed}, device, channels_last
                )
                loss, grad_norm = train_step(
                    forward, model, batch, config, optimizer, scaler, generators["loss"], amp_dtype
                )
                scheduler.step()
                state.step += 1
                state.batch_in_epoch += 1

                window_losses.append(float(loss))
                window_grad_norms.append(float(grad_norm))
                window_samples += config.batch_size
                if state.step % config.log_every == 0 or state.step == total_steps:
                    elapsed = time.perf_counter() - window_start
                    samples_per_s = window_samples / elapsed if elapsed > 0 else float("nan")
                    mean_loss = float(np.mean(window_losses))
                    metrics.write(
                        "train",
                        step=state.step,
                        epoch=state.epoch,
                        loss=mean_loss,
                        grad_norm=float(np.mean(window_grad_norms)),
                        lr=float(scheduler.get_last_lr()[0]),
                        logit_scale=float(model.logit_scale.detach().exp()),
                        samples_per_s=samples_per_s,
                    )
                    bar.set_postfix(loss=f"{mean_loss:.4f}", samples_s=f"{samples_per_s:.1f}")
                    window_losses, window_grad_norms, window_samples = [], [], 0
                    window_start = time.perf_counter()
                bar.update(1)

                # The end of an epoch (or of training) checkpoints anyway, after validation.
                epoch_done = state.batch_in_epoch >= sampler.batches_per_epoch()
                epoch_done = epoch_done or state.step >= total_steps
                if (
                    config.checkpoint_every
                    and state.step % config.checkpoint_every == 0
                    and not epoch_done
                ):
                    save("last.pt")
                if stop_after_steps is not None and state.step >= stop_after_steps:
                    log.warning("stop_after_steps=%d reached: killing this process", state.step)
                    os.kill(os.getpid(), signal.SIGKILL)
                if state.step >= total_steps:
                    break
            # The epoch ended, or max_steps cut it short: validate and checkpoint either way.
            completed_epoch = state.epoch
            if state.batch_in_epoch >= sampler.batches_per_epoch():
                state.epoch += 1
                state.batch_in_epoch = 0
            end_epoch(completed_epoch)
        metrics.write(
            "end",
            step=state.step,
            epoch=state.epoch,
            best_val_acc=state.best_val_acc,
            best_epoch=state.best_epoch,
            stopped_early=state.stopped_early,
        )
    finally:
        bar.close()
        metrics.close()
    if world.world_size > 1:
        dist.barrier()  # rank 0's checkpoints are on disk before any rank returns
    return TrainResult(
        run_dir=run_dir,
        steps=state.step,
        epochs_completed=state.epoch,
        best_val_acc=state.best_val_acc,
        best_epoch=state.best_epoch,
        stopped_early=state.stopped_early,
    )
