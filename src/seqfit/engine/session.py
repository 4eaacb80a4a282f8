"""Everything a training step needs, built once from the resolved config: used by the training loop,
the memory probe and the profiler alike."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from seqfit.config import RunCfg
from seqfit.device import resolve_device
from seqfit.engine.averaging import WeightAverage
from seqfit.engine.distributed import Dist, setup, unwrap
from seqfit.engine.registry import make_task
from seqfit.engine.rng import seed_everything
from seqfit.engine.schedule import Schedule, make_schedule
from seqfit.engine.step import train_step
from seqfit.engine.task import Phase, Task, no_phase
from seqfit.memory.allocator import use_buffer_pool
from seqfit.nn.optim import optimizer_for
from seqfit.nn.precision import Precision, make_precision

__all__ = ["Session"]


@dataclass
class Session:
    cfg: RunCfg
    task: Task
    model: torch.nn.Module  # what a step calls: the model, or DDP around it
    optimizer: torch.optim.Optimizer
    precision: Precision
    schedule: Schedule
    dist: Dist
    average: WeightAverage  # --average nt|poly: the mean of the weights (inactive otherwise)

    @classmethod
    def build(cls, cfg: RunCfg, data_dir: Path, *, warn=None) -> "Session":
        """Open and check the data (``warn``: where data warnings go), then build model and optimizer.
        Under torchrun, join the process group first: each rank's task reads its share of the data."""
        device = resolve_device(cfg.memory.device)
        dist = setup(device)
        if dist.enabled and device.type == "cuda":
            device = torch.device("cuda", dist.local_rank)
        task = make_task(cfg, data_dir, device, dist)
        # the plan's buffer pool: chunk- or step-sized buffers reused, not remapped (memory/allocator.py; a no-op
        # unless pinned)
        use_buffer_pool(task.plan.get("buffer_pool") or False)
        if warn is not None:
            task.check_data(warn)
        seed_everything(cfg.train.seed)
        module = task.build_model().to(device)
        if dist.enabled:  # the weights come from rank 0 (DDP broadcasts them); dropout masks differ per rank
            seed_everything(cfg.train.seed + 1_000_003 * (dist.rank + 1))
        precision = make_precision(task.plan["precision"], device)
        optimizer, lr = optimizer_for(cfg.train, module)
        total = cfg.train.max_steps or cfg.train.epochs * task.steps_per_epoch()
        schedule = make_schedule(cfg.train.schedule, optimizer, base_lr=lr, total_steps=total, warmup=cfg.train.warmup)
        average = WeightAverage(module, enabled=cfg.train.average != "off", nonmono=cfg.train.nonmono,
                                mode=cfg.train.average, power=cfg.train.average_power)
        return cls(cfg, task, dist.wrap(module, device), optimizer, precision, schedule, dist, average)

    @property
    def module(self) -> torch.nn.Module:
        """The model itself (for its weights, its attributes and evaluation)."""
        return unwrap(self.model)

    @property
    def plan(self) -> dict:
        return self.task.plan

    @property
    def device(self) -> torch.device:
        return self.task.device

    def total_steps(self) -> int:
        return self.cfg.train.max_steps or self.cfg.train.epochs * self.task.steps_per_epoch()

    def step(self, group, phase: Phase = no_phase) -> dict[str, float]:
        stats = train_step(self.task, self.model, group, precision=self.precision, optimizer=self.optimizer,
                           clip=self.cfg.train.clip, phase=phase, dist=self.dist,
                           spare_grads=bool(self.plan.get("spare_grads")))
        self.average.step()
        return stats
