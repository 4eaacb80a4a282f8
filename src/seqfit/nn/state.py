"""A recurrent stack's carried state: one entry per layer, ``(h, c)`` for an LSTM or ``h`` otherwise,
each shaped (directions, B, H)."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["State", "detach_state", "reset_streams"]

State = list[Any]


def detach_state(state: State | None) -> State | None:
    """Cut the graph at a truncated-BPTT boundary while keeping the values."""
    if state is None:
        return None
    return [tuple(t.detach() for t in s) if isinstance(s, tuple) else s.detach() for s in state]


def reset_streams(state: State, p: float, *, seed: int, step: int, shard: tuple[int, int] = (0, 1)) -> State:
    """Each stream's (batch row's) state set to zero with probability ``p``, the rows drawn from (seed, step)
    alone: a resumed run draws the same rows, and the global RNG (dropout) is untouched. With
    ``shard=(rank, world)`` the state holds block ``rank`` of world x B streams, drawn as one process would.

    Truncated BPTT carries the state from batch to batch, so without this a language model starts from a
    zero state only at step 0 and at epoch boundaries, while evaluation and generation always start there.
    """
    if p <= 0 or not state:
        return state
    first = state[0][0] if isinstance(state[0], tuple) else state[0]  # (directions, B, H)
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    rank, world = shard
    b = first.shape[1]
    draws = torch.rand(b * world, generator=g)[rank * b:(rank + 1) * b]
    keep = (draws >= p).to(first.device, first.dtype).view(1, -1, 1)
    return [tuple(t * keep for t in s) if isinstance(s, tuple) else s * keep for s in state]
