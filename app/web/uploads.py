"""Uploaded ECG records and lab panels into model inputs, through the dataset's preprocessing.

Uploads are written only into a tempfile.TemporaryDirectory (wfdb reads from files) that
is removed when parsing ends; nothing else touches the disk and nothing of their content
is logged. Every refusal is an UploadError naming the file and the reason, in words a
user can act on.
"""

from __future__ import annotations

import io
import logging
import re
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from app.web.errors import AppError
from preprocessing.ecg import check_header, load_ecg_record, normalise_ecg
from preprocessing.errors import InvalidRecord
from preprocessing.lab_catalog import impossible_bounds
from preprocessing.labs import observed_mask, percentiles_from_cdf

log = logging.getLogger(__name__)

MAX_UPLOAD_MB = 20
MAX_UPLOAD_BYTES = MAX_UPLOAD_MB * 1024 * 1024
WFDB_SUFFIXES = (".hea", ".dat", ".mat")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


class UploadError(AppError):
    """An upload the app refuses: `path` is the file's name as uploaded, `reason` what is
    wrong with it."""

    @property
    def name(self) -> str:
        """The uploaded file's name."""
        return str(self.path)


@dataclass(frozen=True)
class UploadedEcg:
    """A parsed record: millivolts for display, normalised as the dataset for the model."""

    name: str
    millivolts: np.ndarray  # float32 [12, 5000] mV, leads I II III aVR aVL aVF V1-V6
    normalised: np.ndarray  # float32 [12, 5000], dataset.json's normalisation


def check_size(name: str, data: bytes, limit: int = MAX_UPLOAD_BYTES) -> None:
    """Refuse a file over the size limit."""
    if len(data) > limit:
        raise UploadError(
            name, f"{len(data) / 2**20:.1f} MB is over the {limit / 2**20:.0f} MB upload limit"
        )


def _safe_name(name: str) -> str:
    base = Path(name.replace("\\", "/")).name
    if not _SAFE_NAME.match(base):
        raise UploadError(name, "file names may use letters, digits, '.', '_' and '-' only")
    return base


