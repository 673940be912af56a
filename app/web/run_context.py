"""What the app serves from: a trained run, its candidate index, its dataset, its comparisons.

The run directory is read through `symile_clinical.formats.run_dir.RunDir` (its model, its dataset,
the runs compare.json names), the dataset through `symile_clinical.formats.dataset_dir.DatasetDir`
(the split the index covers, its manifest, candidate sets and lab list) and the index
through `symile_clinical.search.index`: this module names none of their files. What the
admission page shows is built here once per admission (`build_admission`) and kept in the
run's `app.web.admissions.AdmissionCache`.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from app.web.admissions import Admission, AdmissionCache, admission_ecg
from app.web.errors import AppError
from app.web.figures import ecg_png, thumbnail_data_uri
from app.web.markdown import labs_markdown
from app.web.queries import Query, labs_table, masked_lab_queries
from symile_clinical.errors import SymileClinicalError
from symile_clinical.evaluation.embedding import embed_queries
from symile_clinical.formats.dataset_dir import CandidateSets, DatasetDir, DatasetError, SplitArrays
from symile_clinical.formats.run_dir import LoadedRun, RunDir
from symile_clinical.search.index import INDEX_JSON, CandidateIndex, IndexConfig, ensure_index

log = logging.getLogger(__name__)

RUN_ENV = "SYMILE_CLINICAL_RUN"
# The device the served model runs on (`symile-clinical app --device`): cpu, cuda or cuda:N.
DEVICE_ENV = "SYMILE_CLINICAL_DEVICE"
# Thumbnails are encoded (PNG data: URIs) at start-up for indexes up to this size, on demand beyond.
EAGER_THUMBNAIL_ROWS = 50_000
# Admissions prepared at start-up (the rest on first visit): before the server reports
# healthy for up to WARM_BUDGET_S seconds after the run is loaded (the demo's whole test
# split takes a few), then in the background, so that preparation competes as little as
# possible with the first visitors' pages.
PREPARED_ADMISSIONS = 5_000
WARM_BUDGET_S = 10.0
# Query embeddings of a split are computed at start-up, in batches, up to this many rows;
# beyond, per admission on first visit.
EAGER_EMBEDDING_ROWS = 20_000
EMBED_BATCH = 64


class RunUnavailableError(AppError):
    """The run the app was pointed at cannot be served; `path` is the run directory."""


@dataclass
class RunContext:
    """A loaded run with its index and the dataset split the index covers."""

    label: str
    run: LoadedRun
    index: CandidateIndex
    dataset: DatasetDir
    arrays: SplitArrays  # the index's split
    manifest: pd.DataFrame  # that split's manifest rows, ordered by row
    candidates: CandidateSets | None  # the paper's candidate sets for that split, if saved
    index_rebuilt: bool = False
    comparisons: list[RunContext] = field(default_factory=list)
    # Filled by prepare(): what every session reuses.
    _thumbnail_uris: list[str] | None = field(default=None, repr=False)
    _query_embeddings: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)
    _admissions: AdmissionCache | None = field(default=None, repr=False)
    _lazy_thumbnail: Any = field(default=None, repr=False)

    def prepare(self) -> RunContext:
        """Compute what sessions share before serving: thumbnail PNGs and the split's
        query embeddings (batched), for this run and its comparisons; returns self."""
        self.run.model.eval()
        if len(self.index) <= EAGER_THUMBNAIL_ROWS:
            self._thumbnail_uris = [thumbnail_data_uri(t) for t in self.index.thumbnails]
        else:
            thumbnails = self.index.thumbnails
            self._lazy_thumbnail = functools.lru_cache(maxsize=8192)(
                lambda position: thumbnail_data_uri(thumbnails[position])
            )
        if len(self.arrays) <= EAGER_EMBEDDING_ROWS:
            self._query_embeddings = embed_queries(self.run.model, self.arrays, None, EMBED_BATCH)
        self._admissions = AdmissionCache(functools.partial(build_admission, self))
        # What every page run reads, computed now rather than on the first visit.
        _ = (self.logit_scale, self.subject_ids, self.lab_labels, self.admission_labels)
        for other in self.comparisons:
            other.prepare()
        return self

    def thumbnail_uri(self, position: int) -> str:
        """The thumbnail at an index position as a PNG data: URI (app.web.figures): the page
        carries the results' images inline, so showing them costs no media file and no
        request per image."""
        if self._admissions is None:
            self.prepare()
        if self._thumbnail_uris is not None:
            return self._thumbnail_uris[position]
        return self._lazy_thumbnail(position)

    def query_embeddings(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """(ecg [d], labs [d]) query embeddings of a split row with this run's model."""
        if self._query_embeddings is not None:
            return self._query_embeddings[0][row], self._query_embeddings[1][row]
        ecg, labs = embed_queries(self.run.model, self.arrays, np.array([row]))
        return ecg[0], labs[0]

    def split_query(self, row: int) -> Query:
        """The stored, preprocessed inputs of a split row."""
        return Query(
            ecg=np.asarray(self.arrays.ecg[row], np.float32),
            labs=np.asarray(self.arrays.labs[row], np.float32),
            observed=np.asarray(self.arrays.labs_observed[row], np.float32),
        )

    def admission(self, row: int) -> Admission:
        """What the admission page shows for split row `row`, built once and shared."""
        if self._admissions is None:
            self.prepare()
        return self._admissions.get(row)

    @property
    def objective(self) -> str:
        """'symile' or 'clip'."""
        return self.run.objective

    # What each page run reads, computed once per loaded run (a new checkpoint is a new
    # RunContext) rather than per rerun.
    @functools.cached_property
    def logit_scale(self) -> float:
        """exp of the learned log scale: what softmax probabilities are computed with."""
        return float(self.run.model.logit_scale.detach().exp())

    @functools.cached_property
    def subject_ids(self) -> list[str]:
        """subject_id of each index position, as text."""
        return [str(s) for s in self.index.metadata["subject_id"].to_numpy()]

    @functools.cached_property
    def lab_labels(self) -> list[str]:
        """The label of each lab column."""
        return [str(spec["label"]) for spec in self.labs_spec]

    @functools.cached_property
    def admission_labels(self) -> list[str]:
        """'subject S · admission H' of each split row (the admission picker's options)."""
        return [
            f"subject {s} · admission {h}"
            for s, h in zip(self.manifest["subject_id"], self.manifest["hadm_id"], strict=True)
        ]

    @property
    def labs_spec(self) -> list[dict[str, Any]]:
        """The dataset's lab list (the column order of labs arrays)."""
        return self.dataset.labs_spec

    @property
    def fill(self) -> np.ndarray:
        """float32 [L] percentile a missing lab is filled with."""
        return self.dataset.fill_values

    @property
    def ecg_info(self) -> dict[str, Any]:
        """The dataset's ECG settings: sampling_hz, normalisation, ..."""
        return dict(self.dataset.info["ecg"])

    def paper_pool(self, row: int) -> np.ndarray | None:
        """Index positions of the saved candidate set of a query row, or None."""
        if self.candidates is None or len(self.candidates) == 0:
            return None
        hit = np.flatnonzero(self.candidates.query_rows == row)
        if len(hit) == 0:
            return None
        return self.index.positions_of_rows(self.candidates.candidate_rows[hit[0]])


