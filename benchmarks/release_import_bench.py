"""`import-release` on a generated Symile-MIMIC release of a few GB: time, memory, disk, resume.

Usage: nice -n 10 .venv/bin/python -m benchmarks.release_import_bench [--train 1200]
[--val 60] [--test 40] [--d 8192] [--root /tmp]
The release is written by tests/_release_factory.py in the published layout (float32 CXR
[n, 3, 320, 320], ECG [n, 1, 5000, 12], K = 10 candidate rows per query), with a d = 8192
Lightning checkpoint holding AdamW moments (the published one's size). The baseline,
measured in the same run, is reading the very bytes the import must read (the kept rows'
CXR and ECG) with numpy, page cache dropped before each (posix_fadvise). Every import runs
in a child process, which reports its own peak RSS. A second import is SIGKILLed part-way
and resumed. The release and the outputs are deleted at the end (unless --keep). Writes the
`release_import` section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from benchmarks.results_file import update_section  # noqa: E402

# The published release's rows (train, val, val_retrieval, test) and the rows its import
# reads and writes (train + val + the test queries).
PUBLISHED_ROWS = {"train": 10_000, "val": 750, "val_retrieval": 7_500, "test": 4_640}
PUBLISHED_KEPT = 10_000 + 750 + 464

CHILD = """
import json, logging, sys, time
logging.basicConfig(level=logging.INFO)
mode, release, out = sys.argv[1:4]
import torch
torch.set_num_threads(1)
from pathlib import Path
from preprocessing.symile_mimic_release import SymileMimicRelease, import_release_dataset
from symile_clinical.formats.dataset_dir import DatasetDir
from app.workflows.release_import import import_release_run
t0 = time.perf_counter()
dataset = DatasetDir(Path(out) / "dataset")
release = SymileMimicRelease(release)
if mode in ("dataset", "all"):
    import_release_dataset(release, dataset, progress=False)
if mode in ("run", "all"):
    import_release_run(release.checkpoint_path, Path(out) / "run", dataset)
print(json.dumps({"seconds": time.perf_counter() - t0}))
"""


def _memory_kb(pid: int) -> tuple[int, int]:
    """(RssAnon, RssFile) of a process in kB: anonymous memory is what the import needs;
    file-backed pages (the memory-mapped release) are page cache the kernel reclaims."""
    fields = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            fields[key] = value
    return int(fields["RssAnon"].split()[0]), int(fields["RssFile"].split()[0])


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _drop_cache(path: Path) -> None:
    """Ask the kernel to forget the cached pages of every file under `path` (our own files:
    no privileges needed), so the next read comes from the disk."""
    for file in [path] if path.is_file() else path.rglob("*"):
        if file.is_file():
            fd = os.open(file, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _cxr_rows_committed(out: Path) -> int:
    """Rows of train's CXR array a running import has committed (its progress file)."""
    try:
        return int(
            json.loads((out / "dataset" / ".import" / "train.cxr.json").read_text())["rows_done"]
        )
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0


def _child(mode: str, release: Path, out: Path, env: dict[str, str], kill_at_rows: int = 0) -> dict:
    """Run one import step in a child process, sampling its memory every 0.1 s; with
    `kill_at_rows`, SIGKILL it once it has committed that many rows of train's CXRs."""
    command = ["nice", "-n", "10", sys.executable, "-c", CHILD, mode, str(release), str(out)]
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    anon = file = 0
    started = time.perf_counter()
    while process.poll() is None:
        try:
            a, f = _memory_kb(process.pid)
            anon, file = max(anon, a), max(file, f)
        except (FileNotFoundError, KeyError, ProcessLookupError):
            pass
        if kill_at_rows and _cxr_rows_committed(out) >= kill_at_rows:
            process.send_signal(signal.SIGKILL)
            process.wait()
            return {"killed_after": time.perf_counter() - started}
        time.sleep(0.05)
    stdout, stderr = process.communicate()
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if process.returncode != 0 or not lines:
        raise RuntimeError(f"child failed ({process.returncode}): {stderr[-2000:]}")
    return {**json.loads(lines[-1]), "anon_mb": anon / 1024, "file_mb": file / 1024, "log": stderr}


def baseline_read(root: Path, chunk: int = 32) -> float:
    """Seconds to read the kept rows' CXR and ECG bytes (train, val, test queries)."""
    t0 = time.perf_counter()
    for split in ("train", "val", "test"):
        folder = root / "data_npy" / split
        label = np.load(folder / f"label_{split}.npy") if split == "test" else None
        for name in ("cxr", "ecg"):
            array = np.load(folder / f"{name}_{split}.npy", mmap_mode="r")
            rows = np.flatnonzero(label == 1) if label is not None else np.arange(len(array))
            for start in range(0, len(rows), chunk):
                part = rows[start : start + chunk]
                float(np.asarray(array[part[0] : part[-1] + 1]).sum())
    return time.perf_counter() - t0


