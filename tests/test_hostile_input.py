"""A generated corpus of damaged MIMIC roots and hostile files, each with its outcome.

A synthetic root (real WFDB, DICOM and gzip CSV files in MIMIC's layout) is damaged the
ways a fault-injection run found: rows that do not parse in every table, paths that leave
their release folder, headers with implausible or inconsistent facts, lab values no lab
can produce. One preprocess run must complete, quarantine each with its table or file,
line and a readable reason, keep every other admission, reconcile its counts, and write
no raw lab value into quarantine.csv or the log. Further cases: a truncated table stops
at once naming it; a small real-sized cohort completes with defaults; checkpoints of
another model shape, pickled objects and killed writes; the app's lab upload.
"""

from __future__ import annotations

import gzip
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from app.web.uploads import UploadError, read_labs_csv
from preprocessing import layout
from preprocessing.errors import InvalidTable, PreprocessError
from preprocessing.pipeline import PreprocessConfig, run_preprocess
from preprocessing.splits import SplitSizes, candidates_per_split
from symile_clinical.formats.checkpoint import CheckpointError, load_checkpoint

REPO = Path(__file__).resolve().parents[1]
RAW_VALUES = ("1e308", "1e+308", "-5.0", ",-5", "not-a-date", "garbage-time")


def synth_root(path: Path, admissions: int) -> Path:
    from preprocessing.synth.config import SynthConfig
    from preprocessing.synth.generate import generate_cohort

    root = path / "mimic"
    config = SynthConfig(out=root, admissions=admissions, seed=3, cxr_max_size=64, progress=False)
    generate_cohort(config)
    return root


def config(root: Path, out: Path, **overrides) -> PreprocessConfig:
    settings = dict(
        mimic_root=root,
        out=out,
        cxr_size=16,
        split_sizes=SplitSizes(0.2, 0.2),
        candidates=3,
        progress=False,
    )
    settings.update(overrides)
    return PreprocessConfig(**settings)


def read_lines(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="") as handle:
        return handle.read().splitlines()


def write_lines(path: Path, lines: list[str]) -> None:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", newline="") as handle:
        handle.write("\n".join(lines) + "\n")


def set_field(line: str, index: int, value: str) -> str:
    fields = line.split(",")
    fields[index] = value
    return ",".join(fields)


class Damage:
    """What was damaged, and the quarantine row (stage, id, kind, file, line) expected."""

    def __init__(self) -> None:
        self.expected: list[dict] = []
        self.rejected_hadm: set[int] = set()

    def expect(self, stage: str, kind: str, file: str, id: str = "", line: int | None = None):
        self.expected.append({"stage": stage, "kind": kind, "file": file, "id": id, "line": line})


