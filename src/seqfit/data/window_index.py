"""Where forecast windows can start in a split of many series stored back to back: index arithmetic only.

Series i holds rows offsets[i]:offsets[i+1] of the split. A window of ``span`` rows (lookback + horizon)
starting every ``stride`` rows of a series must end inside it, so series i has

    counts[i] = (n_i - span) // stride + 1     windows (0 when n_i < span)

starting at offsets[i], offsets[i] + stride, ... Numbering the windows of the whole split 0 .. count-1,
series by series, window k lies in series i = the last one with first[i] <= k (first = the running sum of
counts), and starts at row offsets[i] + (k - first[i]) * stride::

    rows     | series 0 (n_0 rows)          | series 1        | series 2 ...
    windows  | 0 1 2 ... counts[0]-1 . . .  | first[1] ...    |
                                  ^ the last span-1 rows of a series start no window

So no window spans two series, and memory is two int64 arrays of one entry per series.
"""

from __future__ import annotations

import numpy as np

__all__ = ["WindowIndex"]


class WindowIndex:
    def __init__(self, offsets, span: int, stride: int = 1):
        if span < 1 or stride < 1:
            raise ValueError(f"span {span} and stride {stride} must be >= 1")
        self.offsets = np.asarray(offsets, dtype=np.int64)  # (S + 1,)
        self.span, self.stride = span, stride
        self.lengths = np.diff(self.offsets)  # (S,) rows of each series
        self.counts = np.where(self.lengths >= span, (self.lengths - span) // stride + 1, 0)  # (S,)
        self.first = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)  # (S + 1,)
        self.count = int(self.first[-1])

    def __len__(self) -> int:
        return self.count

    def series_of(self, k) -> np.ndarray:
        """The series (index) of each window number k."""
        return np.searchsorted(self.first, np.asarray(k, dtype=np.int64), side="right") - 1  # skips empty series

    def starts(self, k) -> np.ndarray:
        """Start rows (int64, split-wide) of window numbers k (0 <= k < count)."""
        k = np.asarray(k, dtype=np.int64)
        if k.size and (k.min() < 0 or k.max() >= self.count):
            raise IndexError(f"window numbers outside 0..{self.count - 1}")
        i = self.series_of(k)
        return self.offsets[i] + (k - self.first[i]) * self.stride

    def all_starts(self) -> np.ndarray:
        """Every window's start, in order (O(count) memory: for strided evaluation windows, not training)."""
        return self.starts(np.arange(self.count, dtype=np.int64))
