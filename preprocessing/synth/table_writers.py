"""Write CSV tables the way the releases ship them, reproducibly (gzip mtime 0) and atomically."""

from __future__ import annotations

import gzip
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import pandas as pd

from symile_clinical.formats.atomic import atomic_path


class CsvWriter:
    """Append DataFrames to one CSV (gzip-compressed if the name ends in .gz), header once."""

    def __init__(self, fh: BinaryIO, columns: Sequence[str], gz: bool) -> None:
        self._columns = list(columns)
        # filename="" and mtime=0 keep the gzip header free of names and clocks.
        self._stream: BinaryIO = (
            gzip.GzipFile(filename="", mode="wb", fileobj=fh, mtime=0, compresslevel=6)
            if gz
            else fh
        )
        self._gz = gz
        self._stream.write((",".join(self._columns) + "\n").encode())

    def write(self, frame: pd.DataFrame) -> None:
        """Append rows (columns in the declared order)."""
        if len(frame):
            text = frame[self._columns].to_csv(index=False, header=False, lineterminator="\n")
            self._stream.write(text.encode())

    def close(self) -> None:
        """Finish the gzip member (the underlying file is closed by its owner)."""
        if self._gz:
            self._stream.close()


@contextmanager
def csv_table(path: Path, columns: Sequence[str]) -> Iterator[CsvWriter]:
    """Stream a table to `path` atomically; gzip when the name ends in .gz."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        writer = CsvWriter(fh, columns, gz=path.name.endswith(".gz"))
        yield writer
        writer.close()


def write_table(path: Path, frame: pd.DataFrame, columns: Sequence[str]) -> None:
    """Write a whole table at once (see csv_table)."""
    with csv_table(path, columns) as writer:
        writer.write(frame)
