"""Language-model batches: B parallel token streams read straight from the memory map.

The split's N tokens are cut into B contiguous streams of L = N // B tokens (the tail is dropped).
Batch i holds positions [i*bptt, i*bptt + t) of every stream, t = min(bptt, L - 1 - i*bptt),
and its targets are the same windows shifted by one::

    stream 0: a b c d | e f g h | i j          x = [[a b c d]    y = [[b c d e]
    stream 1: m n o p | q r s t | u v               [m n o p]]        [n o p q]]

so the hidden state at the end of a stream's batch i is the right start for its batch i + 1.

With ``shard=(rank, world)`` the split is cut into B x world streams and a process reads only its own
block of B of them (rows rank*B .. rank*B + B - 1 of the batch one process would read with B x world):
data-parallel ranks share the memory map and never copy it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from seqfit.data.store import TokenArray
from seqfit.errors import SeqfitError

__all__ = ["StreamBatches"]


@dataclass
class StreamBatches:
    tokens: TokenArray
    batch_size: int  # streams this process reads
    bptt: int
    shard: tuple[int, int] = (0, 1)  # (rank, world): this process's block of batch_size x world streams

    def __post_init__(self) -> None:
        rank, world = self.shard
        streams = self.batch_size * world
        self.stream_len = len(self.tokens) // streams
        if self.stream_len < 2:
            raise SeqfitError(f"{len(self.tokens)} tokens are too few for {streams} streams: "
                              "lower --batch-size or add data")
        self.starts = (np.arange(self.batch_size, dtype=np.int64) + rank * self.batch_size) * self.stream_len

    def __len__(self) -> int:
        return -(-(self.stream_len - 1) // self.bptt)

    @property
    def tokens_per_epoch(self) -> int:
        return (self.stream_len - 1) * self.batch_size  # this process's

    def batch(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets of batch i, both (B, t) int64."""
        pos = i * self.bptt
        if pos >= self.stream_len - 1:
            raise IndexError(f"batch {i} out of range (epoch has {len(self)})")
        return self.window(pos, self.bptt)

    def window(self, pos: int, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets of positions [pos, pos + t) of every stream (t: ``steps``, cut at the stream's end)."""
        t = min(steps, self.stream_len - 1 - pos)
        if t <= 0 or pos < 0:
            raise IndexError(f"position {pos} is past the streams' end ({self.stream_len - 1})")
        window = torch.from_numpy(self.tokens.windows(self.starts + pos, t + 1).astype(np.int64))  # (B, t+1)
        return window[:, :-1], window[:, 1:]

    def random_windows(self, rng: np.random.Generator) -> list[tuple[int, int]]:
        """(position, length) windows covering the streams, of random length around bptt (AWD-LSTM's rule:
        bptt, or bptt / 2 one time in twenty, plus normal noise of sd 5; at least 5, at most bptt)."""
        out, pos, end = [], 0, self.stream_len - 1
        while pos < end:
            base = self.bptt if rng.random() < 0.95 else self.bptt / 2
            t = int(min(self.bptt, max(5, round(rng.normal(base, 5)))))
            out.append((pos, min(t, end - pos)))
            pos += t
        return out

    def __iter__(self, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(start, len(self)):
            yield self.batch(i)