def damage_tables(root: Path, damage: Damage, cohort_subjects: set[int]) -> None:
    hosp, ecg, cxr = root / layout.HOSP_DIR, root / layout.ECG_DIR, root / layout.CXR_DIR
    # admissions: an admittime that does not parse, a repeated header, a short row.
    path = hosp / layout.ADMISSIONS_FILE
    lines = read_lines(path)
    hadm = lines[3].split(",")[1]
    lines[3] = set_field(lines[3], 2, "not-a-date")
    lines.insert(10, lines[0])
    lines.append("123,456")
    write_lines(path, lines)
    file = str(layout.HOSP_DIR / layout.ADMISSIONS_FILE)
    damage.expect("tables", "bad_value", file, hadm, 4)
    damage.expect("tables", "repeated_header", file, "", 11)
    damage.expect("tables", "bad_row", file, "", len(lines))
    damage.rejected_hadm.add(int(hadm))

    # record_list.csv: ecg_time and subject_id that do not parse, paths that leave the root.
    path = ecg / layout.ECG_RECORD_LIST_FILE
    lines = read_lines(path)
    file = str(layout.ECG_DIR / layout.ECG_RECORD_LIST_FILE)
    study = lambda i: lines[i].split(",")[1]  # noqa: E731
    lines[2] = set_field(lines[2], 3, "garbage-time")
    damage.expect("tables", "bad_value", file, study(2), 3)
    lines[4] = set_field(lines[4], 0, "abc")
    damage.expect("tables", "bad_value", file, study(4), 5)
    lines[6] = set_field(lines[6], 4, "../../../outside/p1/s1/1")
    damage.expect("tables", "path_outside_root", file, study(6), 7)
    lines[8] = set_field(lines[8], 4, "/etc/passwd")
    damage.expect("tables", "path_outside_root", file, study(8), 9)
    write_lines(path, lines)

    # CXR: a record-list path that climbs out, a StudyDate that does not parse.
    path = cxr / layout.CXR_RECORD_LIST_FILE
    lines = read_lines(path)
    dicom = lines[5].split(",")[2]
    lines[5] = set_field(lines[5], 3, "../../elsewhere/image.dcm")
    write_lines(path, lines)
    damage.expect(
        "tables", "path_outside_root", str(layout.CXR_DIR / layout.CXR_RECORD_LIST_FILE), dicom, 6
    )
    path = cxr / layout.CXR_METADATA_FILE
    lines = read_lines(path)
    dicom = lines[7].split(",")[0]
    lines[7] = set_field(lines[7], 7, "2125-99-99")
    write_lines(path, lines)
    damage.expect(
        "tables", "bad_study_date", str(layout.CXR_DIR / layout.CXR_METADATA_FILE), dicom, 8
    )

    # labevents: a bad charttime, too few and too many fields, a repeated header, two
    # malformed rows that read alike (no id, same field count: only their lines differ),
    # and creatinine -5 and potassium 1e308 for cohort patients. Every row by its line.
    path = hosp / layout.LABEVENTS_FILE
    lines = read_lines(path)
    file = str(layout.HOSP_DIR / layout.LABEVENTS_FILE)
    marked: list[tuple[str, str, str]] = []  # (damaged line text, kind, id)
    lines[5] = set_field(lines[5], 6, "not-a-date")
    marked.append((lines[5], "bad_value", lines[5].split(",")[0]))
    short_id = lines[9].split(",")[0]
    lines[9] = ",".join(lines[9].split(",")[:5])
    marked.append((lines[9], "bad_row", short_id))
    long_id = lines[11].split(",")[0]
    lines[11] = lines[11] + ",extra"
    marked.append((lines[11], "bad_row", long_id))
    lines.insert(20, lines[0])
    for index in (24, 27):
        lines[index] = "x,y,z"
    for itemid, value in (("50912", "-5"), ("50971", "1e308")):
        index = next(
            i
            for i, line in enumerate(lines[30:], start=30)
            if line.split(",")[4] == itemid and int(line.split(",")[1]) in cohort_subjects
        )
        lines[index] = set_field(set_field(lines[index], 8, value), 9, value)
        marked.append((lines[index], "implausible_value", lines[index].split(",")[0]))
    write_lines(path, lines)
    for text, kind, row_id in marked:
        damage.expect("labs", kind, file, row_id, lines.index(text) + 1)
    damage.expect("labs", "repeated_header", file, "", 21)
    damage.expect("labs", "bad_row", file, "", 25)
    damage.expect("labs", "bad_row", file, "", 28)


def rewrite_header(header: Path, record_line=None, first_signal=None) -> None:
    lines = header.read_text().splitlines()
    fields = lines[0].split()
    if record_line:
        record_line(fields)
    lines[0] = " ".join(fields)
    if first_signal:
        signal = lines[1].split(" ")
        first_signal(signal)
        lines[1] = " ".join(signal)
    header.write_text("\n".join(lines) + "\n")


