"""Symile loss: time and peak memory of forward + backward, ours against the reference package.

M = 3 modalities, d = 256, B in {64, 256, 512, 1024}, negatives "n" and "n_squared". Each
(implementation, mode, B) runs in its own subprocess, so that its peak memory is its own: the
child builds its inputs, resets the kernel's peak-RSS counter (/proc/self/clear_refs), caps its
address space at ADDRESS_LIMIT_GIB above that point (the reference at B = 1024 would need ~45 GiB
and must fail cleanly rather than exhaust a shared machine), then times forward + backward (the
minimum of a few runs, as many as fit in a few seconds) and reports the peak resident memory
above its starting point ("extra memory").

Run: .venv/bin/python -m benchmarks.loss_bench   (or `make bench`); writes benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

ADDRESS_LIMIT_GIB = 8
MODALITIES, DIM = 3, 256
BATCHES = (64, 256, 512, 1024)
LOGIT_SCALE = 1 / 0.07  # CLIP's and Symile's initial temperature
TIME_BUDGET_S = 3.0  # repeat a case while its runs total less than this (at most 5 runs)
SECOND_RUN_BELOW_S = 10.0  # and always run it twice when the first run is shorter than this


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def child(impl: str, negatives: str, batch: int, scale: float, threads: int) -> dict:
    """Measure one case in this process; returns seconds and extra MiB, or the failure."""
    import torch

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(batch)
    embs = [
        torch.nn.functional.normalize(torch.randn(batch, DIM, generator=g), dim=1).requires_grad_()
        for _ in range(MODALITIES)
    ]
    logit_scale = torch.tensor(scale, requires_grad=True)
    if impl == "reference":
        from symile import Symile

        reference = Symile(negatives)

        def step() -> None:
            torch.manual_seed(0)  # the reference shuffles with the global generator
            reference(embs, logit_scale).backward()
    else:
        from symile_clinical.objective.losses import symile_loss

        def step() -> None:
            generator = torch.Generator().manual_seed(0)
            symile_loss(embs, logit_scale, negatives, generator).backward()

    # Touch the code paths once on a tiny batch, so that pages of libraries loaded lazily at
    # first use (BLAS kernels) do not count as the computation's memory.
    tiny = [e[:8].detach().requires_grad_() for e in embs]
    if impl == "reference":
        reference(tiny, logit_scale).backward()
    else:
        symile_loss(tiny, logit_scale, negatives, torch.Generator().manual_seed(0)).backward()
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
    start_kib = _status_kib("VmRSS")
    limit = _status_kib("VmSize") * 1024 + ADDRESS_LIMIT_GIB * 2**30
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    times: list[float] = []
    cpu_times: list[float] = []
    try:
        # A second run whenever the first is short (its page faults and lazy set-up are not
        # the steady state), then more while they fit in the budget.
        while (
            not times
            or (len(times) == 1 and times[0] < SECOND_RUN_BELOW_S)
            or (sum(times) < TIME_BUDGET_S and len(times) < 5)
        ):
            for t in [*embs, logit_scale]:
                t.grad = None
            began, began_cpu = time.perf_counter(), time.process_time()
            step()
            times.append(time.perf_counter() - began)
            cpu_times.append(time.process_time() - began_cpu)
    except (RuntimeError, MemoryError) as err:
        if "alloc" in str(err).lower() or isinstance(err, MemoryError):
            return {"error": f"out of memory (>{ADDRESS_LIMIT_GIB} GiB limit)"}
        raise
    extra_mib = (_status_kib("VmHWM") - start_kib) / 1024
    return {
        "seconds": min(times),
        "cpu_seconds": min(cpu_times),
        "runs": len(times),
        "extra_mib": extra_mib,
    }


def run_case(impl: str, negatives: str, batch: int, scale: float, threads: int) -> dict:
    """One case in a fresh interpreter; failures come back as {"error": ...}."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", impl, negatives, str(batch)]
    cmd += ["--scale", str(scale), "--threads", str(threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
        return {"error": f"crashed: {tail[0]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _fmt_time(r: dict) -> str:
    return f"{r['seconds']:.3f} s" if "seconds" in r else f"failed: {r['error']}"


def _fmt_mem(r: dict) -> str:
    return f"{r['extra_mib']:.0f} MiB" if "extra_mib" in r else "-"


def _ratio(ref: dict, ours: dict, key: str) -> str:
    if key in ref and key in ours and ours[key] > 0:
        return f"{ref[key] / ours[key]:.1f}x"
    return "-"


def main(threads: int, command: str) -> int:
    """Run every case, print the table, write the RESULTS.md section."""
    from benchmarks.results_file import update_section

    cases = [(neg, b, LOGIT_SCALE) for neg in ("n", "n_squared") for b in BATCHES]
    # The same B = 256 case with a scale whose logits may overflow exp: the max-shifted path.
    cases.append(("n_squared", 256, 1000.0))
    header = (
        "| negatives | B | scale | reference | ours | speed-up (wall) | speed-up (CPU time) "
        "| reference extra memory | ours extra memory | memory ratio |"
    )
    rows = [header, "|" + "---|" * 10]
    print(header, flush=True)
    began = time.perf_counter()
    for negatives, batch, scale in cases:
        ours = run_case("ours", negatives, batch, scale, threads)
        ref = run_case("reference", negatives, batch, scale, threads)
        row = (
            f"| {negatives} | {batch} | {scale:.3g} | {_fmt_time(ref)} | {_fmt_time(ours)} "
            f"| {_ratio(ref, ours, 'seconds')} | {_ratio(ref, ours, 'cpu_seconds')} "
            f"| {_fmt_mem(ref)} | {_fmt_mem(ours)} "
            f"| {_ratio(ref, ours, 'extra_mib')} |"
        )
        rows.append(row)
        print(row, flush=True)
    total = time.perf_counter() - began
    body = "\n".join(
        [
            f"Forward + backward of the Symile loss, M = {MODALITIES}, d = {DIM}, float32, "
            f"{threads} thread(s), L2-normalised random embeddings; `reference` is "
            "`symile.Symile` 0.1.0, `ours` is `objective.losses.symile_loss`. Time is the "
            f"minimum wall-clock time over 2 to 5 runs (as many as fit in {TIME_BUDGET_S:.0f} s; "
            f"a single run when it takes over {SECOND_RUN_BELOW_S:.0f} s); the CPU-time speed-up "
            "compares the processes' CPU time "
            "(all threads), which other work on the machine disturbs less; extra memory is the "
            "peak resident memory above the process's state before the first run, each case "
            f"in its own subprocess with its address space capped {ADDRESS_LIMIT_GIB} GiB above "
            "that state. Ratios are "
            "reference / ours (higher is better for ours). The scale-1000 row forces our "
            "max-shifted log-sum-exp (logits too large for an unshifted exp in float32).",
            "",
            *rows,
            "",
            f"Measured while other work shared the 2-core CPU, so times are noisy (whole run "
            f"{total:.0f} s); one torch thread by default, because with two threads on a busy "
            "machine every small parallel op waits for the slower thread's time slice, which "
            "swamps what is measured. Command: `" + command + "`.",
        ]
    )
    path = update_section("loss_bench", body)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=3, metavar=("IMPL", "NEGATIVES", "B"))
    parser.add_argument("--scale", type=float, default=LOGIT_SCALE)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per case (default 1: on a CPU shared with other jobs, two-thread "
        "timings of many small parallel ops are dominated by scheduling stalls)",
    )
    args = parser.parse_args()
    if args.child:
        impl, negatives, batch = args.child
        print(json.dumps(child(impl, negatives, int(batch), args.scale, args.threads)))
        sys.exit(0)
    command = " ".join([".venv/bin/python -m benchmarks.loss_bench", *sys.argv[1:]])
    sys.exit(main(args.threads, command))
