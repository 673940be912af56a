"""What the two on-disk formats' folder types share: an absolute path, and equality by it."""

from __future__ import annotations

import os
from pathlib import Path


class FormatDir:
    """A folder of one of the project's formats (`DatasetDir`, `RunDir`), by absolute path.

    The path is made absolute once, so the object keeps meaning the same folder whatever
    the working directory becomes; two are equal when they resolve to the same folder.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).absolute()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.path.resolve() == other.path.resolve()

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.path.resolve()))

    @property
    def name(self) -> str:
        """The folder's name (how reports and the app label it)."""
        return self.path.resolve().name or str(self.path)
