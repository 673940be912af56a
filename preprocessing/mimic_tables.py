"""Reading MIMIC's tables: root validation, typed columns, labevents streamed and filtered.

Everything here is I/O at the edge: the joins on what it returns live in cohort.py.
Tables are found as ``.csv.gz`` (as PhysioNet ships them) or as decompressed ``.csv``.

One bad row never stops a run: a row with too few or too many fields, a repeated header
line, an id, time or date that does not parse, or a file path that leaves its release
folder is left out and reported as a `RowProblem` (table, line, id, kind, reason; never
the row's values), which becomes a quarantine row. A table that cannot be read at all
(truncated or corrupt file) stops the run at once with an `InvalidTable` naming it: a
release cut short is a failed download, and reading on would silently drop whichever
patients its lost tail held.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from preprocessing import layout
from preprocessing.errors import InvalidRoot, InvalidTable
from preprocessing.lab_catalog import LAB_ITEMS, impossible_bounds_of, lab_by_itemid

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


@dataclass(frozen=True)
class RowProblem:
    """A table row left out: where it is and why, without its values (ids only)."""

    table: Path
    line: int | None  # 1-based line of the file (the header is line 1); None: not known
    id: str  # the row's own id (hadm_id, study_id, dicom_id, labevent_id) or ""
    kind: str  # bad_row, repeated_header, bad_value, path_outside_root, ...
    reason: str

    def quarantine_row(self, file: str, stage: str) -> dict:
        """The row of quarantine.csv; `file` is the table as the report names it."""
        where = f"line {self.line}: " if self.line is not None else ""
        return {
            "id": self.id,
            "file": file,
            "stage": stage,
            "reason": f"{self.kind}: {where}{self.reason}",
        }


def read_rows(
    path: Path, columns: Sequence[str], problems: list[RowProblem], id_column: str | None = None
) -> pd.DataFrame:
    """The `columns` of a CSV table as str, one row per well-formed line, plus `line` (int64).

    A line with another number of fields than the header, or a repeat of the header, is
    left out and appended to `problems` with its line. A file that ends early or is corrupt
    raises InvalidTable naming it.
    """
    return read_typed(path, columns, {}, problems, id_column)


def read_typed(
    path: Path,
    columns: Sequence[str],
    types: dict[str, str],
    problems: list[RowProblem],
    id_column: str | None = None,
) -> pd.DataFrame:
    """`read_rows` with `types` parsed ("int": int64, "datetime": datetime64, "path": a
    relative path inside the release folder); a row that fails one is a problem, left out.

    All the work is done on Arrow columns (a whole-column cast; the row-by-row finder runs
    only where a cast fails, to name the rows) and converted to pandas once.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    table, lines = _read_arrow(path, columns, problems, id_column)
    # A repeated header: the first column holds its own name (then the others are checked).
    header = pc.equal(table.column(columns[0]), columns[0])
    if pc.any(header).as_py():
        for column in columns[1:]:
            header = pc.and_(header, pc.equal(table.column(column), column))
    bad = np.asarray(header, dtype=bool).copy()
    for position in np.flatnonzero(bad):
        problems.append(
            RowProblem(path, int(lines[position]), "", "repeated_header", "the header line again")
        )
    parsed = {}
    for column, kind in types.items():
        # Ids and times are cast as they are (the finder trims); paths are trimmed first.
        text = table.column(column)
        if kind == "path":
            text = pc.utf8_trim_whitespace(text)
        if kind == "int":
            parsed[column], failed, what = _cast_int(text)
        elif kind == "datetime":
            parsed[column], failed, what = _cast_datetime(text)
        else:
            parsed[column], failed, what = text, _leaves_root(text), None
        for position in np.flatnonzero(failed & ~bad):
            empty = not (text[int(position)].as_py() or "").strip()
            if kind == "path":
                kind_name = "path_outside_root"
                reason = "path is empty" if empty else f"{column} leaves the release folder"
            else:
                kind_name = "bad_value"
                reason = f"{column} {'is empty' if empty else what}"
            row_id = _row_id(table, id_column, int(position))
            problems.append(RowProblem(path, int(lines[position]), row_id, kind_name, reason))
        bad |= failed
    for column, array in parsed.items():
        table = table.set_column(table.schema.get_field_index(column), column, array)
    keep = ~bad
    table = table.select(list(columns)).filter(pa.array(keep))
    frame = table.to_pandas()
    for column in columns:
        if types.get(column) == "int":
            frame[column] = frame[column].astype("int64")
        elif types.get(column) == "datetime":
            frame[column] = frame[column].astype("datetime64[ns]")
        else:
            frame[column] = frame[column].astype(object)
    frame["line"] = lines[keep]
    return frame


