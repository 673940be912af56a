"""Streamlit building blocks shared by the pages: the served run, images, result grids.

The run, its index and everything prepared per admission live in the server process
(app.web.run_context.served_run), shared by all sessions; these functions only display them.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from app.web.audit import AuditWriteError, audit_log, audit_record
from app.web.auth import LOOPBACK_VIEWER
from app.web.markdown import markdown_table, without_server_paths
from app.web.queries import MaskedLabQueries, Query, lab_score_changes, rank_candidates
from app.web.run_context import (
    RunContext,
    RunUnavailableError,
    note_page_run,
    run_dir_from_args,
    run_stamp,
    served_run,
)
from app.web.serve_options import ServeOptions
from symile_clinical.evaluation.embedding import embed_query
from symile_clinical.search.index import Ranking

log = logging.getLogger(__name__)


def current_context() -> RunContext:
    """The run this app serves, or an error message and a stopped page."""
    note_page_run()
    run_dir = run_dir_from_args(sys.argv[1:], os.environ)
    if run_dir is None:
        st.error("No run given: start the app with `symile-clinical app --run RUN`.")
        st.stop()
    try:
        run_dir = Path(run_dir).resolve()
        context = served_run(run_dir, run_stamp(run_dir))
    except RunUnavailableError as error:
        # The run by name: a served page shows no server paths (the log has them).
        log.error("cannot serve %s: %s", error.path, error.reason)
        st.error(
            f"Cannot open the run {Path(error.path).name}: {without_server_paths(error.reason)}"
        )
        st.stop()
    if context.index_rebuilt:
        st.info(
            "The candidate index was built when this run was loaded (at the server's start, "
            "or for a new checkpoint): it was missing, or stale (made with another "
            "checkpoint or dataset)."
        )
    return context


VIEWER_KEY = "viewer"  # session_state: who is looking, set by main.py's gate on every run
_LAST_AUDITED = "_audited_view"


def serve_options() -> ServeOptions:
    """The server script's options (the run, access, the audit folder)."""
    return ServeOptions.from_args(sys.argv[1:], os.environ)


def candidate_ids(context: RunContext, ranking: Ranking) -> list[str]:
    """The dicom_ids of a ranking's results, in rank order (what the audit trail records)."""
    ids = context.index.ids
    return [str(ids[int(p)]) for p in ranking.positions]


def record_view(
    page: str,
    event: str = "view",
    admission: Mapping[str, int] | None = None,
    upload: Mapping[str, Any] | None = None,
    candidates: Mapping[str, Sequence[str]] | None = None,
) -> None:
    """Write this view to the run's audit trail (app.web.audit), once per distinct view of a
    session (a rerun that shows the same ids again writes nothing). A failed write is an
    error on the page, which then stops: nothing is shown that was not recorded."""
    options = serve_options()
    folder = options.audit_folder
    if folder is None:
        return  # no run given: the page shows only that
    record = audit_record(
        user=str(st.session_state.get(VIEWER_KEY, LOOPBACK_VIEWER)),
        run=Path(options.run_dir).resolve().name if options.run_dir else "",
        page=page,
        event=event,
        session=_session_id(),
        admission=admission,
        upload=upload,
        candidates=candidates,
    )
    view = json.dumps({k: v for k, v in record.items() if k != "time"}, sort_keys=True)
    if st.session_state.get(_LAST_AUDITED) == view:
        return
    try:
        audit_log(folder).write(record)
    except AuditWriteError as error:
        st.error(
            f"This view could not be written to the audit trail ({error.reason}), so it is "
            "not shown. The server's log names the file; tell the app's administrator."
        )
        st.stop()
    st.session_state[_LAST_AUDITED] = view


def _session_id() -> str | None:
    """The Streamlit session's id (None outside a session)."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    return None if ctx is None else str(ctx.session_id)


def show_ecg(png: bytes, unit: str) -> None:
    """The 12-lead ECG image (app.web.figures.ecg_png), captioned with its units."""
    st.image(png, caption=f"12-lead ECG ({unit} against seconds)", output_format="PNG")


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
    subjects = context.subject_ids
    images, image_captions = [], []
    for i in shown:
        position = int(ranking.positions[i])
        is_true = ranking.true_position == position
        images.append(context.thumbnail_uri(position))
        image_captions.append(
            f"#{i + 1}{' [TRUE CXR]' if is_true else ''} · score {ranking.scores[i]:.3f}"
            f" · p {ranking.probabilities[i]:.1%} · subject {subjects[position]}"
        )
    if images:
        # One element for the whole grid (each element is a message to the browser); the
        # PNGs encoded at start-up travel inline in it as data: URIs.
        st.image(images, caption=image_captions, width=150)


def show_lab_effects(
    context: RunContext,
    query: Query,
    masked: MaskedLabQueries,
    ranking: Ranking,
    key: str,
    top: int = 5,
) -> None:
    """'What drives the match': per observed lab, the score change when it is masked."""
    st.subheader("What drives the match")
    if not len(ranking.positions):
        return
    subjects = context.subject_ids
    options = {
        f"#{i + 1} (subject {subjects[int(p)]})": int(p)
        for i, p in enumerate(ranking.positions[: min(10, len(ranking.positions))])
    }
    choice = st.selectbox("result", list(options), key=f"{key}_drivers")
    if not len(masked.observed_idx):
        st.info("No lab is observed: the match rests on the ECG alone.")
        return
    # queries.lab_effects's table, without a DataFrame per rerun.
    changes, order = lab_score_changes(masked, context.index.embeddings[options[choice]])
    labels, observed_idx = context.lab_labels, masked.observed_idx
    rows = [
        (
            labels[observed_idx[i]],
            round(float(query.labs[observed_idx[i]]), 4),
            round(float(changes[i]), 4),
        )
        for i in order[:top]
    ]
    st.caption(
        "Score change when each observed lab is masked (made missing as in training); "
        "a negative change means the lab supported this match."
    )
    st.markdown(markdown_table(["lab", "percentile", "score_change"], rows))


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
        observed=query.observed,
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
            subjects = context.subject_ids
            rows = [
                (
                    i + 1,
                    subjects[position],
                    round(float(ranking.scores[i]), 3),
                    round(float(ranking.probabilities[i]) * 100, 1),
                    "✔" if position == ranking.true_position else "",
                )
                for i, position in enumerate(ranking.positions[:page_size].tolist())
            ]
            columns = ["rank", "subject_id", "score", "probability", "true"]
            st.markdown(markdown_table(columns, rows))
