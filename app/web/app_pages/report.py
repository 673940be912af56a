"""The run's evaluation report (symile_clinical.evaluation.report's Markdown and its plots).

The report on disk names folders and checkpoints by their paths; the page shows runs and
datasets by name (app.web.markdown.without_server_paths).
"""

from __future__ import annotations

import json
import re

import streamlit as st

from app.web import views
from app.web.markdown import path_name, without_server_paths

IMAGE = re.compile(r"!\[(?P<alt>[^\]]*)\]\((?P<src>[^)\s]+)\)")

context = views.current_context()
st.title("Evaluation report")
report_dir = context.run.run.report_dir
report = context.run.run.report_markdown
run_name = context.run.run_dir.name
views.record_view("report")
if not report.is_file():
    st.info(
        f"No evaluation report for the run {run_name} yet: "
        f"`symile-clinical evaluate --run {run_name}` (in the runs' folder) writes it."
    )
    st.stop()


def known_paths() -> dict[str, str]:
    """Paths the report names (metrics.json's runs, checkpoints, dataset) -> their names."""
    names = {
        str(context.run.run_dir): run_name,
        str(context.dataset.path): context.dataset.path.name,
    }
    try:
        metrics = json.loads((report_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return names
    for value in [
        metrics.get("dataset"),
        *(r.get(k) for r in metrics.get("runs", []) for k in ("run_dir", "checkpoint")),
    ]:
        if isinstance(value, str) and value.startswith("/"):
            names[value] = path_name(value)
    return names


# Markdown images point at files beside report.md, which the browser cannot fetch: the
# text is rendered in pieces and each image is shown from the file.
shown = set()
text = without_server_paths(report.read_text(), known_paths())
cursor = 0
for match in IMAGE.finditer(text):
    st.markdown(text[cursor : match.start()])
    image = (report_dir / match["src"]).resolve()
    if image.is_file() and image.is_relative_to(report_dir.resolve()):
        st.image(str(image), caption=match["alt"] or image.name)
        shown.add(image.name)
    else:
        st.warning(f"missing plot {match['src']}")
    cursor = match.end()
st.markdown(text[cursor:])
others = sorted(p for p in report_dir.glob("*.png") if p.name not in shown)
if others:
    st.subheader("Plots")
    for image in others:
        st.image(str(image), caption=image.name)
