"""Training-step throughput: fp32 vs bf16 autocast vs + channels_last (+ torch.compile).

On a CPU it times the `demo` config, on a GPU the `paper` config, with the trainer's own
`train_step` on synthetic in-memory batches (data loading excluded), and writes the
"train" section of benchmarks/RESULTS.md.

    .venv/bin/python -m benchmarks.train_bench [--steps N] [--batch-size B] [--no-compile]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.results_file import machine_description, update_section
from models import build_model
from symile_clinical.formats.run_config import TrainConfig
from symile_clinical.training.config import demo_config, paper_config
from symile_clinical.training.trainer import TrainStep, train_step

N_LABS = 50


def cpu_note() -> str:
    """Caveats for CPU numbers: shared cores, and whether bf16 has hardware support."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    native = any(flag in flags for flag in ("avx512_bf16", "amx_bf16"))
    return "CPU numbers were taken while other work shared the cores: noisy. " + (
        "This CPU has bf16 instructions."
        if native
        else "This CPU has no AVX-512-BF16/AMX, so bf16 arithmetic is emulated and eager "
        "bf16 autocast is slower than fp32; on CPU, bf16 pays off only once torch.compile "
        "fuses the casts."
    )


def synthetic_batch(
    config: TrainConfig, batch: int, device: torch.device, channels_last: bool
) -> dict[str, torch.Tensor]:
    """A batch shaped like the dataset's (12 x 5000 ECG, 50 labs, S x S CXR), seeded."""
    g = torch.Generator().manual_seed(0)
    size = config.model.cxr_size
    cxr = torch.rand(batch, 1, size, size, generator=g).to(device)
    if channels_last:
        cxr = cxr.contiguous(memory_format=torch.channels_last)
    return {
        "ecg": torch.randn(batch, 12, 5000, generator=g).to(device),
        "labs": torch.rand(batch, N_LABS, generator=g).to(device),
        "labs_observed": (torch.rand(batch, N_LABS, generator=g) > 0.3).float().to(device),
        "cxr": cxr,
    }


def samples_per_second(
    config: TrainConfig,
    batch_size: int,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    channels_last: bool,
    compile_step: bool,
    steps: int,
    warmup: int,
) -> float:
    """Mean training-step throughput over `steps` steps after `warmup` untimed ones."""
    model = build_model(config.model, seed=0).to(device)
    if channels_last:
        model.cxr_encoder.to(memory_format=torch.channels_last)
    step_module: torch.nn.Module = TrainStep(model)
    if compile_step:
        step_module = torch.compile(step_module)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    generator = torch.Generator(device=device).manual_seed(0)
    batch = synthetic_batch(config, batch_size, device, channels_last)

    def one() -> None:
        train_step(step_module, model, batch, config, optimizer, scaler, generator, amp_dtype)

    for _ in range(warmup):
        one()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        one()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    config = paper_config() if cuda else demo_config()
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, n_labs=N_LABS))
    batch_size = args.batch_size or config.batch_size
    steps = args.steps or (20 if cuda else 5)
    warmup = 3 if cuda else 1
    variants = [
        ("fp32", None, False, False),
        ("bf16 autocast", torch.bfloat16, False, False),
        ("bf16 + channels_last", torch.bfloat16, True, False),
    ]
    if not args.no_compile:
        variants.append(("bf16 + channels_last + torch.compile", torch.bfloat16, True, True))

    preset = "paper" if cuda else "demo"
    print(f"{machine_description()}\n{preset} config, batch {batch_size}, {steps} timed steps")
    rows, baseline = [], None
    for name, dtype, channels_last, compile_step in variants:
        try:
            rate = samples_per_second(
                config, batch_size, device, dtype, channels_last, compile_step, steps, warmup
            )
        except Exception as error:  # torch.compile may be unsupported here; say so, go on
            reason = f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"
            print(f"{name:40s} failed: {reason}")
            rows.append(f"| {name} | failed: {reason} | |")
            continue
        baseline = baseline or rate
        print(f"{name:40s} {rate:9.1f} samples/s  x{rate / baseline:.2f}")
        rows.append(f"| {name} | {rate:.1f} | {rate / baseline:.2f}x |")
        if cuda:
            torch.cuda.empty_cache()

    body = (
        f"`.venv/bin/python -m benchmarks.train_bench`: samples/s of one training step "
        f"(forward, Symile loss with negatives={config.negatives!r}, backward, clipping, "
        f"AdamW) on synthetic in-memory batches, `{preset}` config, global batch "
        f"{batch_size}, {steps} timed steps after {warmup} warm-up, "
        f"device {'CUDA' if cuda else 'CPU'}. Ratios are against fp32 measured in the same "
        "run."
        + ("" if cuda else " " + cpu_note())
        + "\n\n| variant | samples/s | vs fp32 |\n|---|---|---|\n"
        + "\n".join(rows)
    )
    if not args.no_write:
        update_section("train", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
