"""The batching half of a task whose samples are independent sequences in length-bucketed batches
(engine.classify, engine.seq2seq): a TokenBudgetSampler cuts each epoch into batches, ``accumulate`` of
them make an optimizer step, and under data parallelism rank r takes rows r, r + world, ... of every batch
(rows are length-sorted inside a batch, so the ranks' shares are balanced)."""

from __future__ import annotations

import math

import numpy as np

from seqfit.data.buckets import TokenBudgetSampler
from seqfit.engine.distributed import Dist

__all__ = ["BucketedBatches"]


class BucketedBatches:
    """Mixin: the task sets ``sampler`` (shuffled, every rank's rows), ``plan`` and ``dist``, and says how to make
    the same batches unshuffled (``fixed_sampler``) for the memory probe."""

    sampler: TokenBudgetSampler
    plan: dict
    dist: Dist
    _epoch_groups: tuple[int, list] | None = None

    def fixed_sampler(self) -> TokenBudgetSampler:
        raise NotImplementedError

    def steps_per_epoch(self) -> int:
        if self.dist.enabled:  # batches too small to split over the ranks are left out: count what is left
            return len(self.epoch_groups(0))
        return math.ceil(len(self.sampler) / self.plan["accumulate"])

    def epoch_groups(self, epoch: int) -> list[list[np.ndarray]]:
        """The epoch's shuffled batches (this rank's share of each), ``accumulate`` to a step."""
        if self._epoch_groups is None or self._epoch_groups[0] != epoch:
            self.sampler.set_epoch(epoch)
            batches, n = self.share(self.sampler.batches()), self.plan["accumulate"]
            self._epoch_groups = (epoch, [batches[i:i + n] for i in range(0, len(batches), n)])
        return self._epoch_groups[1]

    def share(self, batches: list[np.ndarray]) -> list[np.ndarray]:
        """Rows rank, rank + world, ... of every batch with a row for each rank."""
        rank, world = self.dist.rank, self.dist.world
        return batches if world == 1 else [b[rank::world] for b in batches if len(b) >= world]

    def probe_group(self, step: int) -> list[np.ndarray]:
        """The training batches (one accumulation group) with the most padded cells: where memory peaks."""
        keys = self.sampler.lengths  # what the sampler buckets and budgets by
        batches = sorted(self.share(self.fixed_sampler().batches()), key=lambda b: len(b) * int(keys[b].max()),
                         reverse=True)
        return batches[:self.plan["accumulate"]]
