"""A recurrent stack's carried state: one entry per layer, ``(h, c)`` for an LSTM or ``h`` otherwise,
each shaped (directions, B, H)."""

from __future__ import annotations

from typing import Any

__all__ = ["State", "detach_state"]

State = list[Any]


def detach_state(state: State | None) -> State | None:
    """Cut the graph at a truncated-BPTT boundary while keeping the values."""
    if state is None:
        return None
    return [tuple(t.detach() for t in s) if isinstance(s, tuple) else s.detach() for s in state]
