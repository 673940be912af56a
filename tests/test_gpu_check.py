"""`make gpu-check` (benchmarks/gpu_check.py): every step it runs on a GPU, run here at its
`--cpu-smoke` size on the CPU (gloo for NCCL, no torch.compile), and its refusal without CUDA."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STEPS = (
    "cohort",
    "train_precisions",
    "ddp_matches_one_process",
    "downstream_on_device",
    "loss_against_reference",
)


def _gpu_check(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "benchmarks.gpu_check", *args]
    return subprocess.run(
        command, cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True, text=True
    )


def test_without_cuda_it_says_so_and_measures_nothing() -> None:
    before = (REPO / "benchmarks" / "RESULTS.md").read_bytes()
    result = _gpu_check(env={"CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 2, result.stderr[-2000:]
    assert "no CUDA device" in result.stderr
    assert (REPO / "benchmarks" / "RESULTS.md").read_bytes() == before


@pytest.mark.slow
def test_cpu_smoke_runs_every_step(tmp_path: Path) -> None:
    result = _gpu_check("--cpu-smoke", "--work", str(tmp_path), env={"OMP_NUM_THREADS": "1"})
    report = (tmp_path / "gpu-check.md").read_text()
    assert result.returncode == 0, report[-4000:] + result.stderr[-3000:]
    for step in STEPS:
        assert f"| {step} | passed |" in report, report
    # What each step measured is in the report: throughput, the DDP agreement, the app query.
    for measure in (
        "samples_per_s",
        "bf16_over_fp32",
        "worst_relative_difference",
        "weights_max_abs_difference",
    ):
        assert measure in report
    assert '"backend": "gloo"' in report and "app_candidates_shown" in report
