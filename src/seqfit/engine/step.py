"""One optimizer step of a language model: micro-batches, accumulation, clipping, precision.

A batch of B streams is split into ``accumulate`` micro-batches of B / accumulate streams, each with
its own slice of the carried state. Every micro-batch's summed loss is divided by the token count of
the whole batch, so the accumulated gradient equals that of the whole batch at once.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from seqfit.nn.recurrent import State, detach_state

__all__ = ["StepResult", "lm_train_step", "slice_state", "cat_states", "no_phase"]


@dataclass
class StepResult:
    loss_sum: float  # summed token loss over the batch
    tokens: int  # target tokens in the batch
    state: State  # carried (detached) state for the next batch
    stepped: bool  # False when fp16 found inf/nan gradients and skipped the update


def slice_state(state: State, rows: slice) -> State:
    return [tuple(t[:, rows] for t in s) if isinstance(s, tuple) else s[:, rows] for s in state]


def cat_states(states: list[State]) -> State:
    """Join per-micro-batch states back along the batch dimension (dim 1 of (directions, B, H))."""
    joined = []
    for layer in zip(*states):
        if isinstance(layer[0], tuple):
            joined.append(tuple(torch.cat(parts, dim=1) for parts in zip(*layer)))
        else:
            joined.append(torch.cat(layer, dim=1))
    return joined


def no_phase(name: str) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


def lm_train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, state: State, *, accumulate: int,
                  precision, optimizer: torch.optim.Optimizer, clip: float,
                  phase: Callable[[str], contextlib.AbstractContextManager] = no_phase) -> StepResult:
    """x, y (B, T) ids; state for B streams. Returns the summed loss and the detached next state.

    ``phase(name)`` wraps the forward, loss, backward and optimizer parts (a profiler's hook).
    """
    optimizer.zero_grad(set_to_none=True)
    batch = x.shape[0]
    if batch % accumulate:
        raise ValueError(f"batch of {batch} streams does not split into {accumulate} micro-batches")
    micro = batch // accumulate
    tokens = y.numel()
    loss_sum = 0.0
    states: list[State] = []
    for k in range(accumulate):
        rows = slice(k * micro, (k + 1) * micro)
        with phase("forward"), precision.autocast():
            feats, s = model.features(x[rows], slice_state(state, rows))  # (b, T, H)
        with phase("loss"), precision.autocast():
            loss = model.head.loss(feats.reshape(-1, feats.shape[-1]), y[rows].reshape(-1))
        with phase("backward"):
            precision.backward(loss / tokens)
        loss_sum += loss.item()
        states.append(detach_state(s))
        del loss, feats  # frees this micro-batch's graph before the next one is built
    with phase("optimizer"):
        precision.unscale_(optimizer)
        if clip > 0:
            nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], clip)
        stepped = precision.step(optimizer)
    return StepResult(loss_sum, tokens, cat_states(states) if accumulate > 1 else states[0], stepped)
