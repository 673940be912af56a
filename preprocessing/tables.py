"""Reading MIMIC's tables: root validation, typed columns, labevents streamed and filtered.

Everything here is I/O at the edge: the joins on what it returns live in cohort.py.
Tables are found as ``.csv.gz`` (as PhysioNet ships them) or as decompressed ``.csv``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd

from preprocessing import layout
from preprocessing.errors import InvalidRoot

log = logging.getLogger(__name__)

# The columns each step needs (a subset of layout.*_COLUMNS; a real release has them all).
ADMISSIONS_NEEDED = ("subject_id", "hadm_id", "admittime")
ECG_NEEDED = ("subject_id", "study_id", "ecg_time", "path")
CXR_METADATA_NEEDED = (
    "dicom_id",
    "subject_id",
    "study_id",
    "ViewPosition",
    "StudyDate",
    "StudyTime",
)
CXR_RECORD_LIST_NEEDED = ("dicom_id", "path")
# Without the metadata table, the record list alone names the images and their ids.
CXR_RECORD_LIST_FOR_HEADERS = ("subject_id", "study_id", "dicom_id", "path")
CXR_HEADER_TAGS = ("ViewPosition", "StudyDate", "StudyTime")
CXR_HEADER_CHUNK = 256  # files read per task of the header pool
LABEVENTS_NEEDED = ("labevent_id", "subject_id", "itemid", "charttime", "valuenum")
D_LABITEMS_NEEDED = ("itemid", "label", "fluid")


@dataclass(frozen=True)
class RootPaths:
    """The three release directories; by default the layout under one MIMIC root."""

    hosp: Path
    ecg: Path
    cxr: Path

    @classmethod
    def from_root(
        cls,
        root: Path,
        hosp: Path | None = None,
        ecg: Path | None = None,
        cxr: Path | None = None,
    ) -> RootPaths:
        """Layout of `root` (preprocessing.layout), each release overridable on its own."""
        mimic = layout.MimicRoot(Path(root))
        return cls(
            hosp=Path(hosp) if hosp else mimic.hosp,
            ecg=Path(ecg) if ecg else mimic.ecg,
            cxr=Path(cxr) if cxr else mimic.cxr,
        )


def find_table(directory: Path, file_name: str) -> Path | None:
    """The table as shipped (``name.csv.gz``) or decompressed (``name.csv``); None if absent."""
    gz = directory / file_name
    plain = directory / file_name.removesuffix(".gz")
    for candidate in (gz, plain):
        if candidate.is_file():
            return candidate
    return None


def table_columns(path: Path) -> list[str]:
    """Header row of a CSV table."""
    return list(pd.read_csv(path, nrows=0).columns)


def validate_root(paths: RootPaths, root: Path | None = None) -> dict[str, Path]:
    """Check every table exists with the needed columns; InvalidRoot listing all problems.

    The CXR metadata table may be missing when ``cxr-record-list.csv.gz`` is there (the
    MIMIC-CXR DICOM release): the metadata is then read from the DICOM headers.
    """
    has_metadata = find_table(paths.cxr, layout.CXR_METADATA_FILE) is not None
    has_record_list = find_table(paths.cxr, layout.CXR_RECORD_LIST_FILE) is not None
    record_list_needed = CXR_RECORD_LIST_NEEDED if has_metadata else CXR_RECORD_LIST_FOR_HEADERS
    wanted = {
        "admissions": (paths.hosp, layout.ADMISSIONS_FILE, ADMISSIONS_NEEDED, True),
        "labevents": (paths.hosp, layout.LABEVENTS_FILE, LABEVENTS_NEEDED, True),
        "d_labitems": (paths.hosp, layout.D_LABITEMS_FILE, D_LABITEMS_NEEDED, False),
        "ecg_record_list": (paths.ecg, layout.ECG_RECORD_LIST_FILE, ECG_NEEDED, True),
        # One of the two below is required (checked after the loop). MIMIC-CXR-JPG ships no
        # record list: paths then follow layout.cxr_image_path.
        "cxr_metadata": (paths.cxr, layout.CXR_METADATA_FILE, CXR_METADATA_NEEDED, False),
        "cxr_record_list": (paths.cxr, layout.CXR_RECORD_LIST_FILE, record_list_needed, False),
    }
    found: dict[str, Path] = {}
    problems: list[str] = []
    for name, (directory, file_name, needed, required) in wanted.items():
        path = find_table(directory, file_name)
        if path is None:
            if required:
                problems.append(f"missing table {directory / file_name}{_decompressed(file_name)}")
            continue
        try:
            columns = table_columns(path)
        except Exception as error:  # empty, not gzip, not CSV
            problems.append(f"unreadable table {path}: {error}")
            continue
        missing = [column for column in needed if column not in columns]
        if missing:
            problems.append(f"table {path} lacks columns {missing}")
            continue
        found[name] = path
    if not (has_metadata or has_record_list):
        metadata, record_list = layout.CXR_METADATA_FILE, layout.CXR_RECORD_LIST_FILE
        problems.append(
            f"missing table {paths.cxr / metadata}{_decompressed(metadata)}, or "
            f"{paths.cxr / record_list}{_decompressed(record_list)} to read it from DICOM headers"
        )
    if not (paths.ecg / "files").is_dir() and "ecg_record_list" in found:
        problems.append(f"missing ECG folder {paths.ecg / 'files'}")
    if not (paths.cxr / "files").is_dir() and ({"cxr_metadata", "cxr_record_list"} & set(found)):
        problems.append(f"missing CXR folder {paths.cxr / 'files'}")
    if problems:
        raise InvalidRoot(root if root is not None else paths.hosp.parent.parent, problems)
    return found


def _decompressed(file_name: str) -> str:
    """The note that a decompressed table is also accepted."""
    return " (or its decompressed .csv)" if file_name.endswith(".gz") else ""


def read_admissions(path: Path) -> pd.DataFrame:
    """admissions: subject_id, hadm_id (int64), admittime (datetime64)."""
    frame = pd.read_csv(path, usecols=list(ADMISSIONS_NEEDED))
    frame["admittime"] = pd.to_datetime(frame["admittime"])
    return frame.astype({"subject_id": "int64", "hadm_id": "int64"})


def read_ecg_record_list(path: Path) -> pd.DataFrame:
    """record_list.csv: subject_id, study_id (int64), ecg_time (datetime64), path (str)."""
    frame = pd.read_csv(path, usecols=list(ECG_NEEDED), dtype={"path": str})
    frame["ecg_time"] = pd.to_datetime(frame["ecg_time"])
    return frame.astype({"subject_id": "int64", "study_id": "int64"})


def study_datetime(study_date: pd.Series, study_time: pd.Series) -> pd.Series:
    """DICOM StudyDate (YYYYMMDD) + StudyTime (HHMMSS.frac, leading zeros lost) -> datetime64.

    MIMIC-CXR's metadata stores StudyTime as a number, so 00:53:12 reads as 5312.0; the
    arithmetic below is the zero-padding that restores HH, MM and SS. A missing or
    unparseable date or time gives NaT (no CXR time: never inside a window), not midnight.
    """
    days = pd.to_numeric(study_date, errors="coerce").astype("Int64").astype(str)
    date = pd.to_datetime(days, format="%Y%m%d", errors="coerce")
    time = pd.to_numeric(study_time, errors="coerce").to_numpy(dtype=np.float64)
    hours = np.floor(time / 10000.0)
    minutes = np.floor(time / 100.0) % 100.0
    seconds = time - hours * 10000.0 - minutes * 100.0
    microseconds = np.round((hours * 3600.0 + minutes * 60.0 + seconds) * 1e6)
    offset = pd.to_timedelta(pd.Series(microseconds, index=study_time.index), unit="us")
    return date + offset


def read_cxr_metadata(metadata_path: Path, record_list_path: Path | None) -> pd.DataFrame:
    """dicom_id, subject_id, study_id, ViewPosition, cxr_time, path (relative, .dcm or layout)."""
    frame = pd.read_csv(metadata_path, usecols=list(CXR_METADATA_NEEDED), dtype={"dicom_id": str})
    frame["cxr_time"] = study_datetime(frame["StudyDate"], frame["StudyTime"])
    frame["ViewPosition"] = frame["ViewPosition"].fillna("").astype(str).str.strip()
    frame = frame.astype({"subject_id": "int64", "study_id": "int64"})
    if record_list_path is not None:
        paths = pd.read_csv(record_list_path, usecols=["dicom_id", "path"], dtype=str)
        frame = frame.merge(paths, on="dicom_id", how="left")
    else:
        frame["path"] = None
    frame["path"] = frame["path"].astype(object)
    missing = frame["path"].isna()
    if missing.any():
        frame.loc[missing, "path"] = [
            layout.cxr_image_path(s, t, d)
            for s, t, d in frame.loc[missing, ["subject_id", "study_id", "dicom_id"]].itertuples(
                index=False
            )
        ]
    return frame.drop(columns=["StudyDate", "StudyTime"])


def cxr_metadata_from_headers(
    cxr_dir: Path,
    record_list_path: Path,
    workers: int = 1,
    progress: bool = False,
    subject_ids: np.ndarray | None = None,
) -> pd.DataFrame:
    """What read_cxr_metadata returns, read from the DICOM headers the record list names.

    For the MIMIC-CXR DICOM release, which ships ``cxr-record-list.csv.gz`` but not
    ``mimic-cxr-2.0.0-metadata.csv.gz``. Only ViewPosition, StudyDate and StudyTime are
    read (no pixels), in a process pool of `workers` over chunks of files. A file whose
    header cannot be read (missing, not DICOM) gets ViewPosition "" and cxr_time NaT, so it
    falls in no window; only their count is logged.

    `subject_ids`, when given, limits the reads to those patients' images (the admissions
    table's subjects): the release holds ~377k images, most of no cohort admission.

    Returns dicom_id (str), subject_id, study_id (int64), ViewPosition (str), cxr_time
    (datetime64), path (str, relative to `cxr_dir`), in the record list's order.
    """
    from tqdm import tqdm

    frame = pd.read_csv(
        record_list_path, usecols=list(CXR_RECORD_LIST_FOR_HEADERS), dtype={"dicom_id": str}
    )
    frame = frame.astype({"subject_id": "int64", "study_id": "int64", "path": str})
    if subject_ids is not None:
        frame = frame[frame["subject_id"].isin(subject_ids)].reset_index(drop=True)
    files = [str(Path(cxr_dir) / path) for path in frame["path"]]
    chunks = [files[i : i + CXR_HEADER_CHUNK] for i in range(0, len(files), CXR_HEADER_CHUNK)]
    headers: list[tuple[str, str, str] | None] = [None] * len(files)
    bar = tqdm(total=len(files), desc="CXR headers", unit=" files", disable=not progress)
    if workers <= 1 or len(chunks) <= 1:
        for index, chunk in enumerate(chunks):
            start = index * CXR_HEADER_CHUNK
            headers[start : start + len(chunk)] = read_cxr_headers(chunk)
            bar.update(len(chunk))
    else:
        # spawn, as for decoding: workers start clean (no inherited threads or locks).
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            starts = {
                pool.submit(read_cxr_headers, chunk): index * CXR_HEADER_CHUNK
                for index, chunk in enumerate(chunks)
            }
            for future in as_completed(starts):
                chunk_headers = future.result()
                start = starts[future]
                headers[start : start + len(chunk_headers)] = chunk_headers
                bar.update(len(chunk_headers))
    bar.close()
    unreadable = sum(header is None for header in headers)
    if unreadable:
        log.warning(
            "%d of %d CXR headers unreadable: no view or time, so in no window",
            unreadable,
            len(headers),
        )
    values = pd.DataFrame(
        [header or ("", "", "") for header in headers],
        columns=list(CXR_HEADER_TAGS),
        index=frame.index,
        dtype=str,
    )
    frame["ViewPosition"] = values["ViewPosition"].str.strip()
    frame["cxr_time"] = study_datetime(
        values["StudyDate"], values["StudyTime"].map(dicom_time_as_hhmmss)
    )
    frame["path"] = frame["path"].astype(object)
    return frame[["dicom_id", "subject_id", "study_id", "ViewPosition", "cxr_time", "path"]]


def read_cxr_headers(paths: Sequence[str]) -> list[tuple[str, str, str] | None]:
    """ViewPosition, StudyDate, StudyTime of each DICOM as text; None where unreadable."""
    import pydicom

    headers: list[tuple[str, str, str] | None] = []
    for path in paths:
        try:
            dataset = pydicom.dcmread(
                path, stop_before_pixels=True, specific_tags=list(CXR_HEADER_TAGS)
            )
            headers.append(tuple(str(dataset.get(tag) or "") for tag in CXR_HEADER_TAGS))
        except Exception:  # missing, not DICOM, truncated, undecodable value: one file's problem
            headers.append(None)
    return headers


def dicom_time_as_hhmmss(value: str) -> str:
    """A DICOM TM value as HHMMSS.frac, the form study_datetime reads.

    TM may omit trailing components (``HHMM``, ``HH``) and old ACR-NEMA files write
    ``HH:MM:SS``; both are padded or stripped here. An empty value stays empty (NaT).
    """
    whole, dot, fraction = value.strip().replace(":", "").partition(".")
    if not whole:
        return ""
    return whole.ljust(6, "0") + dot + fraction


def match_image_suffix(cxr_dir: Path, paths: pd.Series, probe: int = 32) -> pd.Series:
    """Image paths as they exist on disk: a MIMIC-CXR-JPG root has ``.jpg`` where the DICOM
    release (and layout.cxr_image_path) has ``.dcm``. Probes a few files, not all of them.
    """
    sample = paths.iloc[:probe].tolist()
    if not sample or any((cxr_dir / p).is_file() for p in sample):
        return paths
    if any((cxr_dir / p).with_suffix(".jpg").is_file() for p in sample):
        log.info("%s holds JPG images (MIMIC-CXR-JPG): reading .jpg files", cxr_dir)
        return paths.str.replace(r"\.dcm$", ".jpg", regex=True)
    return paths


def read_d_labitems(path: Path | None) -> pd.DataFrame:
    """d_labitems: itemid, label, fluid (empty frame when the table is absent)."""
    if path is None:
        return pd.DataFrame({"itemid": [], "label": [], "fluid": []})
    return pd.read_csv(path, usecols=list(D_LABITEMS_NEEDED))


@dataclass
class LabScan:
    """What a pass over labevents kept: numeric rows, malformed rows, rows read."""

    numeric: pd.DataFrame  # labevent_id, subject_id, itemid, charttime, valuenum (chosen rows)
    malformed: pd.DataFrame  # labevent_id, subject_id, itemid, valuenum_text (any row)
    rows_read: int


NUMBER_PATTERN = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"


def scan_labevents(
    path: Path,
    itemids: Iterable[int] | None,
    subject_ids: Iterable[int] | None = None,
    block_size: int = 1 << 20,
    progress: bool = False,
) -> LabScan:
    """Stream labevents with pyarrow, keeping numeric rows of `itemids` and `subject_ids`.

    Only five columns are converted and every block is filtered before it is kept, so the
    full MIMIC-IV table (about 118 M rows) passes in bounded memory: what is kept is the
    rows of the chosen labs for the cohort's subjects. A row whose ``value`` is text with an
    empty ``valuenum`` ("___", "NEG") is ordinary and skipped; a ``valuenum`` that holds
    something other than a number is a malformed row, returned (from any lab) for quarantine.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv
    from tqdm import tqdm

    types = {
        "labevent_id": pa.int64(),
        "subject_id": pa.int64(),
        "itemid": pa.int64(),
        "charttime": pa.timestamp("s"),
        "valuenum": pa.string(),  # parsed below, so that one malformed cell cannot stop the run
    }
    reader = pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(block_size=block_size),
        # Free-text columns (comments) may hold quoted newlines.
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            include_columns=list(types), column_types=types, strings_can_be_null=True
        ),
    )
    item_set = pa.array(sorted({int(i) for i in itemids}), pa.int64()) if itemids else None
    subject_set = (
        pa.array(sorted({int(s) for s in subject_ids}), pa.int64())
        if subject_ids is not None
        else None
    )
    numeric, malformed, rows = [], [], 0
    bar = tqdm(desc="labevents", unit=" rows", unit_scale=True, disable=not progress)
    for batch in reader:
        rows += batch.num_rows
        bar.update(batch.num_rows)
        table = pa.Table.from_batches([batch])
        text = table.column("valuenum")
        try:
            number = pc.cast(text, pa.float64())
        except pa.ArrowInvalid:  # some cell is not a number: find which (slow path)
            is_number = pc.match_substring_regex(text, NUMBER_PATTERN)
            bad = pc.and_(pc.is_valid(text), pc.invert(pc.fill_null(is_number, True)))
            malformed.append(
                table.filter(bad)
                .select(["labevent_id", "subject_id", "itemid", "valuenum"])
                .rename_columns(["labevent_id", "subject_id", "itemid", "valuenum_text"])
            )
            number = pc.cast(
                pc.if_else(is_number, text, pa.scalar(None, pa.string())), pa.float64()
            )
        table = table.set_column(table.schema.get_field_index("valuenum"), "valuenum", number)
        keep = pc.and_(pc.is_valid(table.column("charttime")), pc.is_valid(number))
        if item_set is not None:
            keep = pc.and_(keep, pc.is_in(table.column("itemid"), value_set=item_set))
        if subject_set is not None:
            keep = pc.and_(keep, pc.is_in(table.column("subject_id"), value_set=subject_set))
        numeric.append(table.filter(keep))
    bar.close()
    numeric_frame = _concat(
        numeric, ["labevent_id", "subject_id", "itemid", "charttime", "valuenum"]
    )
    malformed_frame = _concat(malformed, ["labevent_id", "subject_id", "itemid", "valuenum_text"])
    return LabScan(numeric_frame, malformed_frame, rows)


def _concat(tables: list, columns: list[str]) -> pd.DataFrame:
    """Concatenate filtered arrow tables into pandas with numpy dtypes (empty-safe)."""
    import pyarrow as pa

    if not tables:
        return pd.DataFrame(
            {column: pd.Series([], dtype=_EMPTY_DTYPES[column]) for column in columns}
        )
    frame = pa.concat_tables(tables).to_pandas()
    if "charttime" in frame:
        frame["charttime"] = frame["charttime"].astype("datetime64[ns]")
    return frame[columns]


_EMPTY_DTYPES = {
    "labevent_id": "int64",
    "subject_id": "int64",
    "itemid": "int64",
    "charttime": "datetime64[ns]",
    "valuenum": "float64",
    "valuenum_text": object,
}
