"""Shared pytest configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real public sample files (../shared/data); never its holdout/ folder."""
    if not SHARED_DATA.is_dir():
        pytest.fail(
            f"../shared/data not found at {SHARED_DATA}: CI places shared/ beside the clone"
        )
    return SHARED_DATA
