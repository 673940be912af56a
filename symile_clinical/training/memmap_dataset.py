"""The training data: a dataset split as a torch Dataset over its memmapped arrays.

The dataset directory itself (file names, dataset.json, splits, candidates) is
`symile_clinical.formats.dataset_dir`; this module only adapts a split to torch's DataLoader.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from symile_clinical.formats.dataset_dir import DatasetDir, SplitArrays


class MemmapDataset(Dataset):
    """A split as a torch Dataset of dicts {"ecg", "labs", "labs_observed", "cxr", "row"}.

    ecg float32 [12, T], labs float32 [L], labs_observed float32 [L] (1 = observed), cxr
    float32 [1, S, S] in [0, 1], row int64 scalar. The memmaps are opened lazily in each
    process, so DataLoader workers share the page cache rather than pickled copies.
    """

    def __init__(self, dataset_dir: Path | str | DatasetDir, split: str) -> None:
        self.dataset = (
            dataset_dir if isinstance(dataset_dir, DatasetDir) else DatasetDir(dataset_dir)
        )
        self.split = split
        self._arrays: SplitArrays | None = SplitArrays(self.dataset, split)
        self._length = len(self._arrays)

    @property
    def arrays(self) -> SplitArrays:
        """The split's memmaps, opened in this process on first use."""
        if self._arrays is None:
            self._arrays = SplitArrays(self.dataset, self.split)
        return self._arrays

    def __getstate__(self) -> dict[str, Any]:
        # A pickled np.memmap carries its whole contents; workers reopen the files instead.
        state = dict(self.__dict__)
        state["_arrays"] = None
        return state

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {
            key: torch.from_numpy(np.asarray(value))
            for key, value in self.arrays.row(index).items()
        }
