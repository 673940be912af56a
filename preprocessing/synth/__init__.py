"""Synthetic cohort written in MIMIC's own file formats and layouts.

``generate_cohort(SynthConfig(out=..., admissions=...)) -> SynthSummary`` is the entry
point; the names load lazily so that ``preprocessing.commands.synth`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from preprocessing.errors import SynthError
    from preprocessing.synth.config import SynthConfig, SynthSummary
    from preprocessing.synth.generate import generate_cohort

__all__ = ["SynthConfig", "SynthError", "SynthSummary", "generate_cohort"]


def __getattr__(name: str) -> Any:
    if name in ("SynthConfig", "SynthSummary"):
        from preprocessing.synth import config

        return getattr(config, name)
    if name == "SynthError":
        from preprocessing.errors import SynthError

        return SynthError
    if name == "generate_cohort":
        from preprocessing.synth.generate import generate_cohort

        return generate_cohort
    raise AttributeError(f"module 'preprocessing.synth' has no attribute {name!r}")
