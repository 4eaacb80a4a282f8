"""Data-parallel training on torch.distributed, in one place: the rest of the engine asks this module.

Launched by torchrun (or `seqfit train --nproc N`, which runs torch's own elastic launcher): the rank
and world size come from the environment (RANK, WORLD_SIZE, LOCAL_RANK). The model is wrapped in
DistributedDataParallel; gradients synchronise on the last micro-step of an optimizer step only
(no_sync before it); each rank's summed loss is divided by the global denominator, so the update
equals one process training on the whole batch. Rank 0 alone writes; decisions that end a run
(a signal, the memory watchdog, --max-minutes) are all-reduced every step, so all ranks stop
together, after the same step, with one checkpoint. Collectives time out (SEQFIT_DIST_TIMEOUT
seconds, default 300), so a rank that dies makes the others fail instead of hanging.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["Dist", "setup", "teardown", "unwrap", "sync_unless", "launch", "is_worker", "DEFAULT_TIMEOUT"]

DEFAULT_TIMEOUT = 300.0  # seconds a collective waits for the other ranks


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Only the main rank writes files and talks to the user."""
        return self.rank == 0

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """DDP around the model (its parameters broadcast from rank 0 here); the model itself when alone.
        Gradients are views into DDP's buckets: no second copy of the gradients."""
        if not self.enabled:
            return model
        ids = [device.index if device.index is not None else self.local_rank] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids, gradient_as_bucket_view=True)

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sums over the ranks (float64)."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self._device())
        dist.all_reduce(t)
        return t.tolist()

    def any(self, *flags: bool) -> list[bool]:
        """For each flag: whether it is set on any rank."""
        return [v > 0 for v in self.sum([float(f) for f in flags])]

    def gather(self, obj) -> list | None:
        """Every rank's ``obj`` on the main rank (None elsewhere); tensors should be on the CPU."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world if self.main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def _device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def setup(device: torch.device) -> Dist:
    """Join the process group torchrun describes in the environment (a single process otherwise)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=float(os.environ.get("SEQFIT_DIST_TIMEOUT", DEFAULT_TIMEOUT)))
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend, timeout=timeout)
    return Dist(rank, world, local_rank)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DDP (its attributes: head, init_state, ...)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def sync_unless(model: nn.Module, skip: bool) -> contextlib.AbstractContextManager:
    """DDP's no_sync() when ``skip`` (every micro-step but the last): gradients accumulate locally."""
    if skip and isinstance(model, nn.parallel.DistributedDataParallel):
        return model.no_sync()
    return contextlib.nullcontext()


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_worker() -> bool:
    """Whether this process is one rank of a launched group (torchrun sets WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def launch(nproc: int, args: list[str]) -> int:
    """`seqfit ARGS` in ``nproc`` processes on this machine through torch's elastic launcher (what torchrun
    runs: rendezvous on a free local port; one worker failing ends the others). Returns the exit code:
    0, or the first failed worker's (so 3 and 4 keep their meaning)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))  # cores split over ranks
    parsed = get_args_parser().parse_args(["--standalone", "--nproc-per-node", str(nproc), "--max-restarts", "0",
                                           "-m", "seqfit", *args])
    try:
        run(parsed)
    except ChildFailedError as e:
        codes = [f.exitcode for f in e.failures.values() if f.exitcode and f.exitcode > 0]
        return codes[0] if codes else 1
    return 0
