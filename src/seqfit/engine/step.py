"""One optimizer step, for every task: micro-batches, accumulation, precision, clipping.

Every micro-batch's summed loss is divided by the task's denominator for the whole step (its tokens
or sequences), so the accumulated gradient equals that of the whole batch at once.
"""

from __future__ import annotations

import torch
from torch import nn

from seqfit.engine.task import Phase, Task, add_stats, no_phase

__all__ = ["train_step"]


def train_step(task: Task, model: nn.Module, group, *, precision, optimizer: torch.optim.Optimizer, clip: float,
               phase: Phase = no_phase) -> dict[str, float]:
    """Train on ``group`` (one entry of task.epoch_groups); returns the step's summed statistics and
    "stepped" (False when fp16 found inf/nan gradients and skipped the update)."""
    with phase("data"):
        micro = task.micro_batches(group)
    optimizer.zero_grad(set_to_none=True)
    denom = task.denominator(micro)
    stats: dict[str, float] = {}
    for mb in micro:
        add_stats(stats, task.backward(model, mb, denom=denom, precision=precision, phase=phase))
    task.end_step()
    with phase("optimizer"):
        precision.unscale_(optimizer)
        if clip > 0:
            nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], clip)
        stats["stepped"] = precision.step(optimizer)
    return stats
