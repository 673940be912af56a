"""MIMIC-IV-ECG machine statements and measurements -> ECG findings, through a phrase table.

``mimic-iv-ecg/machine_measurements.csv`` holds, per ECG (subject_id, study_id), the cart's
statements ``report_0`` .. ``report_17`` (free text in the cart's vocabulary, e.g. "Sinus
rhythm", "Prolonged PR interval", "Nonspecific T wave abnormality", "Abnormal ECG") and its
measurements: ``rr_interval``, ``p_onset``, ``p_end``, ``qrs_onset``, ``qrs_end``, ``t_end``
(ms) and ``p_axis``, ``qrs_axis``, ``t_axis`` (degrees), with integer sentinels for what
was not measured (29999, 32767). The phrase table (``ecg_statements.csv``, a file users
edit) maps statement phrases to findings; an ECG with a row and no matching statement is
negative for every finding, an ECG without a row is unknown.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from preprocessing.errors import InvalidTable
from preprocessing.label_sources.source_files import read_source
from preprocessing.layout import (
    MACHINE_MEASUREMENTS_COLUMNS,
    MEASUREMENT_COLUMNS,
    MISSING_SENTINELS,
    REPORT_COLUMNS,
)

PHRASE_TABLE = Path(__file__).with_name("ecg_statements.csv")
_WORD = "A-Za-z0-9"


@dataclass(frozen=True)
class PhraseRule:
    """One phrase of the table and the findings (names without `ecg:`) it sets."""

    phrase: str
    findings: tuple[str, ...]
    pattern: re.Pattern


def load_phrase_table(path: Path = PHRASE_TABLE) -> list[PhraseRule]:
    """The phrase table's rules, longest phrase first; a bad table is an InvalidTable."""
    table = read_source(path, ("phrase", "findings"), comment="#", dtype=str, keep_default_na=False)
    rules = []
    for line, (phrase, findings) in enumerate(zip(table["phrase"], table["findings"], strict=True)):
        names = tuple(f.strip() for f in findings.split(";") if f.strip())
        if not phrase.strip() or not names:
            raise InvalidTable(path, f"row {line + 1}: a phrase and at least one finding needed")
        bad = [n for n in names if not re.fullmatch(r"[a-z0-9_]+", n)]
        if bad:
            raise InvalidTable(path, f"row {line + 1}: finding {bad[0]!r} is not [a-z0-9_]+")
        body = r"\s+".join(re.escape(word) for word in phrase.split())
        pattern = re.compile(rf"(?<![{_WORD}]){body}(?![{_WORD}])", re.IGNORECASE)
        rules.append(PhraseRule(phrase.strip(), names, pattern))
    return sorted(rules, key=lambda r: -len(r.phrase))


def finding_names(rules: Sequence[PhraseRule]) -> list[str]:
    """Every finding the table can set, sorted by name."""
    return sorted({name for rule in rules for name in rule.findings})


def statement_findings(statements: Iterable[str], rules: Sequence[PhraseRule]) -> set[str]:
    """Findings named by one ECG's statements; a matched phrase is consumed (longest first)."""
    found: set[str] = set()
    for statement in statements:
        text = str(statement)
        for rule in rules:
            text, hits = rule.pattern.subn(" | ", text)
            if hits:
                found.update(rule.findings)
    return found


def read_machine_measurements(path: Path, study_ids: Iterable[int] | None = None) -> pd.DataFrame:
    """machine_measurements rows (of `study_ids` when given); statements as text ("" = none).

    Measurements are float with NaN where the cart wrote a missing sentinel.
    """
    required = ("subject_id", "study_id", "report_0")
    usecols = lambda c: c in MACHINE_MEASUREMENTS_COLUMNS  # noqa: E731 (real files vary)
    text = {c: str for c in ("ecg_time", *REPORT_COLUMNS)}
    frame = read_source(path, required, usecols=usecols, dtype=text, low_memory=False)
    frame["study_id"] = pd.to_numeric(frame["study_id"], errors="coerce")
    if frame["study_id"].isna().any():
        line = int(np.flatnonzero(frame["study_id"].isna())[0]) + 2
        raise InvalidTable(path, f"line {line}: study_id is not a number")
    frame["study_id"] = frame["study_id"].astype("int64")
    if study_ids is not None:
        frame = frame[frame["study_id"].isin(set(int(s) for s in study_ids))]
    for column in REPORT_COLUMNS:
        if column in frame:
            frame[column] = frame[column].fillna("").astype(str)
    for column in MEASUREMENT_COLUMNS:
        if column in frame:
            values = pd.to_numeric(frame[column], errors="coerce")
            frame[column] = values.where(~values.isin(MISSING_SENTINELS))
    return frame.drop_duplicates("study_id", keep="first").reset_index(drop=True)


def ecg_finding_labels(
    measurements: pd.DataFrame, study_ids: pd.Series, rules: Sequence[PhraseRule]
) -> pd.DataFrame:
    """`ecg:<finding>` columns aligned to `study_ids`: 1, 0, or NaN where the ECG has no row."""
    names = finding_names(rules)
    reports = [c for c in REPORT_COLUMNS if c in measurements]
    by_study: dict[int, set[str]] = {}
    for study, *statements in measurements[["study_id", *reports]].itertuples(index=False):
        by_study[int(study)] = statement_findings((s for s in statements if s), rules)
    values = np.full((len(study_ids), len(names)), np.nan)
    for row, study in enumerate(study_ids.to_numpy()):
        found = by_study.get(int(study)) if pd.notna(study) else None
        if found is not None:
            values[row] = [float(name in found) for name in names]
    return pd.DataFrame(values, columns=[f"ecg:{n}" for n in names], index=study_ids.index)
