"""What the app shows for a split admission, prepared once per admission and shared by
every session: its query inputs, its query embeddings in each run, its lab-masking query
vectors, its labs table and its ECG image.

A change of admission then costs a lookup and one search per run; only the first visit
of an admission (in the server's life) reads its ECG record and draws it. Everything here
depends on the admission alone, never on the session, so one LRU cache per served run
(`AdmissionCache`) holds it for all sessions. The served run builds its admissions
(app.web.run_context.build_admission); this module knows nothing of it.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from app.web.queries import MaskedLabQueries, Query
from preprocessing.ecg import load_ecg_record
from preprocessing.errors import InvalidRecord
from preprocessing.layout import MimicRoot

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Admission:
    """One split row as the admission page shows it (read-only; shared across sessions)."""

    row: int
    query: Query
    embeddings: dict[str, tuple[np.ndarray, np.ndarray]]  # run label -> (ecg [d], labs [d])
    true_positions: dict[str, int]  # run label -> index position of the row's own CXR
    paper_pools: dict[str, np.ndarray | None]  # run label -> RunContext.paper_pool(row)
    masked_labs: MaskedLabQueries  # of the served run, for "what drives the match"
    labs: pd.DataFrame  # queries.labs_table
    labs_markdown: str  # the same table as the page shows it (app.web.markdown.labs_markdown)
    ecg_image: bytes  # PNG
    ecg_unit: str  # "mV" (read from the ECG release) or "normalised" (the stored tensor)


def admission_ecg(
    dataset_info: Mapping[str, Any], ecg_path: str, stored: np.ndarray
) -> tuple[np.ndarray, str]:
    """An admission's ECG for display: (signal [12, T], unit).

    In mV from the WFDB record `ecg_path` (the manifest's, relative to the ECG release) when
    the release the dataset was built from is still there (`dataset_info`, dataset.json,
    names it); otherwise `stored`, the stored, normalised tensor [12, T].
    """
    source = dataset_info.get("source", {})
    root = source.get("mimic_root")
    # ecg_dir: where preprocess read the ECG release (--ecg-dir may put it outside the root).
    ecg_dir = source.get("ecg_dir") or (MimicRoot(Path(root)).ecg if root else None)
    if ecg_dir:
        record = Path(ecg_dir) / str(ecg_path)
        if record.with_suffix(".hea").exists():
            try:
                return load_ecg_record(record), "mV"
            except InvalidRecord as error:
                log.warning("ECG record %s unreadable: %s", record, error.reason)
    return np.asarray(stored, np.float32), "normalised"


class AdmissionCache:
    """Admissions of one served run, built on first request and kept (LRU, thread-safe).

    Two sessions asking for the same new admission at once build it once: the second
    waits for the first's result.
    """

    def __init__(self, build: Callable[[int], Admission], max_entries: int = 2048) -> None:
        self._build = build
        self._max = max_entries
        self._done: OrderedDict[int, Admission] = OrderedDict()
        self._building: dict[int, threading.Lock] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._done)

    def get(self, row: int) -> Admission:
        """The admission of split row `row`."""
        with self._lock:
            if row in self._done:
                self._done.move_to_end(row)
                return self._done[row]
            row_lock = self._building.setdefault(row, threading.Lock())
        with row_lock:
            with self._lock:
                if row in self._done:
                    return self._done[row]
            admission = self._build(row)
            with self._lock:
                self._done[row] = admission
                self._building.pop(row, None)
                while len(self._done) > self._max:
                    self._done.popitem(last=False)
        return admission
