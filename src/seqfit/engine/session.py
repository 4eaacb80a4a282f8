"""Everything a training step needs, built once from the resolved config: used by the training loop,
the memory probe and the profiler alike."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from seqfit.config import RunCfg
from seqfit.device import resolve_device
from seqfit.engine.registry import make_task
from seqfit.engine.rng import seed_everything
from seqfit.engine.schedule import Schedule, make_schedule
from seqfit.engine.step import train_step
from seqfit.engine.task import Phase, Task, no_phase
from seqfit.nn.optim import optimizer_for
from seqfit.nn.precision import Precision, make_precision

__all__ = ["Session"]


@dataclass
class Session:
    cfg: RunCfg
    task: Task
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    precision: Precision
    schedule: Schedule

    @classmethod
    def build(cls, cfg: RunCfg, data_dir: Path, *, warn=None) -> "Session":
        """Open and check the data (``warn``: where data warnings go), then build model and optimizer."""
        device = resolve_device(cfg.memory.device)
        task = make_task(cfg, data_dir, device)
        if warn is not None:
            task.check_data(warn)
        seed_everything(cfg.train.seed)
        model = task.build_model().to(device)
        precision = make_precision(task.plan["precision"], device)
        optimizer, lr = optimizer_for(cfg.train, model)
        total = cfg.train.max_steps or cfg.train.epochs * task.steps_per_epoch()
        schedule = make_schedule(cfg.train.schedule, optimizer, base_lr=lr, total_steps=total, warmup=cfg.train.warmup)
        return cls(cfg, task, model, optimizer, precision, schedule)

    @property
    def plan(self) -> dict:
        return self.task.plan

    @property
    def device(self) -> torch.device:
        return self.task.device

    def total_steps(self) -> int:
        return self.cfg.train.max_steps or self.cfg.train.epochs * self.task.steps_per_epoch()

    def step(self, group, phase: Phase = no_phase) -> dict[str, float]:
        return train_step(self.task, self.model, group, precision=self.precision, optimizer=self.optimizer,
                          clip=self.cfg.train.clip, phase=phase)
