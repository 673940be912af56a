"""Tables the app shows, as Markdown text: one static element each, built from plain
values (no DataFrame or Arrow conversion per page run, no interactive grid in the browser).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pandas as pd


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A small table as Markdown: one text element, built from plain values (no DataFrame
    or Arrow conversion per rerun)."""
    header = "| " + " | ".join(columns) + " |"
    rule = "|" + "---|" * len(columns)
    lines = ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return "\n".join([header, rule, *lines])


def _cell(value: object) -> str:
    """A table cell's text: empty for a missing value, `|` escaped."""
    if value is None or (isinstance(value, float) and value != value):  # None or NaN
        return ""
    return str(value).replace("|", "\\|")


def labs_markdown(table: pd.DataFrame) -> str:
    """A labs table (queries.labs_table) as Markdown: a static table, which the browser
    draws without loading the scripts of st.dataframe's interactive grid."""
    return markdown_table([str(c) for c in table.columns], table.itertuples(index=False))
