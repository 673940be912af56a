"""Reading a label-source table: present, with the columns it must have, or a typed error."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from preprocessing.errors import InvalidTable


def find_source(candidates: Sequence[Path]) -> Path:
    """The first existing file of `candidates` (as shipped, or decompressed without .gz)."""
    for path in candidates:
        for option in (path, path.with_name(path.name.removesuffix(".gz"))):
            if option.is_file():
                return option
    raise InvalidTable(candidates[0], "not found")


def read_source(path: Path, required: Sequence[str], **read_csv) -> pd.DataFrame:
    """Read a CSV label source, refusing (naming file and column) when a column is missing."""
    try:
        header = pd.read_csv(path, nrows=0).columns
    except (OSError, ValueError, EOFError) as error:
        raise InvalidTable(path, f"cannot be read ({type(error).__name__}: {error})") from None
    missing = [c for c in required if c not in header]
    if missing:
        raise InvalidTable(path, f"has no column {missing[0]!r} (missing: {', '.join(missing)})")
    try:
        return pd.read_csv(path, **read_csv)
    except (OSError, ValueError, EOFError) as error:
        raise InvalidTable(path, f"cannot be read ({type(error).__name__}: {error})") from None