def _read_arrow(path: Path, columns: Sequence[str], problems: list[RowProblem], id_column):
    """pyarrow's read of `columns` (and the id) as text, and each row's line (int64 [N]).

    Single-threaded, pyarrow's invalid-row handler is told each malformed row's line: the
    row is reported and skipped, and a kept row's line is its index + 2 (the header is line
    1) + the malformed lines before it.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    wanted = list(dict.fromkeys([*columns, *([id_column] if id_column else [])]))
    skipped: list[int] = []
    id_position = _column_position(path, id_column)

    malformed = _bad_row_handler(path, id_position, id_column, problems, skipped)

    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=1 << 24, use_threads=False),
            parse_options=pacsv.ParseOptions(
                ignore_empty_lines=False,  # an empty line would shift every line number
                invalid_row_handler=malformed,
            ),
            convert_options=pacsv.ConvertOptions(
                include_columns=wanted,
                column_types={column: pa.string() for column in wanted},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except (OSError, EOFError, pa.ArrowInvalid) as error:
        # pyarrow's parse messages quote the row: name the file and the place only.
        detail = str(error) if isinstance(error, OSError) else type(error).__name__
        raise InvalidTable(
            path, f"cannot be read ({detail}): truncated or corrupt file, download it again"
        ) from None
    return table, kept_lines(table.num_rows, skipped)


def kept_lines(rows: int, skipped: Sequence[int], first: int = 2) -> np.ndarray:
    """Line of each of `rows` kept rows when the lines `skipped` were left out, int64 [rows]."""
    return lines_of_kept(np.arange(rows, dtype=np.int64), skipped, first)


def lines_of_kept(index: np.ndarray, skipped: Sequence[int], first: int = 2) -> np.ndarray:
    """Line of the kept rows numbered `index` (0-based among kept rows), int64.

    Kept row k is on line first + k + (skipped lines before it); a skipped line s has
    s - first - j kept rows before it when j skipped lines precede it. Skipped lines after
    the row may already be listed: they never count.
    """
    index = np.asarray(index, dtype=np.int64)
    if not len(skipped):
        return index + first
    ordered = np.sort(np.asarray(skipped, dtype=np.int64))
    kept_before = ordered - first - np.arange(len(ordered), dtype=np.int64)
    return index + first + np.searchsorted(kept_before, index, side="right")


def _column_position(path: Path, column: str | None) -> int | None:
    """Where `column` is in the table's header (None: no such column or no header)."""
    if not column:
        return None
    try:
        names = table_columns(path)
    except Exception:  # an unreadable header: the read below names the problem
        return None
    return names.index(column) if column in names else None


def _bad_row_handler(
    path: Path,
    id_position: int | None,
    id_column: str | None,
    problems: list[RowProblem],
    skipped: list[int],
) -> Callable[[Any], str]:
    """pyarrow's invalid-row handler: record a row of the wrong field count by its line and
    id (never its text) in `problems` and `skipped`, and skip it."""

    def handle(row: Any) -> str:
        skipped.append(row.number)
        problems.append(
            RowProblem(
                path,
                row.number,
                _field_id(row.text, id_position, id_column),
                "bad_row",
                f"{row.actual_columns} fields where the header has {row.expected_columns}",
            )
        )
        return "skip"

    return handle


def _field_id(text: str | None, position: int | None, id_column: str | None) -> str:
    """The id field of a malformed row's text, when it reads as an id ("" otherwise)."""
    if position is None:
        return ""
    fields = (text or "").split(",")
    value = fields[position].strip() if position < len(fields) else ""
    return value if value.isdigit() or (id_column == "dicom_id" and value.isalnum()) else ""


def _row_id(table, id_column: str | None, position: int) -> str:
    """A row's id as a problem names it: digits (or a dicom_id), else "" (read only for the
    rows that have a problem: converting every id to Python would cost more than the read)."""
    if not id_column:
        return ""
    value = (table.column(id_column)[position].as_py() or "").strip()
    return value if value.isdigit() or id_column == "dicom_id" else ""


