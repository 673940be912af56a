"""Preprocessing throughput: ECG records/s, DICOM files/s, labevents rows/s, whole pipeline.

Builds a synthetic MIMIC root of at least 20,000 admissions and 5 M lab rows: a base cohort
from `symile-clinical synth` (real WFDB and DICOM files), scaled up by copying its table rows
under new subject, admission, study and dicom ids whose `path` columns point at the same
files (so no file is written twice), and labevents padded to the row target with rows of
patients outside the cohort (as most of MIMIC-IV's lab rows are). Each measure runs in a
fresh process so that its peak memory (max RSS) is its own. Baselines, measured in the same
run: wfdb-python's reader for ECGs, decode-only pydicom for DICOMs, chunked pandas.read_csv
for labevents and record_list.csv, the row-by-row cohort join for the cohort.

    .venv/bin/python -m benchmarks.preprocess_bench [--admissions 20000] [--lab-rows 5000000]
    .venv/bin/python -m benchmarks.preprocess_bench --only-record-list  # table reading only
"""

from __future__ import annotations

import argparse
import gzip
import multiprocessing
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.results_file import update_section  # noqa: E402
from preprocessing import layout  # noqa: E402

SHARED_CXR = REPO.parent / "shared" / "data" / "cxr"


# ------------------------------------------------------------------ measuring in a subprocess


def _peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM: unlike ru_maxrss it is not inherited across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(conn, fn: Callable, args: tuple) -> None:
    start = time.perf_counter()
    result = fn(*args)
    seconds = time.perf_counter() - start
    # Worker processes' ru_maxrss may include this process's RSS at fork; it is an upper bound.
    children_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    conn.send((result, seconds, max(_peak_rss_mb(), children_mb)))
    conn.close()


