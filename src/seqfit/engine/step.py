"""One optimizer step, for every task: micro-batches, accumulation, precision, clipping.

Every micro-batch's summed loss is divided by the task's denominator for the whole step (its tokens
or sequences), so the accumulated gradient equals that of the whole batch at once. Data-parallel
ranks divide by the denominator summed over the ranks (times the world size, since DDP averages), so
the update equals one process training on every rank's batch; gradients synchronise on the last
micro-batch only.
"""

from __future__ import annotations

import torch
from torch import nn

from seqfit.engine.distributed import Dist, sync_unless
from seqfit.engine.task import Phase, Task, add_stats, no_phase
from seqfit.nn import spare_grads as spares

__all__ = ["train_step"]


def train_step(task: Task, model: nn.Module, group, *, precision, optimizer: torch.optim.Optimizer, clip: float,
               phase: Phase = no_phase, dist: Dist = Dist(), spare_grads: bool = False) -> dict[str, float]:
    """Train on ``group`` (one entry of task.epoch_groups); returns the step's summed statistics and
    "stepped" (False when fp16 found inf/nan gradients and skipped the update). ``spare_grads`` (the plan's):
    the last step's large gradients are handed to the kernels that make the next ones (nn/spare_grads.py)."""
    with phase("data"):
        micro = task.micro_batches(group)
    if spare_grads:
        spares.hand_back(model)
    optimizer.zero_grad(set_to_none=True)
    denom = task.denominator(micro)
    if dist.enabled:
        denom = dist.sum([denom])[0] / dist.world
    stats: dict[str, float] = {}
    for i, mb in enumerate(micro):
        with sync_unless(model, i < len(micro) - 1):
            add_stats(stats, task.backward(model, mb, denom=denom, precision=precision, phase=phase))
    task.end_step()
    with phase("optimizer"):
        precision.unscale_(optimizer)
        if clip > 0:
            nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], clip)
        stats["stepped"] = precision.step(optimizer)
    return stats
