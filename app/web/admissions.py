"""What the app shows for a split admission, prepared once per admission and shared by
every session: its query inputs, its query embeddings in each run, its lab-masking query
vectors, its labs table and its ECG image.

A change of admission then costs a lookup and one search per run; only the first visit
of an admission (in the server's life) reads its ECG record and draws it. Everything here
depends on the admission alone, never on the session, so one LRU cache per served run
(`AdmissionCache`) holds it for all sessions.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from app.web.figures import ecg_png
from app.web.markdown import labs_markdown
from app.web.queries import MaskedLabQueries, Query, labs_table, masked_lab_queries
from preprocessing.ecg import load_ecg_record
from preprocessing.errors import InvalidRecord
from preprocessing.layout import MimicRoot

if TYPE_CHECKING:
    from app.web.run_context import RunContext

log = logging.getLogger(__name__)

# Query embeddings of a split are computed at start-up, in batches, up to this many rows;
# beyond, per admission on first visit.
EAGER_EMBEDDING_ROWS = 20_000
EMBED_BATCH = 64


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


def split_query(context: RunContext, row: int) -> Query:
    """The stored, preprocessed inputs of a split row."""
    arrays = context.arrays
    return Query(
        ecg=np.asarray(arrays.ecg[row], np.float32),
        labs=np.asarray(arrays.labs[row], np.float32),
        observed=np.asarray(arrays.labs_observed[row], np.float32),
    )


def embed_split_queries(
    context: RunContext, rows: np.ndarray, batch_size: int = EMBED_BATCH
) -> tuple[np.ndarray, np.ndarray]:
    """(ecg, labs) query embeddings float32 [R, d] of split rows with the run's model, in
    batches (one forward pass per batch, not per row)."""
    ecg_parts, labs_parts = [], []
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            batch = context.arrays.batch(rows[start : start + batch_size])
            ecg_parts.append(context.run.model.encode_ecg(batch["ecg"]).float().numpy())
            labs_parts.append(
                context.run.model.encode_labs(batch["labs"], batch["labs_observed"]).float().numpy()
            )
    return np.concatenate(ecg_parts), np.concatenate(labs_parts)


def admission_ecg(context: RunContext, row: int) -> tuple[np.ndarray, str]:
    """A test admission's ECG for display: (signal [12, T], unit).

    In mV from the WFDB record when the MIMIC root the dataset was built from is still
    there (dataset.json names it); otherwise the stored, normalised tensor.
    """
    source = context.dataset.info.get("source", {})
    root = source.get("mimic_root")
    # ecg_dir: where preprocess read the ECG release (--ecg-dir may put it outside the root).
    ecg_dir = source.get("ecg_dir") or (MimicRoot(Path(root)).ecg if root else None)
    if ecg_dir:
        record = Path(ecg_dir) / str(context.manifest["ecg_path"].iloc[row])
        if record.with_suffix(".hea").exists():
            try:
                return load_ecg_record(record), "mV"
            except InvalidRecord as error:
                log.warning("ECG record of row %d unreadable: %s", row, error.reason)
    return np.asarray(context.arrays.ecg[row], np.float32), "normalised"


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


def build_admission(context: RunContext, row: int) -> Admission:
    """Everything the admission page shows for split row `row` that does not depend on the
    session's choices (pool, k, page, the result explained)."""
    query = split_query(context, row)
    runs = [context, *context.comparisons]
    embeddings = {c.label: c.query_embeddings(row) for c in runs}
    true_positions = {c.label: int(c.index.positions_of_rows(np.array([row]))[0]) for c in runs}
    ecg_emb, _ = embeddings[context.label]
    masked = masked_lab_queries(context.run.model, context.objective, query, ecg_emb, context.fill)
    signal, unit = admission_ecg(context, row)
    labs = labs_table(context.labs_spec, query.labs, query.observed)
    return Admission(
        row=row,
        query=query,
        embeddings=embeddings,
        true_positions=true_positions,
        paper_pools={c.label: c.paper_pool(row) for c in runs},
        masked_labs=masked,
        labs=labs,
        labs_markdown=labs_markdown(labs),
        ecg_image=ecg_png(signal, float(context.ecg_info["sampling_hz"]), unit),
        ecg_unit=unit,
    )