def measure(fn: Callable, *args) -> tuple[object, float, float]:
    """Run fn(*args) in a fresh process: (result, seconds, peak RSS in MB of it or a child)."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(child, fn, args))
    process.start()
    result = parent.recv()
    process.join()
    return result


# ------------------------------------------------------------------ building the root


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _write(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wt", compresslevel=1, newline="") as handle:
            frame.to_csv(handle, index=False)
    else:
        frame.to_csv(path, index=False)


def _shift(column: pd.Series, offset: int) -> pd.Series:
    """Integer id column (as text, blanks kept) plus an offset."""
    numbers = pd.to_numeric(column, errors="coerce")
    shifted = (numbers + offset).astype("Int64").astype(str)
    return shifted.where(numbers.notna(), column)


def scale_root(base: Path, out: Path, admissions: int, lab_rows: int) -> dict[str, int]:
    """Copy the base root's table rows under new ids until `admissions`; pad labevents."""
    src = layout.MimicRoot(base)
    dst = layout.MimicRoot(out)
    tables = {
        "admissions": _read(src.hosp / layout.ADMISSIONS_FILE),
        "patients": _read(src.hosp / layout.PATIENTS_FILE),
        "labevents": _read(src.hosp / layout.LABEVENTS_FILE),
        "ecg": _read(src.ecg / layout.ECG_RECORD_LIST_FILE),
        "cxr_list": _read(src.cxr / layout.CXR_RECORD_LIST_FILE),
        "cxr_meta": _read(src.cxr / layout.CXR_METADATA_FILE),
    }
    copies = -(-admissions // len(tables["admissions"]))
    parts: dict[str, list[pd.DataFrame]] = {name: [] for name in tables}
    for copy in range(copies):
        subject, hadm, study, event = (copy * 1_000_000, copy * 10_000_000, copy * 1_000_000, 0)
        for name, frame in tables.items():
            f = frame.copy()
            if "subject_id" in f:
                f["subject_id"] = _shift(f["subject_id"], subject)
            if "hadm_id" in f:
                f["hadm_id"] = _shift(f["hadm_id"], hadm)
            if "study_id" in f:
                f["study_id"] = _shift(f["study_id"], study)
            if name == "ecg":
                f["file_name"] = f["study_id"]
            if "dicom_id" in f:
                f["dicom_id"] = f["dicom_id"] + f"-{copy}"
            if name == "labevents":
                event = copy * len(frame)
                f["labevent_id"] = _shift(f["labevent_id"], event)
            parts[name].append(f)
    scaled = {name: pd.concat(frames, ignore_index=True) for name, frames in parts.items()}
    scaled["admissions"] = scaled["admissions"].iloc[:admissions]
    cohort_labs = scaled["labevents"]
    # Pad with lab rows of patients who never appear in admissions (ids far above the rest).
    pads, have, shift = [], len(cohort_labs), 0
    while have < lab_rows:
        shift += 1
        pad = tables["labevents"].copy()
        pad["subject_id"] = _shift(pad["subject_id"], 500_000_000 + shift * 1_000_000)
        pad["hadm_id"] = ""
        pad["labevent_id"] = _shift(pad["labevent_id"], 900_000_000 + shift * len(pad))
        pads.append(pad.iloc[: lab_rows - have])
        have += len(pads[-1])
    scaled["labevents"] = pd.concat([cohort_labs, *pads], ignore_index=True)
    _write(scaled["admissions"], dst.hosp / layout.ADMISSIONS_FILE)
    _write(scaled["patients"], dst.hosp / layout.PATIENTS_FILE)
    _write(scaled["labevents"], dst.hosp / layout.LABEVENTS_FILE)
    shutil.copy(src.hosp / layout.D_LABITEMS_FILE, dst.hosp / layout.D_LABITEMS_FILE)
    _write(scaled["ecg"], dst.ecg / layout.ECG_RECORD_LIST_FILE)
    _write(scaled["cxr_list"], dst.cxr / layout.CXR_RECORD_LIST_FILE)
    _write(scaled["cxr_meta"], dst.cxr / layout.CXR_METADATA_FILE)
    # The files stay where synth wrote them; the copied rows' paths point at them.
    (dst.ecg / "files").symlink_to(src.ecg / "files")
    (dst.cxr / "files").symlink_to(src.cxr / "files")
    return {"admissions": len(scaled["admissions"]), "lab_rows": len(scaled["labevents"])}


# ------------------------------------------------------------------ the measures


def ecg_rates(ecg_root: str, paths: list[str]) -> dict[str, float]:
    """Records/s: full load + normalise; the reader alone; wfdb-python's reader (baseline)."""
    from preprocessing.ecg import _read_with_wfdb, load_ecg_record, normalise_ecg, read_raw_record

    root = Path(ecg_root)
    out = {}
    for name, fn in (
        ("full", lambda p: normalise_ecg(load_ecg_record(p), "minmax")),
        ("reader", lambda p: read_raw_record(p)),
        ("wfdb_reader", lambda p: _read_with_wfdb(Path(p), True)),
    ):
        start = time.perf_counter()
        for path in paths:
            fn(root / path)
        out[name] = len(paths) / (time.perf_counter() - start)
    return out


def cxr_rates(files: list[str], size: int, repeat: int = 1) -> dict[str, float]:
    """Files/s: load_cxr_image (decode + LUTs + resize) and decode-only pydicom (baseline)."""
    import pydicom

    from preprocessing.cxr import load_cxr_image

    out = {}
    start = time.perf_counter()
    for _ in range(repeat):
        for path in files:
            load_cxr_image(path, size)
    out["full"] = repeat * len(files) / (time.perf_counter() - start)
    start = time.perf_counter()
    for _ in range(repeat):
        for path in files:
            pydicom.dcmread(path, force=True).pixel_array  # noqa: B018
    out["decode_only"] = repeat * len(files) / (time.perf_counter() - start)
    return out


def scan_with_pyarrow(path: str, subjects: list[int]) -> dict[str, int]:
    """The pipeline's labevents pass (pyarrow, filtered per block)."""
    from preprocessing.lab_catalog import PAPER_LAB_ITEMIDS
    from preprocessing.mimic_tables import scan_labevents

    scan = scan_labevents(Path(path), PAPER_LAB_ITEMIDS, subjects)
    return {"rows": scan.rows_read, "kept": len(scan.numeric)}


def scan_with_pandas(path: str, subjects: list[int]) -> dict[str, int]:
    """Baseline: chunked pandas.read_csv of the same columns, filtered per chunk."""
    from preprocessing.lab_catalog import PAPER_LAB_ITEMIDS

    kept, rows = [], 0
    columns = ["labevent_id", "subject_id", "itemid", "charttime", "valuenum"]
    for chunk in pd.read_csv(path, usecols=columns, chunksize=1_000_000, parse_dates=["charttime"]):
        rows += len(chunk)
        chunk = chunk[chunk["itemid"].isin(PAPER_LAB_ITEMIDS) & chunk["subject_id"].isin(subjects)]
        kept.append(chunk[chunk["valuenum"].notna()])
    return {"rows": rows, "kept": int(sum(len(k) for k in kept))}


def write_record_list(path: Path, rows: int) -> None:
    """A record_list.csv of `rows` rows in MIMIC-IV-ECG's schema (ids, times, paths)."""
    n = pd.RangeIndex(rows)
    subject, study = 10_000_000 + n // 4, 40_000_000 + n
    pd.DataFrame(
        {
            "subject_id": subject,
            "study_id": study,
            "file_name": study,
            "ecg_time": pd.Timestamp("2180-01-01") + pd.to_timedelta(n * 37, unit="s"),
            "path": [
                f"files/p{s // 10**4:04d}/p{s}/s{t}/{t}"
                for s, t in zip(subject, study, strict=True)
            ],
        },
        columns=list(layout.ECG_RECORD_LIST_COLUMNS),
    ).to_csv(path, index=False)


def read_record_list(path: str, reader: str) -> tuple[int, float]:
    """(rows, seconds) of one read of record_list.csv, its modules imported before timing.

    ``ours``: preprocessing.mimic_tables.read_ecg_record_list (typed, checked, problems collected);
    ``pandas``: the baseline, pandas.read_csv of the same columns with the time parsed.
    """
    from preprocessing.mimic_tables import read_ecg_record_list

    start = time.perf_counter()
    if reader == "ours":
        rows = len(read_ecg_record_list(Path(path), []))
    else:
        columns = ["subject_id", "study_id", "ecg_time", "path"]
        rows = len(pd.read_csv(path, usecols=columns, parse_dates=["ecg_time"]))
    return rows, time.perf_counter() - start


def record_list_line(path: Path, rows: int, repeat: int = 3) -> str:
    """The record_list.csv reading figure: ours vs pandas.read_csv, same run, load noted.

    Each reader runs `repeat` times alternately, each in a fresh process; the best of each.
    """
    import os

    write_record_list(path, rows)
    times: dict[str, list[float]] = {"ours": [], "pandas": []}
    peaks: dict[str, float] = {"ours": 0.0, "pandas": 0.0}
    for _ in range(repeat):
        for reader in times:
            (read, seconds), _, peak = measure(read_record_list, str(path), reader)
            assert read == rows, (reader, read, rows)
            times[reader].append(seconds)
            peaks[reader] = max(peaks[reader], peak)
    ours, theirs = min(times["ours"]), min(times["pandas"])
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"- record_list.csv ({rows:,} rows, best of {repeat}): read_ecg_record_list "
        f"{ours:.2f} s, peak {peaks['ours']:.0f} MB; pandas.read_csv (parse_dates, no checks) "
        f"{theirs:.2f} s, peak {peaks['pandas']:.0f} MB (ours x{ours / theirs:.2f} its time; "
        f"load {load})"
    )


