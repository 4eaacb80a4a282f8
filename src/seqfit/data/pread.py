"""Positioned reads (os.pread) of an array stored in shard files: random windows without resident file pages.

A forecaster reads short windows at random places of a large store. Read through a memory map, each window
faults its pages in, and the kernel maps its neighbours too (fault-around, 64 KB by default, from the page
cache): resident memory grows with every new place read, up to the store's size. Measured on the 0.8 GB
store of benchmarks/bench_forecast_scale.py: 9,600 random windows of 536 rows x 4 float16 (4 KB each) left
435 MB of file pages resident, with madvise(MADV_RANDOM) too. A positioned read copies the window's bytes
and maps nothing, so resident memory stays flat however large the store (the page cache still holds what
was read, which the kernel drops at will and no process is charged for).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from seqfit.errors import SeqfitError

__all__ = ["ShardReader"]


class ShardReader:
    """Elements [start, start + n) of an array split over ``paths`` holding ``counts`` elements each."""

    def __init__(self, paths: list[Path], counts: list[int], dtype):
        self.dtype = np.dtype(dtype)
        self.paths = [Path(p) for p in paths]
        self.bounds = np.cumsum([0] + list(counts))  # shard k holds [bounds[k], bounds[k+1])
        self._fds: list[int] | None = None

    def __len__(self) -> int:
        return int(self.bounds[-1])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fds": None}  # a process opens its own descriptors

    def __del__(self) -> None:
        for fd in self._fds or ():
            os.close(fd)

    def read(self, start: int, n: int) -> np.ndarray:
        if start < 0 or n < 0 or start + n > len(self):
            raise IndexError(f"read [{start}, {start + n}) outside 0..{len(self)}")
        if self._fds is None:
            self._fds = [os.open(p, os.O_RDONLY) for p in self.paths]
        size, pieces, pos, end = self.dtype.itemsize, [], start, start + n
        while pos < end:
            k = int(np.searchsorted(self.bounds, pos, side="right")) - 1
            stop = min(end, int(self.bounds[k + 1]))
            want = (stop - pos) * size
            data = os.pread(self._fds[k], want, (pos - int(self.bounds[k])) * size)
            if len(data) != want:
                raise SeqfitError(f"{self.paths[k]} is shorter than its meta.json says (truncated since opened?); "
                                  "re-run `seqfit prepare`")
            pieces.append(data)
            pos = stop
        return np.frombuffer(b"".join(pieces), dtype=self.dtype)
