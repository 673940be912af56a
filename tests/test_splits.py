"""Patient-disjoint splits and seeded candidate sets."""

from __future__ import annotations

import numpy as np
import pytest

from preprocessing.errors import InvalidSettings
from preprocessing.splits import SplitSizes, all_candidate_sets, assign_splits, candidate_sets


def cohort_subjects(n_subjects: int = 300, seed: int = 0) -> np.ndarray:
    """Subject id per admission; some patients have several admissions."""
    rng = np.random.default_rng(seed)
    return np.repeat(np.arange(1000, 1000 + n_subjects), rng.integers(1, 4, n_subjects))


def test_no_patient_in_two_splits_and_sizes_close() -> None:
    subjects = cohort_subjects()
    split = assign_splits(subjects, SplitSizes(0.15, 0.15), seed=0)
    for name in ("train", "val", "test"):
        for other in ("train", "val", "test"):
            if name < other:
                assert not set(subjects[split == name]) & set(subjects[split == other])
    for name in ("val", "test"):
        assert abs((split == name).sum() - 0.15 * subjects.size) <= 2


def test_counts_and_seed_reproducible() -> None:
    subjects = cohort_subjects()
    a = assign_splits(subjects, SplitSizes(60, 40), seed=3)
    b = assign_splits(subjects, SplitSizes(60, 40), seed=3)
    c = assign_splits(subjects, SplitSizes(60, 40), seed=4)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    assert abs((a == "val").sum() - 60) <= 2 and abs((a == "test").sum() - 40) <= 2


def test_sizes_too_large_rejected() -> None:
    with pytest.raises(ValueError):
        SplitSizes(80, 40).targets(100)


def test_candidate_sets_follow_the_protocol() -> None:
    subjects = cohort_subjects(60)
    frame = candidate_sets(subjects, 10, np.random.default_rng(0), "val")
    assert len(frame) == 10 * subjects.size
    for query, group in frame.groupby("query_row"):
        assert list(group["position"]) == list(range(10))
        assert group["is_true"].sum() == 1
        assert group.loc[group["is_true"], "candidate_row"].item() == query
        others = group.loc[~group["is_true"], "candidate_row"].to_numpy()
        assert len(set(others)) == 9
        assert not (subjects[others] == subjects[query]).any()
    # The true candidate is not always shown first.
    assert frame.loc[frame["is_true"], "position"].nunique() > 5


def test_candidate_sets_reproducible_from_seed() -> None:
    subjects = {"val": cohort_subjects(40, 1), "test": cohort_subjects(40, 2)}
    a = all_candidate_sets(subjects, 10, seed=7)
    b = all_candidate_sets(subjects, 10, seed=7)
    c = all_candidate_sets(subjects, 10, seed=8)
    assert a.equals(b) and not a.equals(c)
    assert set(a["split"]) == {"val", "test"}


def test_too_small_split_rejected() -> None:
    with pytest.raises(InvalidSettings, match="fewer than 9"):
        candidate_sets(np.array([1, 1, 2, 3]), 10, np.random.default_rng(0), "test")