def cohort_join_rates(root: str, sample: int) -> dict[str, float]:
    """Admissions/s of the vectorised cohort join and of a row-by-row one (baseline)."""
    from preprocessing import cohort
    from preprocessing import mimic_tables as tables
    from preprocessing.lab_catalog import PAPER_LAB_ITEMIDS

    paths = tables.RootPaths.from_root(Path(root))
    found = tables.validate_root(paths)
    adm = tables.read_admissions(found["admissions"])
    ecgs = tables.read_ecg_record_list(found["ecg_record_list"])
    cxrs = tables.read_cxr_metadata(found["cxr_metadata"], found.get("cxr_record_list"))
    subjects = adm["subject_id"].unique()
    scan = tables.scan_labevents(found["labevents"], PAPER_LAB_ITEMIDS, subjects)
    labs = scan.numeric
    start = time.perf_counter()  # the join only: the labevents pass is measured on its own
    cohort.build_cohort(adm, ecgs, cxrs, lambda _: scan, list(PAPER_LAB_ITEMIDS))
    fast = len(adm) / (time.perf_counter() - start)

    part = adm.iloc[:sample]
    hour = pd.Timedelta(hours=1)
    start = time.perf_counter()
    for row in part.itertuples():  # what a DataFrame.apply join does, one admission at a time
        e = ecgs[ecgs.subject_id == row.subject_id]
        e = e[((e.ecg_time - row.admittime) / hour).between(-24, 24)].sort_values("ecg_time")
        c = cxrs[(cxrs.subject_id == row.subject_id) & cxrs.ViewPosition.isin(["AP", "PA"])]
        d = (c.cxr_time - row.admittime) / hour
        c = c[(d > 24) & (d <= 72)].sort_values("cxr_time")
        subject_labs = labs[labs.subject_id == row.subject_id]
        d = (subject_labs.charttime - row.admittime) / hour
        subject_labs = subject_labs[d.between(-24, 24)].sort_values("charttime")
        subject_labs.groupby("itemid").first()
    slow = len(part) / (time.perf_counter() - start)
    return {"vectorised": fast, "row_by_row": slow, "admissions": len(adm)}


