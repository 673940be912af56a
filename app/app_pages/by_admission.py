"""Query by admission: a test admission's ECG and labs against the candidate CXRs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

from app import views
from app.queries import Query, labs_table
from symile_clinical.embedding import embed_query

PAPER_POOL = "The paper's candidates"
WHOLE_INDEX = "The whole index"


@st.cache_data(max_entries=512, show_spinner=False)
def admission_embeddings(
    run_dir: str, stamp: tuple[int, ...], row: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Query embeddings of one admission for the run and each comparison run, by label;
    cached, so paging or changing the pool does not run the model again."""
    context = views.cached_context(run_dir, stamp)
    query = admission_query(run_dir, row)
    return {
        c.label: embed_query(c.run.model, query.ecg, query.labs, query.observed)
        for c in [context, *context.comparisons]
    }


def admission_query(run_dir: str, row: int) -> Query:
    """The stored, preprocessed inputs of a split row."""
    arrays = views.cached_context(run_dir, views.run_stamp(Path(run_dir))).arrays
    return Query(
        ecg=np.asarray(arrays.ecg[row], np.float32),
        labs=np.asarray(arrays.labs[row], np.float32),
        observed=np.asarray(arrays.labs_observed[row], np.float32),
    )


context = views.current_context()
run_key = str(context.run.run_dir.resolve())
manifest = context.manifest
split = context.index.info["split"]
st.title("Query by admission")
st.caption(
    f"{context.label} run `{context.run.run_dir.name}` · {len(context.index)} candidate CXRs "
    f"({split} split) · checkpoint {context.index.info['checkpoint_sha256'][:12]}"
)

labels = [
    f"subject {s} · admission {h}"
    for s, h in zip(manifest["subject_id"], manifest["hadm_id"], strict=True)
]
row = st.selectbox(
    f"{split.capitalize()} admission (type to search by subject or admission id)",
    range(len(manifest)),
    format_func=lambda r: labels[r],
    key="admission",
)
left, right = st.columns([1, 1])
pool_name = left.radio("Candidate pool", [PAPER_POOL, WHOLE_INDEX], horizontal=True, key="pool")
pool = context.paper_pool(row) if pool_name == PAPER_POOL else None
if pool_name == PAPER_POOL and pool is None:
    st.warning(
        "This dataset has no saved candidate set for this admission: the whole index is used."
    )
pool_size = len(pool) if pool is not None else len(context.index)
k = views.choose_k(right, pool_size, key="k")

query = admission_query(run_key, row)
embeddings = admission_embeddings(run_key, views.run_stamp(Path(run_key)), row)
true_position = int(context.index.positions_of_rows(np.array([row]))[0])
ranking = views.rank_with(context, query, k, pool, true_position, embeddings[context.label])

st.subheader("Top candidates")
views.show_ranking(context, ranking, key="admission", page_size=k)

if context.comparisons:
    st.subheader("Symile vs CLIP")
    rankings = [ranking]
    for other in context.comparisons:
        other_pool = other.paper_pool(row) if pool_name == PAPER_POOL else None
        other_true = int(other.index.positions_of_rows(np.array([row]))[0])
        rankings.append(
            views.rank_with(other, query, k, other_pool, other_true, embeddings[other.label])
        )
    views.show_side_by_side([context, *context.comparisons], rankings, "compare", k)

views.show_lab_effects(context, query, ranking, key="admission")

ecg_tab, labs_tab = st.tabs(["12-lead ECG", "Labs"])
with ecg_tab:
    signal, unit = views.admission_ecg(context, row)
    views.show_ecg(signal, context.ecg_info["sampling_hz"], unit)
with labs_tab:
    st.dataframe(labs_table(context.labs_spec, query.labs, query.observed), hide_index=True)
