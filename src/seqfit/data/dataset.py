"""A torch Dataset over a sequence store for DataLoader worker processes.

Each process (the main one and every DataLoader worker) opens its own memory maps on first use:
the dataset pickles only the directory and split name, so workers never share or copy mapped pages.
Pair it with TokenBudgetSampler as the ``sampler`` and ``batch_size=None``: the dataset then gets the
whole list of indices and returns the padded batch, built in the worker::

    ds = SequenceDataset(data_dir, "train")
    sampler = TokenBudgetSampler(ds.lengths, max_tokens=4096, seed=1)
    loader = DataLoader(ds, sampler=sampler, batch_size=None, num_workers=2)
    for x, lengths, labels in loader: ...      # (B, T), (B,), (B,)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from seqfit.data.sequences import SequenceSplit, SequenceStore

__all__ = ["SequenceDataset"]


class SequenceDataset(torch.utils.data.Dataset):
    def __init__(self, data_dir: str | Path, split: str):
        self.dir, self.name = Path(data_dir), split
        opened = SequenceStore(self.dir).split(split)  # checks the files now, in the parent
        self.count = len(opened)
        self._lengths = np.asarray(opened.lengths)
        self._split: SequenceSplit | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_split": None}  # never pickle memory maps: each worker maps its own

    @property
    def split(self) -> SequenceSplit:
        if self._split is None:
            self._split = SequenceStore(self.dir).split(self.name)
        return self._split

    @property
    def lengths(self) -> np.ndarray:
        return self._lengths

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, indices) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if isinstance(indices, (int, np.integer)):
            indices = [int(indices)]
        return self.split.batch(indices)
