"""How a run is steered across its processes: who speaks, how signals stop it, what each rank restores."""

from __future__ import annotations

import signal

import torch

from seqfit.config import RunCfg
from seqfit.engine.rng import seed_everything, set_rng_state

__all__ = ["quiet", "Silent", "StopSignals", "to_cpu", "restore_rank_state"]


def quiet(*args, **kwargs) -> None:
    """What a rank other than 0 says: nothing."""


class Silent:
    """The metrics log and progress bar of a rank other than 0."""

    n = 0

    def write(self, *args, **kwargs) -> None:
        pass

    def update(self, n: int = 1, **postfix) -> None:
        self.n += n

    def close(self) -> None:
        pass


class StopSignals:
    """Ctrl-C and SIGTERM ask the run to stop after the step in flight (so every rank stops after the same
    step, with a consistent checkpoint); a second Ctrl-C stops at once."""

    def __init__(self, echo):
        self.echo, self.requested, self._previous = echo, False, {}

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.echo("stopping after this step (a checkpoint follows); Ctrl-C again to stop at once")

    def __enter__(self) -> "StopSignals":
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def restore_rank_state(saved: dict, task, dist, cfg: RunCfg, echo) -> None:
    """This rank's carried state and RNG from a checkpoint; restarted when the world size changed."""
    if "ranks" in saved:
        mine = saved["ranks"][dist.rank] if saved["world_size"] == dist.world else None
    else:
        mine = saved if dist.world == 1 else None
    if mine is not None:
        task.load_state_dict({**mine, "step": saved["step"]})
        set_rng_state(mine["rng"])
        return
    echo(f"resuming {saved.get('world_size', 1)} processes' run with {dist.world}: data is re-sharded, carried "
         "states restart from zero and random streams are re-seeded (the model, optimizer and step carry over)")
    task.load_state_dict({"step": saved["step"]})
    seed_everything(cfg.train.seed + 1_000_003 * (dist.rank + 1) + saved["step"])
