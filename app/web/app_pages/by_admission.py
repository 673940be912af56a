"""Query by admission: a test admission's ECG and labs against the candidate CXRs.

Everything that depends on the admission alone (its embeddings in each run, its paper
candidate sets, its lab masking vectors, its ECG image and labs table) comes prepared from
the served run (RunContext.admission), shared by every session: a change of admission is
a search and the page's elements.
"""

from __future__ import annotations

import streamlit as st

from app.web import views
from app.web.queries import rank_candidates

PAPER_POOL = "The paper's candidates"
WHOLE_INDEX = "The whole index"

context = views.current_context()
split = context.index.info["split"]
st.title("Query by admission")
st.caption(
    f"{context.label} run `{context.run.run_dir.name}` · {len(context.index)} candidate CXRs "
    f"({split} split) · checkpoint {context.index.info['checkpoint_sha256'][:12]}"
)

labels = context.admission_labels
row = st.selectbox(
    f"{split.capitalize()} admission (type to search by subject or admission id)",
    range(len(labels)),
    format_func=labels.__getitem__,
    key="admission",
)
admission = context.admission(row)
left, right = st.columns([1, 1])
pool_name = left.radio("Candidate pool", [PAPER_POOL, WHOLE_INDEX], horizontal=True, key="pool")
paper = pool_name == PAPER_POOL
pool = admission.paper_pools[context.label] if paper else None
if paper and pool is None:
    st.warning(
        "This dataset has no saved candidate set for this admission: the whole index is used."
    )
pool_size = len(pool) if pool is not None else len(context.index)
k = views.choose_k(right, pool_size, key="k")


def ranked(run: views.RunContext) -> views.Ranking:
    """The admission's ranking in one run (its embeddings and pools are prepared)."""
    ecg_emb, labs_emb = admission.embeddings[run.label]
    return rank_candidates(
        run.index,
        run.objective,
        run.logit_scale,
        ecg_emb,
        labs_emb,
        k,
        admission.paper_pools[run.label] if paper else None,
        admission.true_positions[run.label],
        observed=admission.query.observed,
    )


ranking = ranked(context)
others = [ranked(other) for other in context.comparisons]
# Recorded before anything of the admission's results is drawn (views.record_view).
row_ids = context.manifest.iloc[row]
views.record_view(
    "by_admission",
    admission={"subject_id": int(row_ids["subject_id"]), "hadm_id": int(row_ids["hadm_id"])},
    candidates={
        run.label: views.candidate_ids(run, r)
        for run, r in zip([context, *context.comparisons], [ranking, *others], strict=True)
    },
)
st.subheader(f"Top candidates for {labels[row]}")
views.show_ranking(context, ranking, key="admission", page_size=k)

if context.comparisons:
    st.subheader("Symile vs CLIP")
    views.show_side_by_side([context, *context.comparisons], [ranking, *others], "compare", k)

views.show_lab_effects(context, admission.query, admission.masked_labs, ranking, "admission")

ecg_tab, labs_tab = st.tabs(["12-lead ECG", "Labs"])
with ecg_tab:
    views.show_ecg(admission.ecg_image, admission.ecg_unit)
with labs_tab:
    st.markdown(admission.labs_markdown)
