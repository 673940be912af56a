"""`make gpu-check`: every CUDA code path of the project, proven in one short run.

On a CUDA machine, in one command (under 8 minutes on one H200):

1. `synth` a small cohort with full-size CXRs and `preprocess` it at the paper's 320 px;
2. train the `paper` preset for a bounded number of steps in fp32, in bf16 autocast, and in
   bf16 with torch.compile and channels_last: samples/s and peak GPU memory of each, and
   bf16 over fp32 as a ratio measured in the same run;
3. the same global batch under `torchrun --nproc_per_node=<all GPUs>` (NCCL; with one GPU,
   nproc 1 still joins NCCL and runs the gather) and in one process: every step's loss and
   gradient norm agree within the stated tolerance;
4. `labels` + `pretrain`, `evaluate`, `index` and one app query (Streamlit's AppTest) with the
   model on CUDA;
5. the Symile loss (n_squared negatives) at B = 1024 and 4096, ours against the reference
   `symile` package, forward + backward time and peak memory;

then writes the "gpu-check" section of benchmarks/RESULTS.md naming the device, torch and
CUDA versions. It exits 0 when every step passed, 1 naming the failed steps, and 2 without
CUDA (having measured nothing). `--cpu-smoke` runs the very same steps at a tiny size on the
CPU (gloo instead of NCCL, no torch.compile) and writes its report under --work only; the
test suite runs it (tests/test_gpu_check.py).

    .venv/bin/python -m benchmarks.gpu_check [--cpu-smoke] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

log = logging.getLogger("gpu_check")

EXIT_PASSED, EXIT_FAILED, EXIT_NO_CUDA = 0, 1, 2
# bf16 autocast rounds every matmul input to 8 bits of mantissa; a loss or gradient norm of
# the same batch computed with a different reduction order (ranks, kernels) agrees to ~1e-2.
BF16_RTOL = 2e-2
FP32_RTOL = 1e-4


@dataclass(frozen=True)
class CheckSize:
    """How big each step is: the GPU run, or the CPU smoke test of the same steps."""

    device: str
    admissions: int
    cxr_max_size: int | None  # None: the generator's real sizes (1k-3k px)
    cxr_size: int
    train_steps: int
    batch_size: int
    ddp_steps: int
    ddp_precision: str
    compile: bool
    loss_batches: tuple[int, ...]
    model_overrides: dict[str, Any] = field(default_factory=dict)


GPU = CheckSize(
    device="cuda",
    admissions=600,
    cxr_max_size=None,
    cxr_size=320,
    train_steps=30,
    batch_size=64,
    ddp_steps=3,
    ddp_precision="bf16",
    compile=True,
    loss_batches=(1024, 4096),
)
CPU_SMOKE = CheckSize(
    device="cpu",
    admissions=48,
    cxr_max_size=96,
    cxr_size=64,
    train_steps=2,
    batch_size=8,
    ddp_steps=2,
    ddp_precision="fp32",
    compile=False,
    loss_batches=(64,),
    # The paper's shapes at a size two CPU cores train in seconds.
    model_overrides={
        "embed_dim": 64,
        "ecg_channels": [8, 8, 16, 16],
        "ecg_blocks": [1, 1, 1, 1],
        "labs_hidden": [32, 32],
        "cxr_arch": "resnet_tiny",
    },
)


@dataclass
class StepResult:
    """One step's outcome: passed or not, what it measured, and why it failed."""

    name: str
    passed: bool
    seconds: float
    measures: dict[str, Any] = field(default_factory=dict)
    error: str = ""


class CheckError(Exception):
    """A step's own check did not hold (as opposed to a crash)."""