def _unzip(name: str, data: bytes, limit: int) -> dict[str, bytes]:
    """WFDB members of a zip, by base name; refuses nested paths' clashes and zip bombs."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as error:
        raise UploadError(name, "not a readable zip archive") from error
    members: dict[str, bytes] = {}
    total = 0
    with archive:
        for info in archive.infolist():
            if info.is_dir() or Path(info.filename).name.startswith("."):
                continue
            base = _safe_name(Path(info.filename).name)
            if Path(base).suffix.lower() not in WFDB_SUFFIXES:
                continue
            total += info.file_size
            if total > limit:
                raise UploadError(name, f"unpacks to more than {limit / 2**20:.0f} MB")
            if base in members:
                raise UploadError(name, f"holds two files named {base}")
            members[base] = _read_member(name, archive, info, base, limit - total + info.file_size)
            total += len(members[base]) - info.file_size
    if not members:
        raise UploadError(name, "the zip holds no WFDB files (.hea with its .dat)")
    return members


def _read_member(
    name: str, archive: zipfile.ZipFile, info: zipfile.ZipInfo, base: str, allowed: int
) -> bytes:
    """A zip member's bytes, counted as they are decompressed: the headers' sizes may lie,
    so reading stops as soon as the member passes `allowed` bytes."""
    chunks, size = [], 0
    try:
        with archive.open(info) as member:
            while chunk := member.read(1 << 16):
                size += len(chunk)
                if size > allowed:
                    raise UploadError(
                        name, "unpacks to more than its headers declare, over the limit"
                    )
                chunks.append(chunk)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as error:
        raise UploadError(name, f"member {base} is corrupt ({type(error).__name__})") from None
    return b"".join(chunks)


def collect_wfdb_files(
    files: Sequence[tuple[str, bytes]], limit: int = MAX_UPLOAD_BYTES
) -> dict[str, bytes]:
    """Uploaded (name, bytes) pairs, zips unpacked, into WFDB files by base name."""
    if not files:
        raise UploadError("ECG", "no file uploaded: a WFDB .hea with its .dat, or a .zip")
    collected: dict[str, bytes] = {}
    for name, data in files:
        check_size(name, data, limit)
        suffix = Path(name).suffix.lower()
        if suffix == ".zip":
            members = _unzip(name, data, limit)
        elif suffix in WFDB_SUFFIXES:
            members = {_safe_name(name): data}
        else:
            raise UploadError(
                name,
                f"wrong file type ({suffix or 'no extension'}): upload a WFDB record, "
                "its .hea header with its .dat signal file, or a .zip holding both",
            )
        for base, content in members.items():
            if base in collected:
                raise UploadError(base, "uploaded twice")
            collected[base] = content
    return collected


def read_ecg_upload(
    files: Sequence[tuple[str, bytes]], normalisation: str, limit: int = MAX_UPLOAD_BYTES
) -> UploadedEcg:
    """Parse an uploaded WFDB record with the dataset's ECG reader and normalisation."""
    import wfdb

    collected = collect_wfdb_files(files, limit)
    headers = [name for name in collected if name.lower().endswith(".hea")]
    if len(headers) != 1:
        found = ", ".join(sorted(collected)) or "nothing"
        raise UploadError(
            "ECG", f"exactly one .hea header expected with its signal file, got {found}"
        )
    header = headers[0]
    with tempfile.TemporaryDirectory(prefix="symile-upload-") as tmp:
        folder = Path(tmp)
        for base, content in collected.items():
            (folder / base).write_bytes(content)
        record = folder / header[: -len(".hea")]
        try:
            check_header(folder / header)  # limits before any sample is read (fs, duration)
        except InvalidRecord as error:
            raise UploadError(header, error.reason) from None
        try:
            signal_files = set(wfdb.rdheader(str(record)).file_name or [])
        except Exception as error:  # wfdb raises many types for a malformed header
            raise UploadError(header, f"not a readable WFDB header ({error})") from None
        missing = sorted(f for f in signal_files if f not in collected)
        if missing:
            raise UploadError(
                header,
                f"its signal file {', '.join(missing)} was not uploaded: upload the .hea "
                "together with its .dat (or a .zip of both)",
            )
        try:
            millivolts = load_ecg_record(record)
        except InvalidRecord as error:
            raise UploadError(header, error.reason) from None
    log.info("parsed an uploaded ECG record (%d leads)", millivolts.shape[0])
    return UploadedEcg(header, millivolts, normalise_ecg(millivolts, normalisation))


def _lab_lookup(
    labs_spec: Sequence[Mapping[str, Any]],
) -> tuple[dict[int, int], dict[str, int], dict[str, list[int]]]:
    """Column of each itemid and of each unique label; labels naming several labs.

    MIMIC-IV reuses labels across fluids (Glucose, Creatinine, pH in blood and urine), so
    a top-K lab list may hold one label twice: such a label is ambiguous, not a lookup.
    """
    by_itemid = {int(spec["itemid"]): i for i, spec in enumerate(labs_spec)}
    columns: dict[str, list[int]] = {}
    for i, spec in enumerate(labs_spec):
        columns.setdefault(str(spec["label"]).strip().lower(), []).append(i)
    by_label = {label: found[0] for label, found in columns.items() if len(found) == 1}
    ambiguous = {label: found for label, found in columns.items() if len(found) > 1}
    return by_itemid, by_label, ambiguous


