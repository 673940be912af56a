"""Streamlit building blocks shared by the pages: the loaded run, plots, result grids."""

from __future__ import annotations

import io
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import streamlit as st

from app.queries import Query, Ranking, lab_effects, rank_candidates
from app.run_context import RunContext, RunUnavailableError, open_run, run_dir_from_args
from preprocessing.layout import CANONICAL_ECG_LEADS
from symile_clinical.embedding import embed_query
from symile_clinical.index import INDEX_JSON
from symile_clinical.runs import RunDir

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

GRID_COLUMNS = 5


@st.cache_resource(show_spinner="Loading the model and the candidate index ...", max_entries=4)
def cached_context(run_dir: str, stamp: tuple[int, ...] = ()) -> RunContext:
    """The run, its index and dataset, loaded once per server process and `stamp`."""
    return open_run(run_dir)


def run_stamp(run_dir: Path | str) -> tuple[int, ...]:
    """Modification times of the files a loaded run depends on: a new checkpoint, index or
    comparison list loads the run again instead of serving a stale model."""
    run = RunDir(run_dir)
    paths = [run.best_checkpoint, run.last_checkpoint, run.index_dir / INDEX_JSON, run.compare_path]
    return tuple(p.stat().st_mtime_ns if p.exists() else 0 for p in paths)


def current_context() -> RunContext:
    """The run this app serves, or an error message and a stopped page."""
    run_dir = run_dir_from_args(sys.argv[1:], os.environ)
    if run_dir is None:
        st.error("No run given: start the app with `symile-clinical app --run RUN`.")
        st.stop()
    try:
        run_dir = Path(run_dir).resolve()
        context = cached_context(str(run_dir), run_stamp(run_dir))
    except RunUnavailableError as error:
        st.error(f"Cannot open the run {error.path}: {error.reason}")
        st.stop()
    if context.index_rebuilt:
        st.info(
            "The candidate index was built now: it was missing, or stale (made with another "
            "checkpoint or dataset)."
        )
    return context


def ecg_figure(signal: np.ndarray, fs: float, unit: str) -> Figure:
    """A 6 x 2 grid of the 12 leads, seconds on x and `unit` on y; a matplotlib Figure."""
    from matplotlib.figure import Figure

    seconds = np.arange(signal.shape[-1]) / fs
    fig = Figure(figsize=(11, 7.5))
    axes = fig.subplots(6, 2, sharex=True)
    fig.subplots_adjust(left=0.08, right=0.99, top=0.98, bottom=0.07, hspace=0.15, wspace=0.12)
    for lead, ax in enumerate(axes.T.ravel()):
        ax.plot(seconds, signal[lead], linewidth=0.6, color="black")
        ax.set_ylabel(f"{CANONICAL_ECG_LEADS[lead]}\n{unit}", rotation=0, ha="right", va="center")
        ax.grid(True, linewidth=0.3, color="#e8a0a0")
    for ax in axes[-1]:
        ax.set_xlabel("time (s)")
    return fig


@st.cache_data(max_entries=64, show_spinner=False)
def ecg_png(signal: np.ndarray, fs: float, unit: str) -> bytes:
    """The ECG plot as PNG bytes, drawn once per signal (reruns reuse it)."""
    buffer = io.BytesIO()
    ecg_figure(np.asarray(signal, np.float32), fs, unit).savefig(buffer, format="png", dpi=80)
    return buffer.getvalue()


def show_ecg(signal: np.ndarray, fs: float, unit: str) -> None:
    """Plot the 12 leads (labelled; seconds; mV, or the dataset's normalised units)."""
    st.image(ecg_png(signal, fs, unit), caption=f"12-lead ECG ({unit} against seconds)")


def choose_k(container: Any, pool_size: int, key: str | None = None) -> int:
    """How many results to show: a slider up to min(50, pool), or the whole pool when a
    slider cannot be drawn (Streamlit refuses one whose min equals its max)."""
    if pool_size <= 1:
        container.caption(f"k = {pool_size}: the pool holds {pool_size} candidate(s)")
        return pool_size
    top = min(50, pool_size)
    return int(container.slider("k (results shown)", 1, top, min(10, top), key=key))