def _cast_int(text):
    """Whole-number text to int64; (array with nulls where bad, bad bool [N], reason)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    what = "is not a whole number"
    try:
        return pc.cast(text, pa.int64()), np.zeros(len(text), dtype=bool), what
    except (pa.ArrowInvalid, OverflowError):
        text = pc.utf8_trim_whitespace(text)
        good = pc.fill_null(pc.match_substring_regex(text, r"^[-+]?\d{1,18}$"), False)
        kept = pc.if_else(good, text, pa.scalar(None, pa.string()))
        return pc.cast(kept, pa.int64()), ~np.asarray(good, dtype=bool), what


def _cast_datetime(text):
    """ISO 8601 text to timestamp[ns]; (array, bad bool [N], reason). Where the whole-column
    cast fails, pandas' ISO 8601 parser names the rows (and reads forms Arrow does not)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    what = "does not parse as a date and time"
    try:
        return pc.cast(text, pa.timestamp("ns")), np.zeros(len(text), dtype=bool), what
    except pa.ArrowInvalid:
        text = pc.utf8_trim_whitespace(text)
        series = pd.Series(text.to_numpy(zero_copy_only=False), dtype=object)
        parsed = pd.to_datetime(series.where(series != "", None), errors="coerce", format="ISO8601")
        good = parsed.notna().to_numpy(dtype=bool)
        return pa.array(parsed.astype("datetime64[ns]"), pa.timestamp("ns")), ~good, what


# Empty, absolute (/x, \\x, C:), or a ".." component, with either slash: one RE2 pass.
_LEAVES_ROOT = r"^$|^[/\\]|^[A-Za-z]:|(?:^|[/\\])\.\.(?:[/\\]|$)"


def _leaves_root(text) -> np.ndarray:
    """Which paths (trimmed Arrow text) are empty, absolute or hold a ``..`` component."""
    import pyarrow.compute as pc

    leaves = pc.match_substring_regex(text, _LEAVES_ROOT)
    return np.asarray(pc.fill_null(leaves, True), dtype=bool)


def path_leaves_root(paths: pd.Series) -> np.ndarray:
    """Which relative paths of a record list are empty, absolute or hold a ``..`` component
    (MIMIC's never do): bool [N]."""
    import pyarrow as pa
    import pyarrow.compute as pc

    text = pa.array(paths.fillna("").astype(str).to_numpy(dtype=object), pa.string())
    return _leaves_root(pc.utf8_trim_whitespace(text))


def read_admissions(path: Path, problems: list[RowProblem] | None = None) -> pd.DataFrame:
    """admissions: subject_id, hadm_id (int64), admittime (datetime64); bad rows to `problems`."""
    problems = [] if problems is None else problems
    types = {"hadm_id": "int", "subject_id": "int", "admittime": "datetime"}
    frame = read_typed(path, ADMISSIONS_NEEDED, types, problems, id_column="hadm_id")
    return frame[list(ADMISSIONS_NEEDED)]


def read_ecg_record_list(path: Path, problems: list[RowProblem] | None = None) -> pd.DataFrame:
    """record_list.csv: subject_id, study_id (int64), ecg_time (datetime64), path (str)."""
    problems = [] if problems is None else problems
    types = {"study_id": "int", "subject_id": "int", "ecg_time": "datetime", "path": "path"}
    return read_typed(path, ECG_NEEDED, types, problems, id_column="study_id")[list(ECG_NEEDED)]


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


def _study_date_problems(
    frame: pd.DataFrame, problems: list[RowProblem], table: Path, lines: pd.Series | None
) -> None:
    """A problem (``bad_study_date``) per row whose StudyDate/StudyTime gave no time."""
    for position in np.flatnonzero(frame["cxr_time"].isna().to_numpy()):
        line = int(lines.iloc[position]) if lines is not None else None
        problems.append(
            RowProblem(
                table,
                line,
                str(frame["dicom_id"].iloc[position]),
                "bad_study_date",
                "StudyDate or StudyTime does not parse as a DICOM date and time",
            )
        )


