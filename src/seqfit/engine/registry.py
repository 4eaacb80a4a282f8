"""The tasks `--task` can name, each a module of the engine that implements engine.task.Task."""

from __future__ import annotations

from pathlib import Path

import torch

from seqfit.config import RunCfg
from seqfit.engine.classify import ClassifierTask
from seqfit.engine.distributed import Dist
from seqfit.engine.forecast import ForecastTask
from seqfit.engine.lm import LanguageModelTask
from seqfit.engine.seq2seq import Seq2SeqTask
from seqfit.engine.task import Task

__all__ = ["TASKS", "make_task"]

TASKS: dict[str, type] = {"lm": LanguageModelTask, "classify": ClassifierTask, "forecast": ForecastTask,
                        "seq2seq": Seq2SeqTask}


def make_task(cfg: RunCfg, data_dir: Path, device: torch.device, dist: Dist = Dist()) -> Task:
    """The task ``cfg.model.task`` over DATA_DIR (its store opened and checked against the config), reading
    this rank's share of the data."""
    return TASKS[cfg.model.task](cfg, Path(data_dir), device, dist)
