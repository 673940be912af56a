"""Query by upload: a WFDB ECG record and a labs CSV (or typed lab values) from the user."""

from __future__ import annotations

import numpy as np
import streamlit as st

from app.web import views
from app.web.figures import ecg_png
from app.web.markdown import labs_markdown
from app.web.queries import Query, labs_table, masked_lab_queries
from app.web.uploads import (
    MAX_UPLOAD_MB,
    UploadedEcg,
    UploadError,
    lab_inputs,
    read_ecg_upload,
    read_labs_csv,
)
from symile_clinical.evaluation.embedding import embed_query


@st.cache_data(max_entries=8, show_spinner="Reading the ECG record ...")
def parse_ecg(files: tuple[tuple[str, bytes], ...], normalisation: str) -> UploadedEcg:
    """Parse once per distinct upload: paging or editing labs does not re-read the record."""
    return read_ecg_upload(list(files), normalisation)


@st.cache_data(max_entries=8, show_spinner=False)
def draw_ecg(millivolts: np.ndarray, fs: float) -> bytes:
    """The uploaded record's ECG image, drawn once per upload."""
    return ecg_png(millivolts, fs, "mV")


def lab_key(spec: dict) -> str:
    """Session-state key of a lab's input box."""
    return f"lab_{int(spec['itemid'])}"


context = views.current_context()
st.title("Query by upload")
st.caption(
    "Upload a 12-lead ECG (WFDB) and the admission labs; they go through the dataset's own "
    "preprocessing and the model. Uploads are parsed in a temporary folder and not kept."
)
# One limit: the server's (server.maxUploadSize, set from MAX_UPLOAD_MB by
# app/commands/serve.py and config.toml), which each uploader states, and the parser's.
ecg_uploads = st.file_uploader(
    "ECG record: the .hea header with its .dat signal file, or a .zip of them",
    accept_multiple_files=True,
    key="ecg_upload",
    max_upload_size=MAX_UPLOAD_MB,
)
labs_upload = st.file_uploader(
    "Labs CSV: columns `itemid` or `label`, and `value` (empty value = missing)",
    key="labs_upload",
    max_upload_size=MAX_UPLOAD_MB,
)

for spec in context.labs_spec:
    st.session_state.setdefault(lab_key(spec), None)
if labs_upload is not None:
    try:
        csv_values = read_labs_csv(labs_upload.name, labs_upload.getvalue(), context.labs_spec)
    except UploadError as error:
        st.error(f"Labs CSV refused: {error.name}: {error.reason}")
    else:
        # A new CSV fills the form once; edits made afterwards are kept.
        if st.session_state.get("labs_applied") != labs_upload.file_id:
            for spec in context.labs_spec:
                st.session_state[lab_key(spec)] = csv_values.get(int(spec["itemid"]))
            st.session_state["labs_applied"] = labs_upload.file_id
        st.success(f"{len(csv_values)} lab values read from {labs_upload.name}.")

with st.expander("Lab values: enter or edit, leave empty for missing"):
    columns = st.columns(3)
    for i, spec in enumerate(context.labs_spec):
        with columns[i % 3]:
            st.number_input(
                f"{spec['label']} ({spec.get('unit', '')})", key=lab_key(spec), format="%g"
            )

uploaded = {
    "ecg": sorted(f.name for f in ecg_uploads or []),
    "labs": labs_upload.name if labs_upload is not None else None,
}
if not ecg_uploads:
    views.record_view("by_upload", upload=uploaded)
    st.info("Upload an ECG record to search the candidate CXRs.")
    st.stop()
files = tuple((f.name, f.getvalue()) for f in ecg_uploads)
try:
    ecg = parse_ecg(files, context.ecg_info["normalisation"])
except UploadError as error:
    st.error(f"ECG refused: {error.name}: {error.reason}")
    st.stop()

values = {int(spec["itemid"]): st.session_state[lab_key(spec)] for spec in context.labs_spec}
raw, percentiles, observed = lab_inputs(values, context.labs_spec)
query = Query(ecg=ecg.normalised, labs=percentiles, observed=observed)
k = views.choose_k(st, len(context.index))
# One embedding of the upload serves the ranking and the lab masking (its ECG part).
embedded = embed_query(context.run.model, query.ecg, query.labs, query.observed)
ranking = views.rank_with(context, query, k, None, None, embeddings=embedded)
others = [views.rank_with(o, query, k, None, None) for o in context.comparisons]
views.record_view(
    "by_upload",
    upload=uploaded,
    candidates={
        run.label: views.candidate_ids(run, r)
        for run, r in zip([context, *context.comparisons], [ranking, *others], strict=True)
    },
)
st.subheader(f"Top candidates among {len(context.index)} CXRs")
views.show_ranking(context, ranking, key="upload", page_size=k)
if context.comparisons:
    st.subheader("Symile vs CLIP")
    views.show_side_by_side(
        [context, *context.comparisons], [ranking, *others], "upload_compare", k
    )
masked = masked_lab_queries(context.run.model, context.objective, query, embedded[0], context.fill)
views.show_lab_effects(context, query, masked, ranking, key="upload")

ecg_tab, labs_tab = st.tabs(["12-lead ECG", "Labs"])
with ecg_tab:
    views.show_ecg(draw_ecg(ecg.millivolts, float(context.ecg_info["sampling_hz"])), "mV")
with labs_tab:
    st.markdown(
        labs_markdown(
            labs_table(context.labs_spec, percentiles, observed, values=np.nan_to_num(raw))
        )
    )