def read_labs_csv(
    name: str,
    data: bytes,
    labs_spec: Sequence[Mapping[str, Any]],
    limit: int = MAX_UPLOAD_BYTES,
) -> dict[int, float]:
    """A labs CSV (columns itemid or label, and value) -> {itemid: value}.

    Empty values are missing labs. Unknown labs, text values, values outside the lab
    catalogue's impossible-value bounds (preprocessing.lab_catalog.impossible_bounds) and a lab
    given twice are refused with the offending rows.
    """
    check_size(name, data, limit)
    if Path(name).suffix.lower() not in (".csv", ".txt"):
        raise UploadError(
            name, "wrong file type: upload a .csv with columns itemid or label, value"
        )
    try:
        table = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise UploadError(name, f"not a readable CSV ({error})") from None
    columns = {c.strip().lower(): c for c in table.columns}
    if "value" not in columns or not ({"itemid", "label"} & set(columns)):
        raise UploadError(
            name, f"columns itemid or label, and value expected; found {list(table.columns)}"
        )
    by_itemid, by_label, ambiguous = _lab_lookup(labs_spec)
    values: dict[int, float] = {}
    unknown, not_numeric, implausible = [], [], []
    for line, record in enumerate(table.to_dict("records"), start=2):
        key = (
            record.get(columns.get("itemid", ""), "").strip()
            or record.get(columns.get("label", ""), "").strip()
        )
        index = None
        if key.isdigit():
            index = by_itemid.get(int(key))
        if index is None and key.lower() in ambiguous:
            itemids = ", ".join(str(labs_spec[i]["itemid"]) for i in ambiguous[key.lower()])
            raise UploadError(
                name,
                f"line {line}: label {key!r} names several labs (itemids {itemids}): "
                "give the itemid instead",
            )
        if index is None:
            index = by_label.get(key.lower())
        if index is None:
            unknown.append(key or f"(line {line}: empty)")
            continue
        text = record[columns["value"]].strip()
        if text == "":
            continue
        try:
            value = float(text)
        except ValueError:
            not_numeric.append(f"line {line} ({labs_spec[index]['label']}: {text!r})")
            continue
        if not np.isfinite(value):
            not_numeric.append(f"line {line} ({labs_spec[index]['label']}: {text!r})")
            continue
        itemid = int(labs_spec[index]["itemid"])
        bounds = impossible_bounds(itemid)
        if bounds is not None and not bounds[0] <= value <= bounds[1]:
            unit = f" {labs_spec[index]['unit']}" if labs_spec[index].get("unit") else ""
            implausible.append(
                f"line {line} ({labs_spec[index]['label']}: possible "
                f"{bounds[0]:g} to {bounds[1]:g}{unit})"
            )
            continue
        if itemid in values:
            raise UploadError(name, f"lab {labs_spec[index]['label']} is given twice")
        values[itemid] = value
    if unknown:
        raise UploadError(
            name,
            f"unknown labs {', '.join(unknown[:8])}{' ...' if len(unknown) > 8 else ''}: "
            "use the itemids or labels of the dataset's lab list (shown in the form)",
        )
    if not_numeric:
        raise UploadError(name, f"values must be numbers: {', '.join(not_numeric[:8])}")
    if implausible:
        raise UploadError(
            name,
            f"values outside what the lab can measure: {', '.join(implausible[:8])}; "
            "check the value and its unit",
        )
    return values


def lab_inputs(
    values: Mapping[int, float | None], labs_spec: Sequence[Mapping[str, Any]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """{itemid: value or None} -> (raw float64 [L] NaN = missing, percentiles float32 [L],
    observed float32 [L]) through preprocessing.labs.percentiles_from_cdf."""
    raw = np.full(len(labs_spec), np.nan)
    for i, spec in enumerate(labs_spec):
        value = values.get(int(spec["itemid"]))
        if value is not None and np.isfinite(value):
            raw[i] = float(value)
    observed = observed_mask(raw, list(labs_spec)).astype(np.float32)
    percentiles = percentiles_from_cdf(raw, observed, list(labs_spec))
    return raw, np.asarray(percentiles, np.float32), observed
