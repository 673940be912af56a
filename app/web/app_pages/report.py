"""The run's evaluation report (symile_clinical.evaluation.report's Markdown and its plots)."""

from __future__ import annotations

import re

import streamlit as st

from app.web import views

IMAGE = re.compile(r"!\[(?P<alt>[^\]]*)\]\((?P<src>[^)\s]+)\)")

context = views.current_context()
st.title("Evaluation report")
report_dir = context.run.run.report_dir
report = context.run.run.report_markdown
if not report.is_file():
    st.info(
        f"No evaluation report in {report_dir}: run "
        f"`symile-clinical evaluate --run {context.run.run_dir}` to write it."
    )
    st.stop()

# Markdown images point at files beside report.md, which the browser cannot fetch: the
# text is rendered in pieces and each image is shown from the file.
shown = set()
text = report.read_text()
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