def read_cxr_metadata(
    metadata_path: Path, record_list_path: Path | None, problems: list[RowProblem] | None = None
) -> pd.DataFrame:
    """dicom_id, subject_id, study_id, ViewPosition, cxr_time, path (relative, .dcm or layout).

    A row whose StudyDate/StudyTime does not parse keeps cxr_time NaT (in no window) and
    is reported in `problems` as ``bad_study_date``; a row without ids is left out.
    """
    problems = [] if problems is None else problems
    types = {"subject_id": "int", "study_id": "int"}
    frame = read_typed(metadata_path, CXR_METADATA_NEEDED, types, problems, id_column="dicom_id")
    frame["dicom_id"] = frame["dicom_id"].astype(object)
    frame["cxr_time"] = study_datetime(frame["StudyDate"], frame["StudyTime"])
    _study_date_problems(frame, problems, metadata_path, frame["line"])
    frame["ViewPosition"] = frame["ViewPosition"].fillna("").astype(str).str.strip()
    frame = frame.drop(columns=["line"])
    if record_list_path is not None:
        paths = read_typed(
            record_list_path, ("dicom_id", "path"), {"path": "path"}, problems, "dicom_id"
        )
        frame = frame.merge(paths.drop(columns=["line"]), on="dicom_id", how="left")
        # A row whose record-list path was refused is no candidate (not the layout's path).
        refused = {
            p.id for p in problems if p.kind == "path_outside_root" and p.table == record_list_path
        }
        frame = frame[~frame["dicom_id"].isin(refused)].reset_index(drop=True)
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
    problems: list[RowProblem] | None = None,
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

    problems = [] if problems is None else problems
    types = {"subject_id": "int", "study_id": "int", "path": "path"}
    frame = read_typed(record_list_path, CXR_RECORD_LIST_FOR_HEADERS, types, problems, "dicom_id")
    frame = frame.drop(columns=["line"])
    frame["dicom_id"] = frame["dicom_id"].astype(object)
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
    readable = np.array([header is not None for header in headers], dtype=bool)
    # An unreadable header is only counted (above); a readable one without a time is reported.
    _study_date_problems(frame[readable], problems, record_list_path, None)
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
    """What a pass over labevents kept: numeric rows, malformed rows, rows read, problems."""

    numeric: pd.DataFrame  # labevent_id, subject_id, itemid, charttime, valuenum (chosen rows)
    malformed: pd.DataFrame  # labevent_id, subject_id, itemid, valuenum_text (any row)
    rows_read: int
    # Rows left out for another reason (bad_row, repeated_header, bad_value,
    # implausible_value); ids only.
    problems: list[RowProblem] = field(default_factory=list)


