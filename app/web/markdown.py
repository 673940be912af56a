"""Tables the app shows, as Markdown text: one static element each, built from plain
values (no DataFrame or Arrow conversion per page run, no interactive grid in the browser).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import PurePosixPath

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


# An absolute POSIX path where a path can start (line start, space, quote, backtick,
# parenthesis, '='): not the '/' of '5/10' or 'and/or'.
_ABSOLUTE_PATH = re.compile(r"(?<![\w./~-])/[\w.~+@%-]+(?:/[\w.~+@%-]*)*")


def path_name(path: str) -> str:
    """What a page shows for a server path: its last part (a run or dataset folder's
    name), with RUN/checkpoints/ kept before a checkpoint file."""
    parts = PurePosixPath(path.rstrip("/")).parts
    if len(parts) >= 3 and parts[-2] == "checkpoints":
        return "/".join(parts[-3:])
    return parts[-1] if len(parts) > 1 else path


def without_server_paths(text: str, known: Mapping[str, str] | None = None) -> str:
    """`text` with every absolute path replaced by a name: first the `known` paths (path ->
    name, longest first, so paths with spaces go whole), then any other by path_name."""
    for path, name in sorted((known or {}).items(), key=lambda item: -len(item[0])):
        if path:
            text = text.replace(path, name)
    return _ABSOLUTE_PATH.sub(lambda match: path_name(match.group(0)), text)
