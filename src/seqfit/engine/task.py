"""What a task tells the engine: everything that differs between a language model, a classifier, ...

The engine (loop.py, step.py, session.py) owns steps and epochs, accumulation, precision, clipping,
the schedule, the watchdog, the profiler, metrics, progress, validation cadence, time limits,
interruption and checkpoints. A task owns its data, its model, the loss of one micro-batch, its
metrics and its inference. Tasks register by name (``--task``) in TASKS.

An optimizer step, as the engine runs it (engine/step.py)::

    group = task.epoch_groups(epoch)[position]       # what one optimizer step consumes
    micro = task.micro_batches(group)                # on the device, one entry per accumulation step
    denom = task.denominator(micro)                  # tokens or sequences of the whole step
    for mb in micro:
        stats += task.backward(model, mb, denom=denom, precision=precision, phase=phase)
    task.end_step()                                  # e.g. join the carried state of the micro-batches
    clip, optimizer step

``stats`` are sums over the step (at least "loss_sum" and "tokens"), so that a window of steps (or of
processes) adds up; ``train_metrics`` turns such a sum into the logged numbers. Tasks are found by
name in engine/registry.py.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Protocol, Sequence

import torch
from torch import nn

from seqfit.config import RunCfg

__all__ = ["Task", "Phase", "no_phase", "add_stats", "NoCarriedState"]

Phase = Callable[[str], contextlib.AbstractContextManager]


def no_phase(name: str) -> contextlib.AbstractContextManager:
    """The profiler hook when nothing is profiled."""
    return contextlib.nullcontext()


def add_stats(total: dict[str, float], part: dict[str, float]) -> dict[str, float]:
    for key, value in part.items():
        total[key] = total.get(key, 0) + value
    return total


class Task(Protocol):
    name: str
    cfg: RunCfg
    plan: dict  # the resolved memory plan (memory.plan.requested_plan_for's keys)
    device: torch.device

    # -- building (the task opens its store in __init__; nothing is written before check_data) --
    def check_data(self, warn: Callable[[str], None]) -> None:
        """Fail with one line on data the model cannot take (or warn about what it will change)."""

    def build_model(self) -> nn.Module:
        """The model, sized by the data, on the CPU (the engine seeds before and moves it after)."""

    def describe(self, model: nn.Module) -> str:
        """The plan line `seqfit train` prints."""

    # -- data --
    def steps_per_epoch(self) -> int: ...

    def epoch_groups(self, epoch: int) -> Sequence[Any]:
        """One entry per optimizer step of ``epoch``, in order (the same for a given seed and epoch)."""

    def probe_group(self, step: int) -> Any:
        """The group the memory probe and the profiler train on at their ``step``-th step: where memory peaks."""

    def micro_batches(self, group: Any) -> list[Any]: ...

    def denominator(self, micro: list[Any]) -> int: ...

    # -- one micro-batch --
    def backward(self, model: nn.Module, micro: Any, *, denom: int, precision, phase: Phase) -> dict[str, float]:
        """Forward, loss / denom, backward of one micro-batch; returns its summed statistics."""

    def end_step(self) -> None: ...

    def start_epoch(self) -> None:
        """A new epoch begins (a language model's streams start again from a zero state)."""

    # -- state carried between steps, saved in checkpoints beside the engine's --
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    # -- metrics --
    def train_metrics(self, stats: dict[str, float]) -> dict[str, float]:
        """Logged numbers ("loss" first) from summed step statistics."""

    def validate(self, model: nn.Module, precision) -> dict | None:
        """Metrics on the valid split ("loss" among them: the plateau schedule reads it); None without one."""

    def describe_valid(self, result: dict) -> str: ...

    def summary(self, last_valid: dict | None) -> dict[str, Any]:
        """The task's keys of summary.json."""


class NoCarriedState:
    """The carried-state part of Task for tasks whose batches are independent (nothing flows between steps)."""

    def end_step(self) -> None:
        pass

    def start_epoch(self) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
