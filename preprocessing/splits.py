"""Patient-disjoint train/val/test splits and the seeded evaluation candidate sets.

Splits assign whole subjects (by subject_id), so no patient appears in two splits. Sizes
are targets in admissions, given as fractions or counts: subjects are shuffled with the
seed and taken in that order until val and test reach their target; the rest is train.

For val and test each query admission gets K candidates shown in a seeded random order:
its own CXR plus K-1 CXRs of other patients from the same split (the paper's protocol,
K = 10). A split too small to serve K (a small real cohort) gets fewer candidates, with a
warning; dataset.json records the K of each split and evaluation's chance is 1/K.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from preprocessing.errors import InvalidSettings

log = logging.getLogger(__name__)

EVAL_SPLITS = ("val", "test")


@dataclass(frozen=True)
class SplitSizes:
    """Val and test sizes: fractions of admissions (< 1) or admission counts (>= 1)."""

    val: float = 0.15
    test: float = 0.15

    def targets(self, total: int) -> tuple[int, int]:
        """(val, test) admission counts for a cohort of `total` admissions."""

        def count(size: float) -> int:
            return round(size * total) if size < 1 else int(size)

        val, test = count(self.val), count(self.test)
        if val + test > total:
            raise ValueError(f"val {val} + test {test} exceed the {total} admissions available")
        return val, test


def assign_splits(subject_ids: np.ndarray, sizes: SplitSizes, seed: int) -> np.ndarray:
    """Split name per admission (object [N]); subjects shuffled with `seed`, never shared.

    Test is filled first, then val, each up to its admission target (a subject whose
    admissions would overshoot by more than half of them goes to the next split).
    """
    subject_ids = np.asarray(subject_ids, dtype=np.int64)
    subjects, counts = np.unique(subject_ids, return_counts=True)
    order = np.random.default_rng(seed).permutation(subjects.size)
    val_target, test_target = sizes.targets(subject_ids.size)
    subject_split = np.full(subjects.size, "train", dtype=object)
    filled = {"test": 0, "val": 0}
    targets = {"test": test_target, "val": val_target}
    current = iter(("test", "val"))
    name = next(current, None)
    for index in order:
        while name is not None and filled[name] >= targets[name]:
            name = next(current, None)
        if name is None:
            break
        if filled[name] + counts[index] - targets[name] > counts[index] / 2:
            continue  # this subject overshoots: leave it for train
        subject_split[index] = name
        filled[name] += counts[index]
    lookup = dict(zip(subjects.tolist(), subject_split.tolist(), strict=True))
    return np.array([lookup[s] for s in subject_ids.tolist()], dtype=object)


def candidate_sets(
    subject_ids: np.ndarray, k: int, rng: np.random.Generator, split: str
) -> pd.DataFrame:
    """Candidate sets for one split (rows 0..N-1 with the given subjects), long format.

    Columns: split, query_row, position, candidate_row, is_true. Each query's K candidates
    are itself plus K-1 distinct rows of other subjects, shuffled into display order.
    """
    subject_ids = np.asarray(subject_ids, dtype=np.int64)
    n = subject_ids.size
    columns = {"split": [], "query_row": [], "position": [], "candidate_row": [], "is_true": []}
    if n == 0:
        return _candidate_frame(columns)
    _, counts = np.unique(subject_ids, return_counts=True)
    if n - counts.max() < k - 1:
        raise InvalidSettings(
            "--candidates",
            f"split {split!r} has {n} admissions; some query has fewer than {k - 1} "
            "admissions of other patients to serve as candidates: lower --candidates or "
            "raise the --val/--test sizes",
        )
    query_rows, candidate_rows = [], []
    for query in range(n):
        others: list[int] = []
        seen = {query}
        # Rejection sampling: draws of the same patient or repeats are skipped.
        while len(others) < k - 1:
            for row in rng.integers(0, n, size=2 * k).tolist():
                if row not in seen and subject_ids[row] != subject_ids[query]:
                    seen.add(row)
                    others.append(row)
                    if len(others) == k - 1:
                        break
        chosen = np.array([query, *others], dtype=np.int64)[rng.permutation(k)]
        query_rows.append(np.full(k, query, dtype=np.int64))
        candidate_rows.append(chosen)
    query_all = np.concatenate(query_rows)
    candidate_all = np.concatenate(candidate_rows)
    return pd.DataFrame(
        {
            "split": np.full(query_all.size, split, dtype=object),
            "query_row": query_all,
            "position": np.tile(np.arange(k, dtype=np.int64), n),
            "candidate_row": candidate_all,
            "is_true": candidate_all == query_all,
        }
    )


def _candidate_frame(columns: dict) -> pd.DataFrame:
    """Empty candidates frame with the contract's dtypes."""
    return pd.DataFrame(
        {
            "split": pd.Series(columns["split"], dtype=object),
            "query_row": pd.Series(columns["query_row"], dtype="int64"),
            "position": pd.Series(columns["position"], dtype="int64"),
            "candidate_row": pd.Series(columns["candidate_row"], dtype="int64"),
            "is_true": pd.Series(columns["is_true"], dtype=bool),
        }
    )


def servable_candidates(subject_ids: np.ndarray, k: int) -> int:
    """The most candidates (<= k) every query of a split can get: 1 + the fewest admissions
    of other patients any query has; 0 for an empty split."""
    subject_ids = np.asarray(subject_ids, dtype=np.int64)
    if subject_ids.size == 0:
        return 0
    _, counts = np.unique(subject_ids, return_counts=True)
    return int(min(k, subject_ids.size - counts.max() + 1))


def candidates_per_split(
    subjects_by_split: dict[str, np.ndarray], k: int, warn: bool = True
) -> dict[str, int]:
    """K per evaluation split: `k`, or fewer where a small split cannot serve it (warned).

    A split that cannot give every query even one other patient's CXR (fewer than 2
    candidates) is refused with the sizes that would work.
    """
    per_split = {}
    for split in EVAL_SPLITS:
        subjects = np.asarray(subjects_by_split.get(split, np.array([])), dtype=np.int64)
        servable = servable_candidates(subjects, k)
        if subjects.size and servable < 2:
            patients = np.unique(subjects).size
            raise InvalidSettings(
                f"--{split}",
                f"split {split!r} holds {subjects.size} admissions of {patients} patient(s): "
                f"no query has a candidate of another patient; give --{split} at least "
                f"{subjects.size + 1} admissions (or a larger fraction)",
            )
        if warn and subjects.size and servable < k:
            log.warning(
                "split %r (%d admissions) can serve %d candidates per query, not "
                "--candidates %d: using %d (chance %.1f%%)",
                split,
                subjects.size,
                servable,
                k,
                servable,
                100.0 / servable,
            )
        per_split[split] = servable if subjects.size else k
    return per_split


def all_candidate_sets(
    subjects_by_split: dict[str, np.ndarray], k: int | dict[str, int], seed: int
) -> pd.DataFrame:
    """Candidate sets of val then test, each from its own generator derived from `seed`.

    `k` is one K for both splits or a K per split (`candidates_per_split`).
    """
    frames = []
    for offset, split in enumerate(EVAL_SPLITS):
        rng = np.random.default_rng([seed, 1 + offset])
        k_split = k[split] if isinstance(k, dict) else k
        frames.append(
            candidate_sets(subjects_by_split.get(split, np.array([])), k_split, rng, split)
        )
    return pd.concat(frames, ignore_index=True)
