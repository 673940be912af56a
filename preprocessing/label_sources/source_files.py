"""Reading a label-source table: present, with the columns it must have, or a typed error."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from preprocessing.errors import InvalidTable
from preprocessing.mimic_tables import find_table, table_columns


def finding_name(label: str) -> str:
    """`Pleural Effusion` -> `pleural_effusion`: a name inside `<modality>:<name>`."""
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")


def find_source(candidates: Sequence[Path]) -> Path:
    """The first existing file of `candidates` (as shipped, or decompressed without .gz)."""
    for path in candidates:
        found = find_table(path.parent, path.name)
        if found is not None:
            return found
    raise InvalidTable(candidates[0], "not found")


def read_source(path: Path, required: Sequence[str], **read_csv) -> pd.DataFrame:
    """Read a CSV label source, refusing (naming file and column) when a column is missing."""
    try:
        header = table_columns(path)
    except (OSError, ValueError, EOFError) as error:
        raise InvalidTable(path, f"cannot be read ({type(error).__name__}: {error})") from None
    missing = [c for c in required if c not in header]
    if missing:
        raise InvalidTable(path, f"has no column {missing[0]!r} (missing: {', '.join(missing)})")
    try:
        return pd.read_csv(path, **read_csv)
    except (OSError, ValueError, EOFError) as error:
        raise InvalidTable(path, f"cannot be read ({type(error).__name__}: {error})") from None
