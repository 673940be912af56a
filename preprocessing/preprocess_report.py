"""preprocess_report.json: what a run did, counted by stage and reason, and checked to add up.

Every admission ends in the tensors or in quarantine.csv, every file read is ok or
rejected with a kind; `reconcile` checks it before anything is published.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from preprocessing.mimic_tables import LabScan
from preprocessing.quarantine import reason_kind


@dataclass
class PreprocessReport:
    """What preprocess did: counts by stage and reason (they reconcile), sizes, timings."""

    out: Path
    counts: dict = field(default_factory=dict)
    splits: dict = field(default_factory=dict)
    timings_s: dict = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        """preprocess_report.json content."""
        return {"counts": self.counts, "splits": self.splits, "timings_s": self.timings_s}


def count_outcomes(
    total: int,
    included: int,
    quarantine: pd.DataFrame,
    file_counts: dict[str, Counter],
    scan: LabScan,
    table_problems: int | None = None,
) -> dict[str, Any]:
    """The report's counts: admissions, files, table and lab rows by stage and reason.

    `table_problems`: how many rows of admissions and the ECG/CXR tables were left out
    (stage ``tables``), which `reconcile` checks against quarantine.csv.
    """
    cohort_rows = quarantine[quarantine["stage"] == "cohort"]
    excluded = Counter(reason_kind(r) for r in cohort_rows["reason"])
    by_stage = {
        stage: dict(sorted(Counter(reason_kind(r) for r in rows["reason"]).items()))
        for stage, rows in quarantine.groupby("stage", sort=True)
    }
    files = {}
    for stage, counter in file_counts.items():
        rejected = {k: v for k, v in sorted(counter.items()) if k != "ok"}
        files[f"{stage}_files"] = {
            "read": int(sum(counter.values())),
            "ok": int(counter.get("ok", 0)),
            "rejected": rejected,
        }
    return {
        "admissions": {
            "total": total,
            "included": included,
            "excluded": dict(sorted(excluded.items())),
        },
        **files,
        "lab_rows": {
            "scanned": int(scan.rows_read),
            "kept_numeric": len(scan.numeric),
            "malformed": len(scan.malformed),
            "quarantined_other": dict(sorted(Counter(p.kind for p in scan.problems).items())),
        },
        "table_rows_quarantined": {
            "tables": int((quarantine["stage"] == "tables").sum()),
            "labs": int((quarantine["stage"] == "labs").sum()),
        },
        "table_rows_left_out": table_problems,
        "quarantine_rows": {"total": len(quarantine), "by_stage_and_reason": by_stage},
    }


def reconcile(counts: dict[str, Any]) -> None:
    """Assert the report's counts add up; raises AssertionError naming the mismatch."""
    adm = counts["admissions"]
    excluded = sum(adm["excluded"].values())
    if adm["included"] + excluded != adm["total"]:
        raise AssertionError(f"admissions: {adm['included']} + {excluded} != {adm['total']}")
    labs = counts["lab_rows"]
    lab_rows = labs["malformed"] + sum(labs["quarantined_other"].values())
    if counts["table_rows_quarantined"]["labs"] != lab_rows:
        quarantined = counts["table_rows_quarantined"]["labs"]
        raise AssertionError(f"labs: {lab_rows} rows left out != {quarantined} quarantined")
    left_out = counts.get("table_rows_left_out")
    if left_out is not None and counts["table_rows_quarantined"]["tables"] != left_out:
        quarantined = counts["table_rows_quarantined"]["tables"]
        raise AssertionError(f"tables: {left_out} rows left out != {quarantined} quarantined")
    for stage in ("ecg", "cxr"):
        files = counts[f"{stage}_files"]
        rejected = sum(files["rejected"].values())
        if files["ok"] + rejected != files["read"]:
            raise AssertionError(f"{stage} files: {files['ok']} + {rejected} != {files['read']}")