def show_ranking(context: RunContext, ranking: Ranking, key: str, page_size: int) -> None:
    """A grid of result thumbnails with rank, score and probability; the true one marked."""
    if ranking.true_rank is not None:
        st.markdown(
            f"**True CXR rank: {ranking.true_rank} of {ranking.pool_size}** "
            f"(score {ranking.true_score:.3f}, probability {ranking.true_probability:.1%})"
        )
    n_pages = max(1, -(-len(ranking.positions) // page_size))
    page = 1
    if n_pages > 1:
        page = int(st.number_input("results page", 1, n_pages, 1, key=f"{key}_page"))
    start = (page - 1) * page_size
    shown = range(start, min(start + page_size, len(ranking.positions)))
    columns = st.columns(GRID_COLUMNS)
    for slot, i in enumerate(shown):
        position = int(ranking.positions[i])
        meta = context.index.metadata.iloc[position]
        is_true = ranking.true_position == position
        caption = (
            f"#{i + 1}{' [TRUE CXR]' if is_true else ''} · score {ranking.scores[i]:.3f}"
            f" · p {ranking.probabilities[i]:.1%} · subject {meta['subject_id']}"
        )
        with columns[slot % GRID_COLUMNS]:
            st.image(np.asarray(context.index.thumbnails[position]), caption=caption, width=150)


def show_lab_effects(
    context: RunContext, query: Query, ranking: Ranking, key: str, top: int = 5
) -> None:
    """'What drives the match': per observed lab, the score change when it is masked."""
    st.subheader("What drives the match")
    if not len(ranking.positions):
        return
    options = {
        f"#{i + 1} (subject {context.index.metadata.iloc[int(p)]['subject_id']})": int(p)
        for i, p in enumerate(ranking.positions[: min(10, len(ranking.positions))])
    }
    choice = st.selectbox("result", list(options), key=f"{key}_drivers")
    labels = [str(spec["label"]) for spec in context.labs_spec]
    table = lab_effects(
        context.run.model,
        context.objective,
        query,
        context.index.embeddings[options[choice]],
        context.fill,
        labels,
        top=top,
    )
    if table.empty:
        st.info("No lab is observed: the match rests on the ECG alone.")
        return
    st.caption(
        "Score change when each observed lab is masked (made missing as in training); "
        "a negative change means the lab supported this match."
    )
    st.dataframe(table.round(4), hide_index=True)


def rank_with(
    context: RunContext,
    query: Query,
    k: int,
    pool: np.ndarray | None,
    true_position: int | None,
    embeddings: tuple[np.ndarray, np.ndarray] | None = None,
) -> Ranking:
    """Embed (unless given) and rank a query with one run."""
    ecg_emb, labs_emb = embeddings or embed_query(
        context.run.model, query.ecg, query.labs, query.observed
    )
    return rank_candidates(
        context.index,
        context.objective,
        context.logit_scale,
        ecg_emb,
        labs_emb,
        k,
        pool,
        true_position,
    )


def show_side_by_side(
    contexts: Sequence[RunContext], rankings: Sequence[Ranking], key: str, page_size: int
) -> None:
    """The rankings of several runs next to each other."""
    columns = st.columns(len(contexts))
    for column, context, ranking in zip(columns, contexts, rankings, strict=True):
        with column:
            st.markdown(f"#### {context.label}")
            if ranking.true_rank is not None:
                st.markdown(f"true CXR rank **{ranking.true_rank}** of {ranking.pool_size}")
            table = pd.DataFrame(
                {
                    "rank": np.arange(1, len(ranking.positions) + 1),
                    "subject_id": context.index.metadata["subject_id"]
                    .to_numpy()[ranking.positions]
                    .astype(str),
                    "score": ranking.scores.round(3),
                    "probability": (ranking.probabilities * 100).round(1),
                    "true": ranking.positions == ranking.true_position,
                }
            ).head(page_size)
            st.dataframe(table, hide_index=True)


def admission_ecg(context: RunContext, row: int) -> tuple[np.ndarray, str]:
    """A split row's ECG in mV from its WFDB record when the MIMIC root is reachable, else
    the stored normalised tensor; (float32 [12, T], unit label)."""
    from preprocessing.ecg import load_ecg_record
    from preprocessing.errors import InvalidRecord
    from preprocessing.layout import MimicRoot

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
