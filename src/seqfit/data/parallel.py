"""An ordered parallel map with a bounded number of tasks in flight.

Results come back in submission order (so parallel output is byte-identical to serial), and at most
``2 * workers`` chunks are pending at a time, so a slow writer never lets results pile up in memory.
Workers are spawned (not forked): the parent may hold threads (Arrow, tokenizers) that fork would copy
in a locked state. With ``workers <= 1`` the same functions run in this process.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections import deque
from typing import Callable, Iterable, Iterator, TypeVar

__all__ = ["ordered_map", "default_workers"]

T = TypeVar("T")
R = TypeVar("R")


def default_workers(total_bytes: int, *, threshold: int = 64 << 20) -> int:
    """One process for small inputs (spawning costs about a second); every core for large ones."""
    if total_bytes < threshold:
        return 1
    return max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 8))


def ordered_map(fn: Callable[[T], R], items: Iterable[T], *, workers: int, initializer: Callable,
                initargs: tuple = ()) -> Iterator[tuple[T, R]]:
    """(item, fn(item)) for every item, in order; ``initializer(*initargs)`` runs once per worker."""
    if workers <= 1:
        initializer(*initargs)
        for item in items:
            yield item, fn(item)
        return
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers, initializer, initargs) as pool:
        pending: deque = deque()
        for item in items:
            pending.append((item, pool.apply_async(fn, (item,))))
            if len(pending) >= 2 * workers:
                done, result = pending.popleft()
                yield done, result.get()
        while pending:
            done, result = pending.popleft()
            yield done, result.get()
