"""A few real training steps with every phase measured: where does the memory go?"""

from __future__ import annotations

from pathlib import Path

import torch

from seqfit.config import RunCfg
from seqfit.engine.session import Session
from seqfit.measure.profile import PhaseProfiler
from seqfit.memory.allocator import configure_allocator

__all__ = ["profile_steps"]


def profile_steps(cfg: RunCfg, data_dir: Path, steps: int) -> tuple[Session, PhaseProfiler]:
    """Run ``steps`` training steps of the configured run (nothing is written) under a PhaseProfiler, each on
    the task's probe group (a classifier's largest batches: where its memory peaks, and what the planner predicts)."""
    device = torch.device("cuda" if cfg.memory.device != "cpu" and torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        configure_allocator()  # as `seqfit train` does: measure the allocator training will run with
    # The profiler exists before the model, so its baseline is the runtime without the model.
    profiler = PhaseProfiler(device, keep_timeline=True)
    with profiler:
        s = Session.build(cfg, data_dir)
        s.model.train()
        for i in range(min(steps, s.task.steps_per_epoch())):
            s.step(s.task.probe_group(i), phase=profiler.phase)
            profiler.step_done()
    return s, profiler