def main() -> int:
    """Generate, measure, print, write the RESULTS.md section, clean up."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train", type=int, default=1200)
    parser.add_argument("--val", type=int, default=60)
    parser.add_argument("--test", type=int, default=40)
    parser.add_argument("--d", type=int, default=8192)
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    from _release_factory import write_release

    work = Path(tempfile.mkdtemp(prefix="release-bench-", dir=args.root))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    try:
        load_start = _load()
        t0 = time.perf_counter()
        release = write_release(
            work / "release",
            n_train=args.train,
            n_val=args.val,
            n_test=args.test,
            k=10,
            d=args.d,
            pt_split=None,
            adam_state=True,
        ).root
        generated = time.perf_counter() - t0
        tensors = _du(release / "data_npy")
        checkpoint = (release / "symile_mimic_model.ckpt").stat().st_size
        rows = {
            s: len(np.load(release / "data_npy" / s / f"hadm_id_{s}.npy"))
            for s in ("train", "val", "val_retrieval", "test")
        }
        kept = args.train + args.val + args.test
        print(f"release: {tensors / 1e9:.2f} GB tensors, {rows}, generated in {generated:.0f} s")

        _drop_cache(release)
        read = baseline_read(release)
        print(f"baseline read of the kept rows: {read:.1f} s (load {_load()})")

        _drop_cache(release)
        out = work / "out"
        data = _child("dataset", release, out, env)
        print(
            f"import, dataset: {data['seconds']:.1f} s, peak anonymous memory "
            f"{data['anon_mb']:.0f} MB (mapped file pages {data['file_mb']:.0f} MB), "
            f"load {_load()}"
        )
        _drop_cache(release / "symile_mimic_model.ckpt")
        run = _child("run", release, out, env)
        dataset_bytes, run_bytes = _du(out / "dataset"), _du(out / "run")
        print(f"import, run: {run['seconds']:.1f} s, {run['anon_mb']:.0f} MB anonymous")

        _drop_cache(release)
        killed = work / "killed"
        kill_after = _child("dataset", release, killed, env, kill_at_rows=args.train // 2)[
            "killed_after"
        ]
        staged = [
            json.loads(p.read_text())
            for p in (killed / "dataset" / ".import").glob("*.*.json")  # not release.json
        ]
        finished = [p.name for p in (killed / "dataset").glob("*/*.npy")]
        committed = sum(state["rows_done"] for state in staged)
        _drop_cache(release)
        resumed = _child("dataset", release, killed, env)
        same = all(
            (killed / "dataset" / s / f"{n}.npy").read_bytes()
            == (out / "dataset" / s / f"{n}.npy").read_bytes()
            for s in ("train", "val", "test")
            for n in ("cxr", "ecg", "labs", "labs_observed")
        )
        resumed_from = [
            line.split(": ", 1)[-1] for line in resumed["log"].splitlines() if "resuming" in line
        ]
        print(
            f"SIGKILL after {kill_after:.0f} s ({len(finished)} arrays done, {committed} rows of "
            f"the next committed); resumed in {resumed['seconds']:.1f} s {resumed_from}; "
            f"identical to the uninterrupted import: {same}"
        )
        load_end = _load()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    scale = PUBLISHED_KEPT / kept
    published_tensors = tensors * sum(PUBLISHED_ROWS.values()) / sum(rows.values())
    lines = [
        "`nice -n 10 .venv/bin/python -m benchmarks.release_import_bench "
        f"--train {args.train} --val {args.val} --test {args.test} --d {args.d}`",
        "",
        f"Generated release: {tensors / 1e9:.2f} GB of tensors ({rows} rows; K = 10), "
        f"checkpoint {checkpoint / 1e6:.0f} MB (d = {args.d}, with AdamW moments). Load "
        f"average (1, 5, 15 min) at start {load_start}, at end {load_end} (2 shared cores).",
        "",
        "| what | result | baseline (same run) | ratio |",
        "|---|---|---|---|",
        f"| import, dataset ({kept} admissions kept, page cache dropped) | "
        f"{data['seconds']:.1f} s | reading the same CXR + ECG bytes with numpy: "
        f"{read:.1f} s | {data['seconds'] / read:.2f}x |",
        f"| its peak memory | {data['anon_mb']:.0f} MB anonymous (+ "
        f"{data['file_mb']:.0f} MB of mapped, reclaimable file pages) | | |",
        f"| import, run (read the .ckpt safely, strict load, write best.pt) | "
        f"{run['seconds']:.1f} s, {run['anon_mb']:.0f} MB anonymous | | |",
        f"| output | dataset {dataset_bytes / 1e9:.2f} GB + run {run_bytes / 1e6:.0f} MB | "
        f"release tensors {tensors / 1e9:.2f} GB | {dataset_bytes / tensors:.3f}x |",
        f"| SIGKILL at {kill_after:.0f} s, then rerun | {len(finished)} arrays finished and "
        f"{committed} rows of the next committed before the kill; the rerun resumed "
        f"({'; '.join(resumed_from)}) and took "
        f"{resumed['seconds']:.1f} s; arrays byte-identical to the uninterrupted import: "
        f"{same} | | |",
        "",
        f"Extrapolated to the published release ({sum(PUBLISHED_ROWS.values()):,} tensor rows, "
        f"about {published_tensors / 1e9:.0f} GB; {PUBLISHED_KEPT:,} rows kept): the dataset "
        f"part about {data['seconds'] * scale / 60:.1f} min at this machine's rate (it scales "
        f"with the rows kept, x{scale:.1f}) and {dataset_bytes * scale / 1e9:.1f} GB of "
        "output; the run part is measured at the published checkpoint's size. Memory does "
        "not grow with the release (chunks of 32 CXRs).",
    ]
    update_section("release_import", "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