def damage_files(root: Path, manifest: pd.DataFrame, damage: Damage, outside: Path) -> None:
    """Break chosen ECG headers and one chosen CXR (admissions a clean run included)."""
    ecg_root = root / layout.ECG_DIR
    rows = manifest.iloc[::3].reset_index(drop=True)
    cases = {
        "path_outside_root": dict(
            first_signal=lambda s: s.__setitem__(0, "../../../../../outside.dat")
        ),
        "bad_sampling_rate": dict(record_line=lambda f: f.__setitem__(2, "1")),
        "bad_header": dict(record_line=lambda f: f.__setitem__(1, "13")),
        "bad_header_11": dict(record_line=lambda f: f.__setitem__(1, "11")),
        "bad_format": dict(first_signal=lambda s: s.__setitem__(1, "999")),
        "bad_sampling_rate_0": dict(record_line=lambda f: f.__setitem__(2, "0")),
    }
    for (kind, edit), row in zip(cases.items(), rows.itertuples(), strict=False):
        header = ecg_root / f"{row.ecg_path}.hea"
        if kind == "path_outside_root":
            # Real samples outside the root: reading them would be the defect.
            target = (header.parent / "../../../../../outside.dat").resolve()
            shutil.copy(header.with_suffix(".dat"), target)
            outside.write_text(str(target))
        rewrite_header(header, **edit)
        damage.expect(
            "ecg",
            kind.removesuffix("_11").removesuffix("_0"),
            str(layout.ECG_DIR / f"{row.ecg_path}.hea"),
            str(row.ecg_study_id),
        )
        damage.rejected_hadm.add(int(row.hadm_id))
    # A chosen CXR replaced by a 60000 x 60000 RLE image (the header's claim only).
    from test_hostile_memory import rle_dicom

    row = rows.iloc[len(cases)]
    rle_dicom(root / layout.CXR_DIR / row.cxr_path, 60000, 60000)
    damage.expect("cxr", "too_large", str(layout.CXR_DIR / row.cxr_path), str(row.dicom_id))
    damage.rejected_hadm.add(int(row.hadm_id))