def cli(*args: str, env: dict[str, str] | None = None, launcher: list[str] | None = None) -> str:
    """Run `symile-clinical ARGS`: in this process (the same entry point, without a fresh
    interpreter and torch import per command), or under a launcher such as torchrun."""
    if launcher is None:
        from symile_clinical.cli import main as symile_clinical_main

        status = symile_clinical_main(list(args))
        if status != 0:
            raise CheckError(f"`{args[0]}` exited {status} (its log is above)")
        return ""
    command = [*launcher, "symile_clinical", *args]
    result = subprocess.run(
        command, cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True, text=True
    )
    if result.returncode != 0:
        tail = (result.stdout + result.stderr)[-2500:]
        raise CheckError(f"`{args[0]}` exited {result.returncode}:\n{tail}")
    return result.stdout + result.stderr


def write_recipe(path: Path, size: CheckSize, **values: Any) -> Path:
    """A TOML recipe on the `paper` preset with this size's overrides."""
    lines = ['preset = "paper"']
    for key, value in values.items():
        lines.append(f"{key} = {json.dumps(value)}")
    model = {"cxr_size": size.cxr_size, **size.model_overrides}
    lines.append("[model]")
    lines += [f"{key} = {json.dumps(value)}" for key, value in model.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def train_events(run_dir: Path) -> list[dict[str, Any]]:
    """The "train" events of a run's metrics log, in order."""
    from symile_clinical.formats.run_dir import RunDir

    records = map(json.loads, RunDir(run_dir).metrics_log.read_text().splitlines())
    return [record for record in records if record["event"] == "train"]


class GpuCheck:
    """The steps, in order, sharing one work folder; each returns what it measured."""

    def __init__(self, size: CheckSize, work: Path) -> None:
        self.size = size
        self.work = work
        self.mimic = work / "mimic"
        self.dataset = work / "dataset"
        self.runs = work / "runs"

    def cohort(self) -> dict[str, Any]:
        """Synthesise a cohort (full-size CXRs on the GPU run) and preprocess it."""
        size = self.size
        synth = ["synth", "--out", str(self.mimic), "--admissions", str(size.admissions)]
        synth += ["--seed", "11", "--workers", str(min(8, os.cpu_count() or 1)), "--no-progress"]
        if size.cxr_max_size:
            synth += ["--cxr-max-size", str(size.cxr_max_size)]
        cli(*synth)
        cli(
            "preprocess",
            "--mimic-root", str(self.mimic),
            "--out", str(self.dataset),
            "--cxr-size", str(size.cxr_size),
            "--workers", str(min(8, os.cpu_count() or 1)),
            "--no-progress",
        )  # fmt: skip
        from symile_clinical.formats.dataset_dir import DatasetDir

        dataset = DatasetDir(self.dataset)
        rows = {split: len(dataset.split(split)) for split in ("train", "val", "test")}
        if rows["train"] < size.batch_size:
            raise CheckError(f"train split has {rows['train']} rows < batch {size.batch_size}")
        return {"rows": rows, "cxr_size": size.cxr_size}

    def _train_in_process(self, name: str, precision: str, compile_: bool, channels_last: bool):
        import torch

        from symile_clinical.training.config import load_config
        from symile_clinical.training.trainer import train

        size = self.size
        recipe = write_recipe(
            self.work / f"{name}.toml",
            size,
            precision=precision,
            compile=compile_,
            channels_last=channels_last,
            batch_size=size.batch_size,
            max_steps=size.train_steps,
            log_every=1,
            checkpoint_every=10_000,
            device=size.device,
            num_workers=2,
        )
        if size.device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        began = time.perf_counter()
        train(load_config(recipe), self.dataset, self.runs / name, progress=False)
        seconds = time.perf_counter() - began
        events = train_events(self.runs / name)
        if len(events) < 2 or not all(e["loss"] == e["loss"] for e in events):
            raise CheckError(f"{name}: {len(events)} train events, or a NaN loss")
        # Steady state: the first steps carry cuDNN autotuning and compilation.
        skip = min(len(events) - 2, max(1, len(events) // 3))
        first, last = events[skip], events[-1]
        steps = last["step"] - first["step"]
        per_s = steps * size.batch_size / max(last["time"] - first["time"], 1e-9)
        peak = torch.cuda.max_memory_allocated() / 2**30 if size.device == "cuda" else None
        return {
            "samples_per_s": round(per_s, 1),
            "peak_gib": None if peak is None else round(peak, 2),
            "wall_s": round(seconds, 1),
            "final_loss": round(events[-1]["loss"], 4),
        }

    def train_precisions(self) -> dict[str, Any]:
        """The paper preset in fp32, bf16 autocast and bf16 + compile + channels_last."""
        modes = {"fp32": ("fp32", False, False), "bf16": ("bf16", False, False)}
        if self.size.compile:
            modes["bf16_compile_cl"] = ("bf16", True, True)
        results = {name: self._train_in_process(name, *mode) for name, mode in modes.items()}
        results["bf16_over_fp32"] = round(
            results["bf16"]["samples_per_s"] / results["fp32"]["samples_per_s"], 2
        )
        return results

    def ddp_matches_one_process(self) -> dict[str, Any]:
        """torchrun over every GPU (NCCL; gloo on the CPU) against one process, same batch.

        GroupNorm instead of the paper's BatchNorm, so that no statistic depends on how the
        global batch is split over ranks: the runs must then agree step for step.
        """
        import torch

        size = self.size
        ranks = torch.cuda.device_count() if size.device == "cuda" else 2
        recipe = write_recipe(
            self.work / "ddp.toml",
            size,
            precision=size.ddp_precision,
            batch_size=size.batch_size * ranks,
            max_steps=size.ddp_steps,
            log_every=1,
            checkpoint_every=10_000,
            device=size.device,
            num_workers=0,
        )
        with recipe.open("a") as handle:
            handle.write('norm = "group"\n')
        common = ["--data", str(self.dataset), "--config", str(recipe), "--no-progress"]
        single, multi = self.runs / "ddp_single", self.runs / "ddp_torchrun"
        cli("train", "--out", str(single), *common)
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        torchrun += ["--nproc_per_node", str(ranks), "-m"]
        cli("train", "--out", str(multi), *common, launcher=torchrun, env={"OMP_NUM_THREADS": "1"})
        one, many = train_events(single), train_events(multi)
        rtol = BF16_RTOL if size.ddp_precision == "bf16" else FP32_RTOL
        worst = 0.0
        for a, b in zip(one, many, strict=True):
            for key in ("loss", "grad_norm"):
                relative = abs(a[key] - b[key]) / max(abs(a[key]), 1e-12)
                worst = max(worst, relative)
                if relative > rtol:
                    raise CheckError(
                        f"step {a['step']} {key}: one process {a[key]!r}, {ranks} ranks "
                        f"{b[key]!r} (relative {relative:.2e} > {rtol:g})"
                    )
        weights_difference, bound = _weights_agree(single, multi)
        backend = "nccl" if size.device == "cuda" else "gloo"
        return {
            "ranks": ranks,
            "backend": backend,
            "precision": size.ddp_precision,
            "steps": len(one),
            "worst_relative_difference": float(f"{worst:.2e}"),
            "tolerance": rtol,
            "weights_max_abs_difference": float(f"{weights_difference:.2e}"),
            "weights_bound": float(f"{bound:.2e}"),
        }

    def downstream_on_device(self) -> dict[str, Any]:
        """labels -> pretrain, evaluate, index and one app query with the model on the device."""
        size = self.size
        run = self.runs / "bf16"
        labels = self.work / "labels.csv"
        cli("labels", "--mimic-root", str(self.mimic), "--dataset", str(self.dataset),
            "--out", str(labels))  # fmt: skip
        recipe = str(self.work / "bf16.toml")
        cli("pretrain", "--data", str(self.dataset), "--labels", str(labels),
            "--out", str(self.work / "encoders.pt"), "--config", recipe, "--epochs", "1",
            "--device", size.device, "--no-progress")  # fmt: skip
        cli("evaluate", "--run", str(run), "--device", size.device, "--bootstrap", "50",
            "--examples", "2")  # fmt: skip
        cli("index", "--run", str(run), "--device", size.device)
        return {"pretrain": "ok", "evaluate": "ok", "index": "ok", **self._app_query(run)}

    def _app_query(self, run: Path) -> dict[str, Any]:
        from streamlit.testing.v1 import AppTest

        from app.web.run_context import DEVICE_ENV, RUN_ENV

        os.environ[RUN_ENV] = str(run)
        os.environ[DEVICE_ENV] = self.size.device
        try:
            app = AppTest.from_file(str(REPO / "app" / "web" / "main.py"), default_timeout=120)
            began = time.perf_counter()
            app.run()
            seconds = time.perf_counter() - began
        finally:
            os.environ.pop(DEVICE_ENV, None)
        if app.exception:
            raise CheckError(f"app query raised: {app.exception}")
        shown = [c for image in app.image for c in image.captions if "score" in c]
        if not shown:
            raise CheckError("app query showed no ranked candidate")
        return {"app_first_query_s": round(seconds, 1), "app_candidates_shown": len(shown)}

    def loss_against_reference(self) -> dict[str, Any]:
        """Symile n_squared loss, forward + backward, ours against the `symile` package."""
        import torch
        from symile import Symile

        from symile_clinical.objective.losses import symile_loss

        device = torch.device(self.size.device)
        results: dict[str, Any] = {}
        for batch in self.size.loss_batches:
            g = torch.Generator(device="cpu").manual_seed(batch)
            embs = [
                torch.nn.functional.normalize(torch.randn(batch, 256, generator=g), dim=1)
                .to(device)
                .requires_grad_()
                for _ in range(3)
            ]
            scale = torch.tensor(1 / 0.07, device=device, requires_grad=True)
            reference = Symile("n_squared")
            implementations: dict[str, Callable[[], Any]] = {
                "ours": lambda e=embs, s=scale: symile_loss(e, s, "n_squared", None),
                "reference": lambda e=embs, s=scale, r=reference: r(e, s),
            }
            losses = {}
            for name, loss_fn in implementations.items():
                results[f"{name}_B{batch}"], losses[name] = _timed_backward(loss_fn, device)
            if None not in losses.values() and abs(losses["ours"] - losses["reference"]) > 1e-3 * (
                abs(losses["reference"]) + 1
            ):
                raise CheckError(f"B={batch}: loss {losses['ours']} vs {losses['reference']}")
        return results


def _weights_agree(single: Path, multi: Path) -> tuple[float, float]:
    """Every weight of the two runs' last checkpoints, compared entry by entry.

    AdamW moves each weight by about lr * g / |g| per step, whatever |g| is, so the weights
    after the first steps agree within 2 * lr * steps exactly when every gradient entry had
    the same sign in both runs, except entries at rounding level: the per-entry check of the
    gradients that one process and the ranks computed. Returns (largest difference, bound).
    """
    import torch

    from symile_clinical.formats.checkpoint import load_checkpoint
    from symile_clinical.formats.run_dir import RunDir

    one = load_checkpoint(RunDir(single).last_checkpoint)
    many = load_checkpoint(RunDir(multi).last_checkpoint)
    config = RunDir(single).read_config()
    steps = int(one["progress"]["step"])
    bound = 2.0 * config.lr * steps
    worst = 0.0
    for name, tensor in one["model"].items():
        if not torch.is_floating_point(tensor):
            continue
        difference = float((many["model"][name].float() - tensor.float()).abs().max())
        worst = max(worst, difference)
        if difference > bound:
            raise CheckError(f"weight {name} differs by {difference:.2e} > {bound:.2e}")
    return worst, bound


def _timed_backward(loss_fn: Callable[[], Any], device: Any) -> tuple[dict[str, Any], float | None]:
    """Best of three forward + backward passes: seconds, peak memory, and the loss value."""
    import torch

    cuda = device.type == "cuda"
    times = []
    value = None
    try:
        for _ in range(3):
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            began = time.perf_counter()
            loss = loss_fn()
            loss.backward()
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - began)
            value = float(loss.detach())
    except torch.OutOfMemoryError:
        return {"error": "out of memory"}, None
    peak = round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None
    return {"ms": round(min(times) * 1000, 2), "peak_gib": peak}, value


def run_steps(check: GpuCheck) -> list[StepResult]:
    """Every step in order; a failure is recorded with its step's name and the rest go on
    when they can (the downstream steps need the trained run)."""
    steps = [
        ("cohort", check.cohort),
        ("train_precisions", check.train_precisions),
        ("ddp_matches_one_process", check.ddp_matches_one_process),
        ("downstream_on_device", check.downstream_on_device),
        ("loss_against_reference", check.loss_against_reference),
    ]
    results: list[StepResult] = []
    for name, step in steps:
        needs_cohort = name != "loss_against_reference"
        if needs_cohort and results and not results[0].passed:
            results.append(StepResult(name, False, 0.0, error="skipped: the cohort step failed"))
            continue
        log.info("gpu-check: %s ...", name)
        began = time.perf_counter()
        try:
            measures = step()
            results.append(StepResult(name, True, time.perf_counter() - began, measures))
        except Exception as error:  # a failed step is reported by name; the rest still run
            detail = str(error) if isinstance(error, CheckError) else traceback.format_exc()
            results.append(StepResult(name, False, time.perf_counter() - began, error=detail))
        log.info("gpu-check: %s %s", name, "passed" if results[-1].passed else "FAILED")
    return results


def environment() -> dict[str, str]:
    """The device, torch and CUDA versions the numbers come from."""
    import torch

    cuda = torch.cuda.is_available()
    return {
        "device": torch.cuda.get_device_name(0) if cuda else "CPU (smoke size)",
        "gpus": str(torch.cuda.device_count()) if cuda else "0",
        "torch": torch.__version__,
        "cuda": str(torch.version.cuda) if cuda else "none",
        "cudnn": str(torch.backends.cudnn.version()) if cuda else "none",
    }


def report(results: list[StepResult], env: dict[str, str], command: str) -> str:
    """The markdown section: environment, one line per step, the measures as JSON."""
    lines = [
        f"Command: `{command}`. Device: {env['device']} x {env['gpus']}; torch {env['torch']}, "
        f"CUDA {env['cuda']}, cuDNN {env['cudnn']}.",
        "",
        "| step | result | seconds |",
        "|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r.name} | {'passed' if r.passed else 'FAILED'} | {r.seconds:.1f} |")
    for r in results:
        lines += ["", f"**{r.name}**", ""]
        if r.passed:
            lines += ["```json", json.dumps(r.measures, indent=1), "```"]
        else:
            lines += ["```", r.error.strip()[-2000:], "```"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the check; exit 0 passed, 1 a step failed (named), 2 no CUDA without --cpu-smoke."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny size on the CPU")
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: a temp)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import torch

    if not args.cpu_smoke and not torch.cuda.is_available():
        log.error("gpu-check: no CUDA device on this machine; nothing was measured")
        return EXIT_NO_CUDA
    size = CPU_SMOKE if args.cpu_smoke else GPU
    command = "make gpu-check" if not args.cpu_smoke else "gpu_check --cpu-smoke"
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as temp:
        work = args.work or Path(temp)
        work.mkdir(parents=True, exist_ok=True)
        results = run_steps(GpuCheck(size, work))
        body = report(results, environment(), command)
        body += f"\n\nWall time {time.perf_counter() - began:.0f} s; load {os.getloadavg()}."
        if args.cpu_smoke:
            (work / "gpu-check.md").write_text(body)
        else:
            from benchmarks.results_file import update_section

            update_section("gpu-check", body)
    failed = [r.name for r in results if not r.passed]
    if failed:
        log.error("gpu-check FAILED at: %s", ", ".join(failed))
        return EXIT_FAILED
    log.info("gpu-check passed in %.0f s", time.perf_counter() - began)
    return EXIT_PASSED


if __name__ == "__main__":
    sys.exit(main())
