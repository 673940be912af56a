"""The Streamlit script the server runs for each session: the navigation between the pages.

Pages: query by admission, query by upload, the run's evaluation report. Before any of
them, the access gate (app.web.auth.require_viewer): beyond loopback a visitor who has not
signed in sees only the sign-in button, and a user outside the allow-list only the refusal
(recorded in the audit trail). The server itself (warm start, Host check, security
headers, the access rule) is `app/web/streamlit_app.py`.
"""

from __future__ import annotations

import sys
from pathlib import Path

# `streamlit run` puts app/ first on sys.path; the project root must be importable too.
ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from app.web import views  # noqa: E402
from app.web.auth import current_policy, require_viewer  # noqa: E402

st.set_page_config(page_title="Symile clinical retrieval", page_icon="🫀", layout="wide")
viewer = require_viewer(current_policy(views.serve_options()))
st.session_state[views.VIEWER_KEY] = viewer.identity
if not viewer.allowed:
    views.record_view("refused", event="refused")
    st.stop()
PAGES = Path(__file__).resolve().parent / "app_pages"
navigation = st.navigation(
    [
        st.Page(PAGES / "by_admission.py", title="Query by admission", default=True),
        st.Page(PAGES / "by_upload.py", title="Query by upload"),
        st.Page(PAGES / "report.py", title="Evaluation report"),
    ]
)
navigation.run()
