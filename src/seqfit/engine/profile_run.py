"""A few real training steps with every phase measured: where does the memory go?"""

from __future__ import annotations

from pathlib import Path

import torch

from seqfit.config import RunCfg
from seqfit.measure.profile import PhaseProfiler
from seqfit.memory.allocator import configure_allocator
from seqfit.engine.classify_session import ClassifierSession
from seqfit.engine.loop import TrainSession
from seqfit.engine.step import lm_train_step

__all__ = ["profile_steps"]


def profile_steps(cfg: RunCfg, data_dir: Path, steps: int) -> tuple[TrainSession | ClassifierSession, PhaseProfiler]:
    """Run ``steps`` training steps of the configured run (nothing is written) under a PhaseProfiler.
    A classifier trains on its largest batches every step: where its memory peaks, and what the planner predicts."""
    device = torch.device("cuda" if cfg.memory.device != "cpu" and torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        configure_allocator()  # as `seqfit train` does: measure the allocator training will run with
    # The profiler exists before the model, so its baseline is the runtime without the model.
    profiler = PhaseProfiler(device, keep_timeline=True)
    with profiler:
        if cfg.model.task == "classify":
            return _profile_classifier(cfg, data_dir, steps, profiler), profiler
        s = TrainSession.build(cfg, data_dir)
        state = s.model.init_state(s.plan["batch_size"], device=s.device)
        s.model.train()
        for i in range(min(steps, len(s.batches))):
            with profiler.phase("data"):
                x, y = (v.to(s.device) for v in s.batches.batch(i))
            result = lm_train_step(s.model, x, y, state, accumulate=s.plan["accumulate"], precision=s.precision,
                                   optimizer=s.optimizer, clip=cfg.train.clip, phase=profiler.phase)
            state = result.state
            profiler.step_done()
    return s, profiler


def _profile_classifier(cfg: RunCfg, data_dir: Path, steps: int, profiler: PhaseProfiler) -> ClassifierSession:
    s = ClassifierSession.build(cfg, data_dir)
    group = s.largest_batches()
    s.model.train()
    for _ in range(steps):
        s.step(group, phase=profiler.phase)
        profiler.step_done()
    return s
