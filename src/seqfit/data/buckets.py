"""Length-bucketed batches under a token budget, so padding costs little and batch memory is bounded.

Each epoch: shuffle the indices, cut them into pools of ``pool`` samples, sort each pool by length,
and cut it greedily into batches whose padded size B x max_len stays within ``max_tokens`` (and B
within ``batch_size``, if given); then shuffle the batches. Similar lengths share a batch, while the
pools keep the epoch random::

    pool (sorted):  3 3 4 4 4 5 | 7 8 8 | 12 13      max_tokens = 24
    batches:        [3 3 4 4 4] (5x4=20)  [5 7 8] (3x8=24)  [8 12] ... then shuffled

A sequence longer than ``max_tokens`` forms a batch of its own (it cannot be split). With
``shuffle=False`` the order is fixed: all samples sorted by length (evaluation). As with torch's
DistributedSampler, call ``set_epoch(e)`` before each epoch for a new order.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

__all__ = ["TokenBudgetSampler", "padding_waste"]


def padding_waste(lengths: np.ndarray, batches: list[np.ndarray]) -> float:
    """Share of the padded B x T cells that are padding."""
    padded = sum(len(b) * int(lengths[b].max()) for b in batches if len(b))
    real = sum(int(lengths[b].sum()) for b in batches)
    return 1.0 - real / padded if padded else 0.0


class TokenBudgetSampler:
    """Yields lists of sample indices; use as a DataLoader ``sampler`` with ``batch_size=None``
    (the dataset then receives the whole list), or call ``split.batch(indices)`` directly."""

    def __init__(self, lengths, max_tokens: int = 0, *, batch_size: int = 0, shuffle: bool = True, seed: int = 0,
                 pool: int = 0):
        self.lengths = np.asarray(lengths, dtype=np.int64)
        if max_tokens <= 0 and batch_size <= 0:
            raise ValueError("give max_tokens (a padded tokens-per-batch budget) or batch_size, or both")
        self.max_tokens, self.batch_size, self.shuffle, self.seed = max_tokens, batch_size, shuffle, seed
        if pool <= 0:  # about 50 batches' worth of samples per sorted pool
            per_batch = batch_size or max(1, max_tokens // max(1, int(np.median(self.lengths)) if len(self.lengths) else 1))
            pool = 50 * per_batch
        self.pool = pool
        self.epoch = 0
        self.position = 0  # batches of this epoch already yielded (for resume)
        self._cache: tuple[int, list[np.ndarray]] | None = None

    def _cut(self, order: np.ndarray) -> list[np.ndarray]:
        """Greedy batches of ``order`` (sorted by length) under the budget."""
        batches, start = [], 0
        lengths = self.lengths[order]
        n = len(order)
        while start < n:
            end = start + 1
            longest = lengths[start]
            while end < n:
                longest_next = max(longest, lengths[end])
                size = end - start + 1
                if self.batch_size and size > self.batch_size:
                    break
                if self.max_tokens and size * longest_next > self.max_tokens:
                    break
                longest = longest_next
                end += 1
            batches.append(order[start:end])
            start = end
        return batches

    def batches(self) -> list[np.ndarray]:
        """This epoch's batches (cached), a pure function of (seed, epoch)."""
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        if not self.shuffle:
            batches = self._cut(np.argsort(self.lengths, kind="stable"))
        else:
            rng = np.random.default_rng([self.seed, self.epoch])
            perm = rng.permutation(len(self.lengths))
            batches = []
            for lo in range(0, len(perm), self.pool):
                part = perm[lo:lo + self.pool]
                batches += self._cut(part[np.argsort(self.lengths[part], kind="stable")])
            batches = [batches[i] for i in rng.permutation(len(batches))]
        self._cache = (self.epoch, batches)
        return batches

    def __len__(self) -> int:
        return len(self.batches())

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.batches()
        while self.position < len(batches):
            b = batches[self.position]
            self.position += 1
            yield b.tolist()
        self.position = 0  # as torch's DistributedSampler: the caller moves on with set_epoch(e)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def padding_waste(self) -> float:
        """Share of this epoch's padded B x T cells that are padding."""
        return padding_waste(self.lengths, self.batches())

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.seed, self.epoch, self.position = state["seed"], state["epoch"], state["position"]
        self._cache = None