def build_admission(context: RunContext, row: int) -> Admission:
    """Everything the admission page shows for split row `row` that does not depend on the
    session's choices (pool, k, page, the result explained)."""
    query = context.split_query(row)
    runs = [context, *context.comparisons]
    embeddings = {c.label: c.query_embeddings(row) for c in runs}
    true_positions = {c.label: int(c.index.positions_of_rows(np.array([row]))[0]) for c in runs}
    ecg_emb, _ = embeddings[context.label]
    masked = masked_lab_queries(context.run.model, context.objective, query, ecg_emb, context.fill)
    ecg_path = str(context.manifest["ecg_path"].iloc[row])
    signal, unit = admission_ecg(context.dataset.info, ecg_path, context.arrays.ecg[row])
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


def run_dir_from_args(argv: Sequence[str], environ: Mapping[str, str]) -> Path | None:
    """`--run RUN` from the script's arguments (`streamlit run app.py -- --run RUN`), else
    the SYMILE_CLINICAL_RUN environment variable, else None."""
    args = list(argv)
    for i, arg in enumerate(args):
        if arg == "--run" and i + 1 < len(args):
            return Path(args[i + 1])
        if arg.startswith("--run="):
            return Path(arg.split("=", 1)[1])
    value = environ.get(RUN_ENV)
    return Path(value) if value else None


def _candidate_sets(dataset: DatasetDir, split: str) -> CandidateSets | None:
    """The split's saved candidate sets, or None (with a warning) when the dataset has none."""
    try:
        return dataset.candidates(split)
    except DatasetError as error:
        log.warning("no paper candidate sets: %s", error.reason)
        return None