def whole_pipeline(root: str, out: str, workers: int, cxr_size: int) -> dict:
    """run_preprocess on the scaled root; returns its report counts and timings."""
    import logging

    from preprocessing.pipeline import PreprocessConfig, run_preprocess

    logging.basicConfig(level=logging.WARNING)
    report = run_preprocess(
        PreprocessConfig(
            mimic_root=Path(root), out=Path(out), workers=workers, cxr_size=cxr_size, progress=False
        )
    )
    return {"counts": report.counts, "timings": report.timings_s, "splits": report.splits}


def synth_base(out: Path, admissions: int, cxr_max_size: int, workers: int) -> float:
    """Write the base synthetic cohort; seconds taken."""
    from preprocessing.synth.config import SynthConfig
    from preprocessing.synth.generate import generate_cohort

    start = time.perf_counter()
    generate_cohort(
        SynthConfig(
            out=out,
            admissions=admissions,
            seed=0,
            workers=workers,
            cxr_max_size=cxr_max_size,
            progress=False,
        )
    )
    return time.perf_counter() - start


# ------------------------------------------------------------------ main


def main() -> int:
    """Build the root, run every measure, print ratios, write benchmarks/RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--admissions", type=int, default=20_000)
    parser.add_argument("--lab-rows", type=int, default=5_000_000)
    parser.add_argument("--base-admissions", type=int, default=400)
    parser.add_argument("--cxr-max-size", type=int, default=1024, help="synthetic image side cap")
    parser.add_argument("--cxr-size", type=int, default=320)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work-dir", type=str, default=None, help="keep the roots here")
    parser.add_argument("--no-results", action="store_true", help="do not write RESULTS.md")
    parser.add_argument("--record-list-rows", type=int, default=800_000)
    parser.add_argument(
        "--only-record-list", action="store_true", help="measure table reading only"
    )
    args = parser.parse_args()
    if args.only_record_list:
        with tempfile.TemporaryDirectory(prefix="record-list-") as folder:
            print(record_list_line(Path(folder) / "record_list.csv", args.record_list_rows))
        return 0

    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="prep-bench-"))
    base, root, out = work / "base", work / "root", work / "dataset"
    lines: list[str] = []

    def say(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    if not (base / "synth.json").exists():
        shutil.rmtree(base, ignore_errors=True)
        seconds = synth_base(base, args.base_admissions, args.cxr_max_size, args.workers)
        say(
            f"- synth base cohort: {args.base_admissions} admissions in {seconds:.0f} s "
            f"({args.base_admissions / seconds:.1f} admissions/s, {args.workers} workers, "
            f"images capped at {args.cxr_max_size} px)"
        )
    if not (root / "mimic-iv").exists():
        shutil.rmtree(root, ignore_errors=True)
        start = time.perf_counter()
        sizes = scale_root(base, root, args.admissions, args.lab_rows)
        say(
            f"- scaled root: {sizes['admissions']:,} admissions, {sizes['lab_rows']:,} lab rows "
            f"(tables written in {time.perf_counter() - start:.0f} s)"
        )

    records = pd.read_csv(base / "mimic-iv-ecg" / layout.ECG_RECORD_LIST_FILE)["path"].tolist()[
        :300
    ]
    ecg, _, _ = measure(ecg_rates, str(base / "mimic-iv-ecg"), records)
    say(
        f"- ECG, one worker: {ecg['full']:.0f} records/s (read + leads + NaN + resample + "
        f"normalise); reader {ecg['reader']:.0f}/s vs wfdb-python {ecg['wfdb_reader']:.0f}/s "
        f"(x{ecg['reader'] / ecg['wfdb_reader']:.1f})"
    )
    dicoms = sorted(str(p) for p in (base / "mimic-cxr" / "files").rglob("*.dcm"))[:200]
    cxr, _, _ = measure(cxr_rates, dicoms, args.cxr_size)
    say(
        f"- DICOM (synthetic, up to {args.cxr_max_size} px), one worker: {cxr['full']:.1f} "
        f"files/s to {args.cxr_size}x{args.cxr_size}; decode-only pydicom {cxr['decode_only']:.1f}"
        f"/s (our LUT + resize overhead x{cxr['decode_only'] / cxr['full']:.2f})"
    )
    real = [
        str(SHARED_CXR / "nhsx_nih_cxr14_dx_mono2_uncompressed_implicit.dcm"),
        str(SHARED_CXR / "wg04_RG1_JLSN_cr_chest_mono1_jpegls_nearlossless.dcm"),
    ]
    if all(Path(p).exists() for p in real):
        for path in real:
            rates, _, _ = measure(cxr_rates, [path], args.cxr_size, 10)
            say(
                f"- DICOM real sample {Path(path).name}: {rates['full']:.1f} files/s "
                f"(decode-only {rates['decode_only']:.1f}/s)"
            )

    labevents = str(root / "mimic-iv" / "hosp" / layout.LABEVENTS_FILE)
    subjects = pd.read_csv(root / "mimic-iv" / "hosp" / layout.ADMISSIONS_FILE)["subject_id"]
    subject_list = subjects.unique().tolist()
    fast, fast_s, fast_mb = measure(scan_with_pyarrow, labevents, subject_list)
    slow, slow_s, slow_mb = measure(scan_with_pandas, labevents, subject_list)
    assert fast["kept"] == slow["kept"], (fast, slow)
    say(
        f"- labevents ({fast['rows']:,} rows, csv.gz): pyarrow filtered scan "
        f"{fast['rows'] / fast_s / 1e6:.2f} M rows/s, peak {fast_mb:.0f} MB; chunked "
        f"pandas.read_csv {slow['rows'] / slow_s / 1e6:.2f} M rows/s, peak {slow_mb:.0f} MB "
        f"(x{slow_s / fast_s:.1f} faster)"
    )
    say(record_list_line(work / "record_list.csv", args.record_list_rows))
    joins, _, _ = measure(cohort_join_rates, str(root), 300)
    say(
        f"- cohort join ({joins['admissions']:,} admissions, 50 labs): vectorised "
        f"{joins['vectorised']:.0f} admissions/s; row-by-row {joins['row_by_row']:.1f}/s "
        f"(x{joins['vectorised'] / joins['row_by_row']:.0f})"
    )
    shutil.rmtree(out, ignore_errors=True)
    result, seconds, peak = measure(
        whole_pipeline, str(root), str(out), args.workers, args.cxr_size
    )
    counts = result["counts"]["admissions"]
    say(
        f"- whole pipeline, {args.workers} workers: {counts['total']:,} admissions "
        f"({counts['included']:,} into tensors) in {seconds:.0f} s = "
        f"{counts['total'] / seconds:.1f} admissions/s, {counts['included'] / seconds:.1f} "
        f"included/s; peak RSS of one process {peak:.0f} MB; stage seconds {result['timings']}"
    )

    body = (
        "Command: `.venv/bin/python -m benchmarks.preprocess_bench` "
        f"(--admissions {args.admissions} --lab-rows {args.lab_rows} --base-admissions "
        f"{args.base_admissions} --cxr-max-size {args.cxr_max_size} --workers {args.workers}).\n\n"
        "The scaled root copies the base synthetic cohort's table rows under new ids; their "
        "paths point at the same WFDB/DICOM files, so repeated files come from the page cache "
        "(decoding, not disk, is measured). Measured on a 2-core machine shared with five other "
        "engineers' jobs: numbers are noisy, ratios less so.\n\n" + "\n".join(lines)
    )
    if not args.no_results:
        update_section("preprocess", body)
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
