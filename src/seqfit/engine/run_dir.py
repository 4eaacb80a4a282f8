"""A finished or interrupted run read back from RUN_DIR: its config, plan, task (with its data) and model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from seqfit.config import RunCfg
from seqfit.device import resolve_device
from seqfit.engine.checkpoint import load_weights
from seqfit.engine.registry import make_task
from seqfit.engine.run_files import inference_precision, read_run
from seqfit.engine.task import Task
from seqfit.errors import SeqfitError

__all__ = ["LoadedRun", "load_run"]


@dataclass
class LoadedRun:
    cfg: RunCfg
    plan: dict
    task: Task
    model: torch.nn.Module
    device: torch.device
    precision: object

    @property
    def store(self):
        return self.task.store


def load_run(run_dir: str | Path, *, data_dir: str | Path | None = None, device: str = "auto",
             task: str | None = None) -> LoadedRun:
    """The run's model with its trained weights, in eval mode; ``task``: refuse a run of another task."""
    run_dir = Path(run_dir)
    cfg, plan, info = read_run(run_dir)
    if task is not None and cfg.model.task != task:
        what = {"lm": "a language model", "classify": "a classifier", "seq2seq": "an encoder-decoder (seq2seq)"}.get(
            task, f"a {task!r} model")
        raise SeqfitError(f"{run_dir} holds a {cfg.model.task!r} model, not {what}")
    dev = resolve_device(device)
    t = make_task(cfg, Path(data_dir or info["data_dir"]), dev)
    t.plan = plan  # the plan the run trained with (a --budget run's micro-batch, loss, ...)
    model = t.build_model()
    load_weights(run_dir, model)
    model.to(dev).eval()
    return LoadedRun(cfg, plan, t, model, dev, inference_precision(plan["precision"], dev))