@pytest.fixture(scope="module")
def damaged(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("hostile")
    root = synth_root(base, admissions=60)
    run_preprocess(config(root, base / "clean"))
    clean = pd.read_parquet(base / "clean" / "manifest.parquet")
    damage = Damage()

    # Damage files of admissions whose table rows stay intact (the first lines of each
    # table are damaged below), so that every damaged file is still chosen and decoded.
    def first_ids(path: Path, column: int) -> set[str]:
        return {line.split(",")[column] for line in read_lines(path)[1:16]}

    touched = clean[
        clean["ecg_study_id"]
        .astype(str)
        .isin(first_ids(root / layout.ECG_DIR / layout.ECG_RECORD_LIST_FILE, 1))
        | clean["hadm_id"]
        .astype(str)
        .isin(first_ids(root / layout.HOSP_DIR / layout.ADMISSIONS_FILE, 1))
        | clean["dicom_id"].isin(first_ids(root / layout.CXR_DIR / layout.CXR_RECORD_LIST_FILE, 2))
        | clean["dicom_id"].isin(first_ids(root / layout.CXR_DIR / layout.CXR_METADATA_FILE, 0))
    ]
    damage_files(root, clean.drop(touched.index), damage, base / "outside.txt")
    damage_tables(root, damage, set(clean["subject_id"].astype(int)))
    return root, base, clean, damage


@pytest.fixture(scope="module")
def damaged_run(damaged, tmp_path_factory: pytest.TempPathFactory):
    root, base, _, _ = damaged
    out = base / "damaged"
    handler = _Capture()
    logging.getLogger().addHandler(handler)
    previous = logging.getLogger().level
    logging.getLogger().setLevel(logging.DEBUG)
    try:
        report = run_preprocess(config(root, out))
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(previous)
    return out, report, handler.messages


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def quarantine(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "quarantine.csv", dtype=str, keep_default_na=False)


def test_damaged_root_completes_and_quarantines_every_case(damaged, damaged_run) -> None:
    _, _, _, damage = damaged
    out, _, _ = damaged_run
    rows = quarantine(out)
    for expected in damage.expected:
        found = rows[
            (rows["stage"] == expected["stage"])
            & (rows["file"] == expected["file"])
            & rows["reason"].str.startswith(expected["kind"] + ":")
        ]
        if expected["id"]:
            found = found[found["id"] == expected["id"]]
        if expected["line"] is not None:
            found = found[found["reason"].str.contains(f": line {expected['line']}: ", regex=False)]
        assert len(found) >= 1, f"no quarantine row for {expected}:\n{rows.tail(30)}"


def test_damaged_admissions_are_not_in_the_tensors(damaged, damaged_run) -> None:
    _, _, clean, damage = damaged
    out, _, _ = damaged_run
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert not (set(manifest["hadm_id"].astype(int)) & damage.rejected_hadm)
    # Everything else of the clean run that no damage touched is still there.
    untouched = set(clean["hadm_id"].astype(int)) - damage.rejected_hadm
    # Exactly the admissions whose chosen ECG or CXR row of a table was damaged may be lost
    # (another file in the window may replace it); each lost one is in quarantine.csv.
    damaged_ids = {
        e["id"] for e in damage.expected if e["stage"] == "tables" and e["kind"] != "bad_row"
    }
    affected = set(
        clean.loc[
            clean["ecg_study_id"].astype(str).isin(damaged_ids)
            | clean["dicom_id"].isin(damaged_ids),
            "hadm_id",
        ].astype(int)
    )
    lost = untouched - set(manifest["hadm_id"].astype(int))
    assert lost <= affected, (lost, affected)
    rows = quarantine(out)
    cohort_ids = set(rows.loc[rows["stage"] == "cohort", "id"].astype(int))
    assert lost <= cohort_ids
    # Kept affected admissions now use another file, never the damaged row's.
    kept = manifest[manifest["hadm_id"].astype(int).isin(affected)]
    assert not kept["ecg_study_id"].astype(str).isin(damaged_ids).any()
    assert not kept["dicom_id"].isin(damaged_ids).any()
    for column in ("ecg_path", "cxr_path"):
        assert not manifest[column].str.contains(r"\.\.|^/", regex=True).any()


def test_reasons_are_readable_and_hold_no_raw_values(damaged_run) -> None:
    out, _, messages = damaged_run
    reasons = quarantine(out)["reason"]
    for unreadable in ("ZeroDivisionError", "list index out of range", "'999'", "not supported"):
        assert not reasons.str.contains(unreadable, regex=False).any(), unreadable
    text = "\n".join(reasons) + "\n".join(messages)
    for raw in RAW_VALUES:
        assert raw not in text, raw
    assert reasons.str.contains("declares 13 signals but describes 12").any()
    assert reasons.str.contains("declares 11 signals but describes 12").any()
    assert reasons.str.contains("format code 999").any()
    assert reasons.str.contains("sampling frequency 0 Hz").any()
    assert reasons.str.contains("sampling frequency 1 Hz").any()


def test_counts_reconcile(damaged_run) -> None:
    out, _, _ = damaged_run
    counts = json.loads((out / "preprocess_report.json").read_text())["counts"]
    adm = counts["admissions"]
    assert adm["included"] + sum(adm["excluded"].values()) == adm["total"]
    rows = quarantine(out)
    assert counts["quarantine_rows"]["total"] == len(rows)
    assert counts["table_rows_quarantined"]["tables"] == int((rows["stage"] == "tables").sum()) >= 9
    labs = counts["lab_rows"]
    assert labs["malformed"] + sum(labs["quarantined_other"].values()) == int(
        (rows["stage"] == "labs").sum()
    )
    assert labs["quarantined_other"]["implausible_value"] == 2
    # Two malformed rows that read alike are two rows (the second is not merged away).
    assert labs["quarantined_other"]["bad_row"] == 4
    assert counts["table_rows_left_out"] == counts["table_rows_quarantined"]["tables"]
    for stage in ("ecg", "cxr"):
        files = counts[f"{stage}_files"]
        assert files["ok"] + sum(files["rejected"].values()) == files["read"]
    assert counts["ecg_files"]["rejected"]["path_outside_root"] == 1
    assert counts["cxr_files"]["rejected"]["too_large"] == 1


def test_truncated_table_stops_at_once_naming_it(damaged, tmp_path: Path) -> None:
    root, _, _, _ = damaged
    copy = tmp_path / "mimic"
    shutil.copytree(root, copy, symlinks=True)
    labevents = copy / layout.HOSP_DIR / layout.LABEVENTS_FILE
    lines = read_lines(labevents)
    # A table long enough that its header reads, then cut: the tail is lost.
    body = [set_field(line, 0, str(10_000_000 + n)) for n, line in enumerate(lines[1:] * 40)]
    write_lines(labevents, [lines[0], *body])
    data = labevents.read_bytes()
    labevents.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(InvalidTable, match="truncated or corrupt") as caught:
        run_preprocess(config(copy, tmp_path / "out"))
    assert str(caught.value.path) == str(labevents)
    assert not (tmp_path / "out" / ".work").exists()  # stopped before any decoding
    # A table cut so short that even its header does not read: the root check names it.
    admissions = copy / layout.HOSP_DIR / layout.ADMISSIONS_FILE
    data = admissions.read_bytes()
    admissions.write_bytes(data[: len(data) // 2])
    with pytest.raises(PreprocessError) as caught:
        run_preprocess(config(copy, tmp_path / "out2"))
    assert str(admissions) in str(caught.value) and "ended" in str(caught.value)


def test_small_cohort_completes_with_defaults_and_fewer_candidates(tmp_path: Path) -> None:
    root = synth_root(tmp_path, admissions=89)
    out = tmp_path / "ds"
    run_preprocess(PreprocessConfig(mimic_root=root, out=out, progress=False))
    info = json.loads((out / "dataset.json").read_text())
    assert info["candidates_per_query"] == 10
    per_split = info["candidates_per_split"]
    assert min(per_split.values()) < 10  # this cohort's val/test cannot serve 10
    candidates = pd.read_parquet(out / "candidates.parquet")
    for split, k in per_split.items():
        got = candidates[candidates["split"] == split].groupby("query_row").size()
        assert (got == k).all()
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    run = tmp_path / "run"
    for argv in (
        [
            "train",
            "--data",
            str(out),
            "--out",
            str(run),
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--cxr-arch",
            "resnet_tiny",
            "--no-progress",
        ],
        ["evaluate", "--run", str(run), "--bootstrap", "50"],
    ):
        done = subprocess.run(
            [sys.executable, "-m", "symile_clinical", *argv],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
            check=False,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((run / "report" / "metrics.json").read_text())
    assert metrics["n_candidates"] == per_split["test"]
    assert metrics["chance_top1"] == pytest.approx(1 / per_split["test"])
    if per_split["test"] < 10:
        assert metrics["warnings"] and "fewer than the paper's 10" in metrics["warnings"][0]
        assert "Warning" in (run / "report" / "report.md").read_text()


def test_split_without_a_second_patient_is_refused_with_sizes() -> None:
    from preprocessing.errors import InvalidSettings

    assert candidates_per_split({"val": np.array([1, 1, 2, 3]), "test": np.arange(20)}, 10) == {
        "val": 3,  # a query of patient 1 has 2 admissions of others: 3 candidates
        "test": 10,
    }
    with pytest.raises(InvalidSettings, match="at least 4 admissions"):
        candidates_per_split({"val": np.array([7, 7, 7]), "test": np.arange(20)}, 10)


def test_checkpoint_of_another_shape_and_stale_temporaries(damaged, tmp_path: Path) -> None:
    _, base, _, _ = damaged
    data = base / "clean"
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}

    def cli(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "symile_clinical", *argv],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
            check=False,
            timeout=600,
        )

    common = [
        "--data",
        str(data),
        "--max-steps",
        "1",
        "--batch-size",
        "4",
        "--cxr-arch",
        "resnet_tiny",
        "--no-progress",
    ]
    small, large = tmp_path / "small", tmp_path / "large"
    assert cli("train", "--out", str(small), "--embed-dim", "8", *common).returncode == 0
    assert cli("train", "--out", str(large), "--embed-dim", "16", *common).returncode == 0
    checkpoints = large / "checkpoints"
    shutil.copy(small / "checkpoints" / "last.pt", checkpoints / "last.pt")
    (checkpoints / "last.prev.pt").unlink(missing_ok=True)
    stale = checkpoints / ".last.pt.tmp-4242-deadbeef"
    stale.write_bytes(b"")  # what a kill during a checkpoint write leaves
    done = cli("train", "--out", str(large), "--resume", "--no-progress")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "last.pt" in done.stderr and "another model shape" in done.stderr
    assert not stale.exists()


def test_checkpoint_with_pickled_object_gives_no_weights_only_false_advice(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    torch.save({"model": {}, "extra": Path("x")}, path)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    assert "weights_only=False" not in str(caught.value)
    assert "Re-running" not in str(caught.value) and "weights_only=True" in str(caught.value)


LABS_SPEC = [
    {"itemid": 50912, "label": "Creatinine", "unit": "mg/dL"},
    {"itemid": 50971, "label": "Potassium", "unit": "mEq/L"},
]


@pytest.mark.parametrize("value", ["-5", "1e308"])
def test_app_lab_upload_refuses_implausible_values(value: str) -> None:
    data = f"itemid,value\n50912,{value}\n50971,4.1\n".encode()
    with pytest.raises(UploadError, match=r"possible 0 to 150 mg/dL") as caught:
        read_labs_csv("labs.csv", data, LABS_SPEC)
    assert value not in caught.value.reason
    ok = read_labs_csv("labs.csv", b"itemid,value\n50912,1.1\n50971,4.1\n", LABS_SPEC)
    assert ok == {50912: 1.1, 50971: 4.1}


def record_list(path: Path, rows: int) -> list[str]:
    """A record_list.csv of `rows` rows in MIMIC-IV-ECG's schema; its lines."""
    lines = [",".join(layout.ECG_RECORD_LIST_COLUMNS)]
    for n in range(rows):
        subject, study = 10_000_000 + n // 4, 40_000_000 + n
        lines.append(
            f"{subject},{study},{study},2180-01-01 {n % 24:02d}:00:00,"
            f"files/p{subject // 10**4:04d}/p{subject}/s{study}/{study}"
        )
    return lines


def test_table_rows_are_named_by_their_exact_line(tmp_path: Path) -> None:
    from preprocessing.mimic_tables import read_ecg_record_list

    lines = record_list(tmp_path, 200_000)
    lines[10] = ",".join(lines[10].split(",")[:4])  # too few fields
    lines[150_000] = lines[150_000] + ",extra"  # too many
    lines.insert(120_000, lines[0])  # the header again
    lines[199_000] = set_field(lines[199_000], 3, "garbage-time")
    lines[199_500] = set_field(lines[199_500], 4, "../../etc/x")
    lines.append("123,456")  # a short last row
    path = tmp_path / "record_list.csv.gz"
    write_lines(path, lines)
    problems = []
    frame = read_ecg_record_list(path, problems)
    found = sorted((p.line, p.kind) for p in problems)
    assert found == [
        (11, "bad_row"),
        (120_001, "repeated_header"),
        (150_002, "bad_row"),
        (199_001, "bad_value"),
        (199_501, "path_outside_root"),
        (len(lines), "bad_row"),
    ]
    assert len(frame) == len(lines) - 1 - len(found)
    # Kept rows keep their ids and order; a row after the bad ones is the file's.
    assert frame["study_id"].iloc[-1] == int(lines[-2].split(",")[1])


def labevents_lines(rows: int) -> list[str]:
    """labevents rows in MIMIC-IV's schema (creatinine and potassium, alternating)."""
    lines = [",".join(layout.LABEVENTS_COLUMNS)]
    for n in range(rows):
        itemid, value = ("50912", "1.1") if n % 2 else ("50971", "4.2")
        lines.append(
            f"{n + 1},{10_000_000 + n % 50},,{n},{itemid},,2180-01-01 10:00:00,"
            f'2180-01-01 11:00:00,{value},{value},mg/dL,,,,ROUTINE,"ok"'
        )
    return lines


def test_labevents_problems_are_named_by_their_line_across_blocks(tmp_path: Path) -> None:
    from preprocessing.mimic_tables import scan_labevents

    lines = labevents_lines(60_000)
    lines[100] = "x,y,z"
    lines[101] = "x,y,z"  # reads alike: only its line tells it apart
    lines[30_000] = set_field(lines[30_000], 6, "not-a-date")
    lines.insert(40_000, lines[0])
    lines[55_000] = set_field(set_field(lines[55_000], 8, "-5"), 9, "-5")
    lines[59_000] = lines[59_000] + ",extra"
    path = tmp_path / "labevents.csv.gz"
    write_lines(path, lines)
    scan = scan_labevents(path, [50912, 50971], block_size=1 << 16)
    found = sorted((p.line, p.kind) for p in scan.problems)
    creatinine = int(lines[55_000].split(",")[4]) == 50912
    assert found == [
        (101, "bad_row"),
        (102, "bad_row"),
        (30_001, "bad_value"),
        (40_001, "repeated_header"),
        (55_001, "implausible_value"),
        (59_001, "bad_row"),
    ], found
    assert creatinine or "Potassium" in next(p.reason for p in scan.problems if p.line == 55_001)
    assert scan.rows_read == len(lines) - 1 - 3  # three rows of a wrong field count
    assert len(scan.numeric) == scan.rows_read - 3


def test_real_extreme_lab_values_are_kept_impossible_ones_refused(tmp_path: Path) -> None:
    from preprocessing.lab_catalog import impossible_bounds, plausible_range
    from preprocessing.mimic_tables import scan_labevents

    # Recorded in patients (rhabdomyolysis, ischaemic hepatitis, hyperosmolar coma, ...),
    # all outside the generator's ranges: kept. Then values no sample can have: refused.
    extremes = {"50910": "150000", "50861": "15000", "50931": "2000", "50971": "10"}
    extremes["50912"] = "0.05"
    impossible = {"50912": "-5", "50971": "1e308", "50931": "inf"}
    lines = labevents_lines(0)
    for n, (itemid, value) in enumerate([*extremes.items(), *impossible.items()]):
        lines.append(
            f"{n + 1},10000001,,{n},{itemid},,2180-01-01 10:00:00,2180-01-01 11:00:00,"
            f"{value},{value},,,,,ROUTINE,"
        )
    path = tmp_path / "labevents.csv"
    write_lines(path, lines)
    scan = scan_labevents(path, [int(i) for i in extremes])
    kept = dict(zip(scan.numeric["itemid"], scan.numeric["valuenum"], strict=True))
    assert kept == {int(i): float(v) for i, v in extremes.items()}
    for itemid, value in extremes.items():
        low, high = plausible_range(int(itemid))
        assert not low <= float(value) <= high  # the generator's range would have dropped it
    refused = sorted((p.line, p.kind) for p in scan.problems)
    assert refused == [(7, "implausible_value"), (8, "implausible_value"), (9, "implausible_value")]
    assert impossible_bounds(50912) == (0.0, 150.0)
    labs = [
        {"itemid": 50910, "label": "Creatine Kinase (CK)", "unit": "IU/L"},
        {"itemid": 50931, "label": "Glucose", "unit": "mg/dL"},
    ]
    assert read_labs_csv("labs.csv", b"itemid,value\n50910,150000\n50931,2000\n", labs) == {
        50910: 150000.0,
        50931: 2000.0,
    }


def test_identical_table_quarantine_rows_are_all_kept() -> None:
    from preprocessing.quarantine import quarantine_frame

    row = {"id": "", "file": "hosp/labevents.csv.gz", "stage": "labs", "reason": "bad_row: x"}
    shared = {"id": "7", "file": "files/a.hea", "stage": "ecg", "reason": "bad_header: x"}
    frame = quarantine_frame([row, dict(row), {**row, "stage": "tables"}, shared, dict(shared)])
    assert list(frame["stage"]) == ["tables", "ecg", "labs", "labs"]


def test_checkpoint_naming_a_windows_path_is_read(tmp_path: Path) -> None:
    import pathlib

    from symile_clinical.formats.lightning_checkpoint import read_lightning_checkpoint

    class SavedOnWindows:
        """Pickles as pathlib.WindowsPath, as a checkpoint saved on Windows does."""

        def __reduce__(self):
            return (pathlib.WindowsPath, ("C:\\data\\run", "fold1"))

    path = tmp_path / "windows.ckpt"
    torch.save(
        {"state_dict": {"w": torch.zeros(2)}, "hyper_parameters": {"root": SavedOnWindows()}},
        path,
    )
    content = read_lightning_checkpoint(path)
    assert content.hyper_parameters == {"root": "C:\\data\\run\\fold1"}
    assert torch.equal(content.state_dict["w"], torch.zeros(2))