NUMBER_PATTERN = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"
INTEGER_PATTERN = r"^\s*[-+]?\d+\s*$"
_LAB_COLUMNS = ("labevent_id", "subject_id", "itemid", "charttime", "valuenum")


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

    Rows that do not parse never stop the scan: a row with another number of fields, a
    repeated header line, an id or charttime that does not parse, and (among the chosen
    rows) a value that is not finite or lies outside the lab catalogue's impossible-value
    bounds are `LabScan.problems`, each with its line. Lines count records (pyarrow's, read
    single-threaded): a quoted comment spanning lines is one. A truncated or corrupt file
    raises InvalidTable naming it.
    """
    import pyarrow as pa
    from tqdm import tqdm

    problems: list[RowProblem] = []
    skipped: list[int] = []  # lines of the rows of a wrong field count
    id_position = _column_position(path, "labevent_id")

    wrong_field_count = _bad_row_handler(path, id_position, "labevent_id", problems, skipped)

    reader = _open_labevents(path, block_size, wrong_field_count)
    item_set = pa.array(sorted({int(i) for i in itemids}), pa.int64()) if itemids else None
    subject_set = (
        pa.array(sorted({int(s) for s in subject_ids}), pa.int64())
        if subject_ids is not None
        else None
    )
    # Every lab (top-K): the catalogue's impossible-value bounds for the labs it knows.
    catalogued = item_set.to_pylist() if item_set is not None else [i.itemid for i in LAB_ITEMS]
    bounds = impossible_bounds_of(catalogued)
    numeric, malformed, rows = [], [], 0
    bar = tqdm(desc="labevents", unit=" rows", unit_scale=True, disable=not progress)
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            break
        except (OSError, pa.ArrowInvalid) as error:
            # pyarrow's parse messages quote the row: name the file and the place only.
            detail = str(error) if isinstance(error, OSError) else type(error).__name__
            raise InvalidTable(
                path,
                f"cannot be read past line {rows + len(skipped) + 1} ({detail}): "
                "truncated or corrupt file, download it again",
            ) from None
        table = pa.Table.from_batches([batch])
        # Each row's number among the kept rows: its line, with `skipped`, for problems.
        table = table.append_column(
            "_row", pa.array(np.arange(rows, rows + batch.num_rows, dtype=np.int64))
        )
        rows += batch.num_rows
        bar.update(batch.num_rows)
        table = _lab_block_types(table, skipped, path, problems)
        table, bad_values = _lab_block_values(table)
        if bad_values is not None:
            malformed.append(bad_values)
        keep = pa.compute.and_(
            pa.compute.is_valid(table.column("charttime")),
            pa.compute.is_valid(table.column("valuenum")),
        )
        if item_set is not None:
            keep = pa.compute.and_(
                keep, pa.compute.is_in(table.column("itemid"), value_set=item_set)
            )
        if subject_set is not None:
            keep = pa.compute.and_(
                keep, pa.compute.is_in(table.column("subject_id"), value_set=subject_set)
            )
        chosen = table.filter(keep)
        numeric.append(_drop_implausible(chosen, bounds, path, problems, skipped))
    bar.close()
    numeric_frame = _concat(numeric, list(_LAB_COLUMNS))
    malformed_frame = _concat(malformed, ["labevent_id", "subject_id", "itemid", "valuenum_text"])
    return LabScan(numeric_frame, malformed_frame, rows, problems)


def _open_labevents(path: Path, block_size: int, invalid_row_handler):
    """A streaming reader of labevents' five columns, all as text (converted per block)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    try:
        return pacsv.open_csv(
            path,
            # Single-threaded, the invalid-row handler is told each row's line.
            read_options=pacsv.ReadOptions(block_size=block_size, use_threads=False),
            # Free-text columns (comments) may hold quoted newlines.
            parse_options=pacsv.ParseOptions(
                newlines_in_values=True, invalid_row_handler=invalid_row_handler
            ),
            convert_options=pacsv.ConvertOptions(
                include_columns=list(_LAB_COLUMNS),
                column_types={column: pa.string() for column in _LAB_COLUMNS},
                strings_can_be_null=True,
            ),
        )
    except (OSError, pa.ArrowInvalid) as error:
        detail = str(error) if isinstance(error, OSError) else type(error).__name__
        raise InvalidTable(path, f"cannot be read ({detail}): download it again") from None


def _lab_block_types(table, skipped: list[int], path: Path, problems: list[RowProblem]):
    """One block's ids as int64 and charttime as timestamp[s]; rows that do not parse are
    problems and dropped. The fast path casts the whole block at once."""
    import pyarrow as pa
    import pyarrow.compute as pc

    ids = ("labevent_id", "subject_id", "itemid")
    try:
        columns = {c: pc.cast(table.column(c), pa.int64()) for c in ids}
        columns["charttime"] = pc.cast(table.column("charttime"), pa.timestamp("s"))
    except pa.ArrowInvalid:
        return _lab_block_types_slow(table, skipped, path, problems)
    for name, column in columns.items():
        table = table.set_column(table.schema.get_field_index(name), name, column)
    return table


