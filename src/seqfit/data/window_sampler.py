"""One training epoch of forecast windows, as optimizer-step groups computed on demand.

An epoch has as many draws as the split has windows (WindowIndex.count). Draw p is

    weight "length"   window perm[p] of a LazyPermutation seeded by (seed, epoch): every window once, so a
                      series is drawn in proportion to its windows (its length)
    weight "equal"    a series chosen uniformly among those with a window, then a window uniformly within
                      it, both from hashes of (seed, epoch, p): every series equally often, with replacement

Draws p = j*size .. (j+1)*size - 1 make batch j (size = micro-batch x processes; this process takes every
world-th from its rank, and a last batch smaller than world is dropped), and ``accumulate`` batches make a
group (one optimizer step). Nothing is held per window: group g costs its own starts only, and the same
(seed, epoch) gives the same groups, so a resumed run is bit-exact.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from seqfit.data.shuffle import LazyPermutation, hash64
from seqfit.data.window_index import WindowIndex

__all__ = ["EpochWindows", "WEIGHTS"]

WEIGHTS = ("length", "equal")


class EpochWindows(Sequence):
    def __init__(self, index: WindowIndex, *, seed: int, epoch: int, micro: int, accumulate: int, rank: int = 0,
                 world: int = 1, weight: str = "length"):
        if weight not in WEIGHTS:
            raise ValueError(f"unknown weight {weight!r}")
        self.index, self.epoch, self.micro, self.accumulate = index, epoch, micro, accumulate
        self.rank, self.world = rank, world
        self.weight, n, size = weight, index.count, micro * world
        self.batches = math.ceil(n / size) - (1 if 0 < n % size < world else 0)
        self.groups = math.ceil(self.batches / accumulate)
        self.perm = LazyPermutation(n, [seed, epoch]) if weight == "length" else None
        self.keys = np.random.default_rng([seed, epoch, 1]).integers(0, 2 ** 63, 2, dtype=np.int64).astype(np.uint64)
        self.nonempty = np.flatnonzero(index.counts)  # series with at least one window

    def __len__(self) -> int:
        return self.groups

    def _windows(self, draws: np.ndarray) -> np.ndarray:
        """Window numbers of draws p."""
        if self.perm is not None:
            return self.perm[draws]
        p = draws.astype(np.uint64)
        series = self.nonempty[hash64(p ^ self.keys[0]) % np.uint64(len(self.nonempty))]
        within = hash64(p ^ self.keys[1]) % self.index.counts[series].astype(np.uint64)
        return self.index.first[series] + within.astype(np.int64)

    def __getitem__(self, g):
        """Group g: a list of ``accumulate`` arrays of window starts (a slice: a list of groups)."""
        if isinstance(g, slice):
            return [self[i] for i in range(*g.indices(self.groups))]
        if not -self.groups <= g < self.groups:
            raise IndexError(f"group {g} of {self.groups}")
        g %= self.groups
        n, size, out = self.index.count, self.micro * self.world, []
        for j in range(g * self.accumulate, min((g + 1) * self.accumulate, self.batches)):
            draws = np.arange(j * size, min((j + 1) * size, n), dtype=np.int64)[self.rank::self.world]
            out.append(self.index.starts(self._windows(draws)))
        return out