def open_run(
    run_dir: Path | str | RunDir,
    checkpoint: str = "best",
    label: str | None = None,
    with_comparisons: bool = True,
    split: str = "test",
) -> RunContext:
    """Load a run's model, its current index (rebuilt when missing or stale) and dataset.

    Any reason the run cannot be served is a RunUnavailableError naming the run directory.
    """
    run_dir = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    if not run_dir.path.is_dir():
        raise RunUnavailableError(run_dir.path, "no such run directory")
    try:
        run = run_dir.load(checkpoint, os.environ.get(DEVICE_ENV, "cpu"))
        dataset = run_dir.dataset()
        config = IndexConfig(run_dir=run_dir.path, data_dir=dataset.path, split=split)
        index, rebuilt = ensure_index(run, config, progress=False)
        split = str(index.info["split"])
        arrays = dataset.split(split)
        manifest = dataset.manifest(split)
        comparisons = run_dir.comparisons() if with_comparisons else []
    except SymileClinicalError as error:
        raise RunUnavailableError(run_dir.path, str(error)) from error
    context = RunContext(
        label=label or run.objective.upper().replace("SYMILE", "Symile"),
        run=run,
        index=index,
        dataset=dataset,
        arrays=arrays,
        manifest=manifest,
        candidates=_candidate_sets(dataset, split),
        index_rebuilt=rebuilt,
    )
    for other_label, other in comparisons:
        context.comparisons.append(
            open_run(other, label=other_label, with_comparisons=False, split=split)
        )
    return context


def run_stamp(run_dir: Path | str) -> tuple[int, ...]:
    """Modification times of the files a loaded run depends on: a new checkpoint, index or
    comparison list loads the run again instead of serving a stale model."""
    run = RunDir(run_dir)
    paths = [run.best_checkpoint, run.last_checkpoint, run.index_dir / INDEX_JSON, run.compare_path]
    return tuple(p.stat().st_mtime_ns if p.exists() else 0 for p in paths)


_served: dict[str, tuple[tuple[int, ...], RunContext]] = {}
_served_lock = threading.Lock()


def served_run(run_dir: Path | str, stamp: tuple[int, ...] | None = None) -> RunContext:
    """The prepared RunContext of a run, one per server process, shared by every session.

    Loaded on the first call (the server's start-up, `warm_served_run`) and again only when
    `stamp` (run_stamp) changes; concurrent callers wait for one load rather than each
    loading the model.
    """
    key = str(Path(run_dir).resolve())
    stamp = run_stamp(key) if stamp is None else stamp
    with _served_lock:
        hit = _served.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        context = open_run(key).prepare()
        # The index may just have been (re)built: stamp what is there now.
        _served[key] = (run_stamp(key), context)
        return context


# Background preparation waits until no page has started for this long: on 2 cores it
# would otherwise take CPU and the GIL from the first visitors' pages.
QUIET_S = 0.3
_last_page_run = [0.0]  # time.monotonic() of the latest page run's start


def note_page_run() -> None:
    """Record that a session's page run starts now (background work waits for quiet)."""
    _last_page_run[0] = time.monotonic()


def _prepare_admissions(context: RunContext, rows: range) -> None:
    """Prepare admissions in a background thread while no session is running pages
    (errors are logged, never raised)."""
    if not rows:
        return
    start = time.perf_counter()
    try:
        for row in rows:
            while (quiet := time.monotonic() - _last_page_run[0]) < QUIET_S:
                time.sleep(QUIET_S - quiet)
            context.admission(row)
            time.sleep(0.001)  # yield the GIL to sessions between admissions
    except Exception:
        log.exception("preparing admissions in the background stopped")
    gc.freeze()  # the prepared admissions too (warm_served_run says why)
    log.info("%d admissions prepared in %.1f s", len(rows), time.perf_counter() - start)


def warm_served_run(run_dir: Path | str) -> RunContext:
    """Load and prepare a run before the server accepts connections; logs what it took."""
    import torch

    # Sessions run queries concurrently in threads: one intra-op thread each keeps 2
    # cores from being oversubscribed by torch's own thread pool.
    torch.set_num_threads(1)
    start = time.perf_counter()
    context = served_run(run_dir)
    loaded = time.perf_counter()
    rows = range(min(len(context.arrays), PREPARED_ADMISSIONS))
    prepared = 0  # row 0, the page's default admission, is always ready
    for row in rows:
        context.admission(row)
        prepared = row + 1
        if time.perf_counter() - loaded > WARM_BUDGET_S:
            break
    # The loaded run lives as long as the server: moved out of the collector's generations,
    # its objects (torch, pandas, the index) are not traversed again by each full
    # collection during the sessions' page runs.
    gc.freeze()
    # The other admissions are prepared in the background; a visit to one not reached yet
    # prepares it on the spot (AdmissionCache builds each once).
    threading.Thread(
        target=_prepare_admissions,
        args=(context, rows[prepared:]),
        name="prepare-admissions",
        daemon=True,
    ).start()
    log.info(
        "serving %s: model, %d candidates, thumbnails and %d admissions loaded in %.1f s",
        context.run.run_dir,
        len(context.index),
        prepared,
        time.perf_counter() - start,
    )
    return context