def _lab_block_types_slow(table, skipped: list[int], path: Path, problems: list[RowProblem]):
    """Row by row of a block that holds some unparseable cell: find it, report it, drop it."""
    import pyarrow as pa

    frame = table.to_pandas()
    lines = lines_of_kept(frame["_row"].to_numpy(), skipped)
    bad = np.zeros(len(frame), dtype=bool)
    header = frame["labevent_id"].astype(str).str.strip() == "labevent_id"
    for position in np.flatnonzero(header.to_numpy()):
        problems.append(
            RowProblem(path, int(lines[position]), "", "repeated_header", "the header line again")
        )
    bad |= header.to_numpy()
    parsed = {}
    for column in ("labevent_id", "subject_id", "itemid"):
        text = frame[column].fillna("").astype(str)
        good = text.str.fullmatch(INTEGER_PATTERN[1:-1]) | (text == "")
        parsed[column] = pd.to_numeric(text.where(good & (text != ""), None), errors="coerce")
        _report(
            frame,
            ~good.to_numpy(dtype=bool) & ~bad,
            column,
            "is not a whole number",
            lines,
            path,
            problems,
        )
        bad |= ~good.to_numpy(dtype=bool)
    text = frame["charttime"].fillna("").astype(str).str.strip()
    times = pd.to_datetime(text.where(text != "", None), errors="coerce", format="ISO8601")
    unparsed = (times.isna() & (text != "")).to_numpy(dtype=bool)
    _report(
        frame,
        unparsed & ~bad,
        "charttime",
        "does not parse as a date and time",
        lines,
        path,
        problems,
    )
    bad |= unparsed
    keep = ~bad
    arrays = [
        pa.array(parsed[c][keep].astype("Int64"), pa.int64())
        for c in ("labevent_id", "subject_id", "itemid")
    ]
    arrays.append(pa.array(times[keep].astype("datetime64[s]"), pa.timestamp("s")))
    arrays.append(table.column("valuenum").filter(pa.array(keep)))
    arrays.append(table.column("_row").filter(pa.array(keep)))
    return pa.Table.from_arrays(arrays, names=[*_LAB_COLUMNS, "_row"])


def _report(
    frame: pd.DataFrame,
    bad: np.ndarray,
    column: str,
    what: str,
    lines: np.ndarray,
    path: Path,
    problems: list[RowProblem],
) -> None:
    """A ``bad_value`` problem per marked row of a labevents block (its labevent_id if any)."""
    ids = frame["labevent_id"].fillna("").astype(str).str.strip()
    for position in np.flatnonzero(bad):
        row_id = ids.iloc[position] if ids.iloc[position].isdigit() else ""
        problems.append(
            RowProblem(path, int(lines[position]), row_id, "bad_value", f"{column} {what}")
        )


def _lab_block_values(table):
    """valuenum parsed to float64; (table, the malformed rows or None)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    text = table.column("valuenum")
    malformed = None
    try:
        number = pc.cast(text, pa.float64())
    except pa.ArrowInvalid:  # some cell is not a number: find which (slow path)
        is_number = pc.match_substring_regex(text, NUMBER_PATTERN)
        bad = pc.and_(pc.is_valid(text), pc.invert(pc.fill_null(is_number, True)))
        malformed = (
            table.filter(bad)
            .select(["labevent_id", "subject_id", "itemid", "valuenum"])
            .rename_columns(["labevent_id", "subject_id", "itemid", "valuenum_text"])
        )
        number = pc.cast(pc.if_else(is_number, text, pa.scalar(None, pa.string())), pa.float64())
    table = table.set_column(table.schema.get_field_index("valuenum"), "valuenum", number)
    return table, malformed


def _drop_implausible(
    table, bounds: dict[int, tuple[float, float]], path: Path, problems, skipped: list[int]
):
    """Rows whose value is not finite, or outside a catalogued lab's impossible_bounds:
    problems (with their line), dropped."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if table.num_rows == 0:
        return table
    value = table.column("valuenum")
    outside = pc.invert(pc.is_finite(value))
    if bounds:
        known = pa.array(sorted(bounds), pa.int64())
        index = pc.index_in(table.column("itemid"), value_set=known)
        low = pc.take(pa.array([bounds[i][0] for i in known.to_pylist()], pa.float64()), index)
        high = pc.take(pa.array([bounds[i][1] for i in known.to_pylist()], pa.float64()), index)
        beyond = pc.fill_null(pc.or_(pc.less(value, low), pc.greater(value, high)), False)
        outside = pc.or_(outside, beyond)
    outside = pc.fill_null(outside, False)
    if not pc.any(outside).as_py():
        return table
    flagged = table.filter(outside)
    lines = lines_of_kept(flagged.column("_row").to_numpy(), skipped)
    for labevent_id, itemid, line in zip(
        flagged.column("labevent_id").to_pylist(),
        flagged.column("itemid").to_pylist(),
        lines,
        strict=True,
    ):
        if itemid in bounds:
            item = lab_by_itemid(itemid)
            low, high = bounds[itemid]
            reason = f"{item.label} outside the possible {low:g} to {high:g} {item.unit}".rstrip()
        else:
            reason = f"lab {itemid}: value is not a finite number"
        problems.append(RowProblem(path, int(line), str(labevent_id), "implausible_value", reason))
    return table.filter(pc.invert(outside))


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
