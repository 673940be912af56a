"""The app's one error base: what it cannot serve or accept, naming the path and the reason.

Its subclasses live beside what raises them: `run_context.RunUnavailableError` (a run that
cannot be served) and `uploads.UploadError` (an upload refused). Being a
`SymileClinicalError`, an AppError that ends a command exits with status 1.
"""

from __future__ import annotations

from symile_clinical.errors import SymileClinicalError


class AppError(SymileClinicalError):
    """Something the app cannot serve or accept; `path` names it, `reason` says why."""
