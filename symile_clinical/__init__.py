"""symile_clinical: Symile (and pairwise CLIP) for ECG + labs -> chest X-ray retrieval.

The public API, by role (docs/architecture.md has the tree):

- objective: `symile_loss`, `clip_loss` (losses over [B, d] embeddings, global negatives
  under torchrun), `mip_scores`, `clip_scores`, `query_vector` (a query's vector q with
  score = <q, candidate>), `objective_score` (any objective's retrieval score: GRAM,
  TRIANGLE and Gated Symile, which are not inner products, included);
- formats: `DatasetDir`, `RunDir`, `load_run`, `TrainConfig`;
- training: `load_config` (a preset or TOML recipe), `train`;
- search: `CandidateIndex`, `ensure_index`, `IndexConfig`;
- errors: `SymileClinicalError` (exit 1: an input that cannot be used), `UsageError`.

Names load on first use, so that `import symile_clinical.errors` (which preprocessing does)
stays free of torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from symile_clinical.errors import SymileClinicalError, UsageError
    from symile_clinical.formats.dataset_dir import DatasetDir
    from symile_clinical.formats.run_config import TrainConfig
    from symile_clinical.formats.run_dir import RunDir, load_run
    from symile_clinical.objective.losses import clip_loss, symile_loss
    from symile_clinical.objective.scores import objective_score
    from symile_clinical.objective.similarity import clip_scores, mip_scores, query_vector
    from symile_clinical.search.index import CandidateIndex, IndexConfig, ensure_index
    from symile_clinical.training.config import load_config
    from symile_clinical.training.trainer import train

_PUBLIC = {
    "symile_loss": "symile_clinical.objective.losses",
    "clip_loss": "symile_clinical.objective.losses",
    "mip_scores": "symile_clinical.objective.similarity",
    "clip_scores": "symile_clinical.objective.similarity",
    "query_vector": "symile_clinical.objective.similarity",
    "objective_score": "symile_clinical.objective.scores",
    "DatasetDir": "symile_clinical.formats.dataset_dir",
    "RunDir": "symile_clinical.formats.run_dir",
    "load_run": "symile_clinical.formats.run_dir",
    "TrainConfig": "symile_clinical.formats.run_config",
    "load_config": "symile_clinical.training.config",
    "train": "symile_clinical.training.trainer",
    "CandidateIndex": "symile_clinical.search.index",
    "IndexConfig": "symile_clinical.search.index",
    "ensure_index": "symile_clinical.search.index",
    "SymileClinicalError": "symile_clinical.errors",
    "UsageError": "symile_clinical.errors",
}

__all__ = [
    "CandidateIndex",
    "DatasetDir",
    "IndexConfig",
    "RunDir",
    "SymileClinicalError",
    "TrainConfig",
    "UsageError",
    "clip_loss",
    "clip_scores",
    "ensure_index",
    "load_config",
    "load_run",
    "mip_scores",
    "objective_score",
    "query_vector",
    "symile_loss",
    "train",
]


def __getattr__(name: str) -> Any:
    """Load a public name from its module on first use (PEP 562)."""
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'symile_clinical' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    """The public names, for tab completion."""
    return __all__
