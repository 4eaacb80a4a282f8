"""How the sequences of one optimizer step split into micro-batches and accumulation steps."""

from __future__ import annotations

import dataclasses

from seqfit.config import RunCfg

__all__ = ["effective_batch", "split_effective_batch", "apply_batch_plan"]


def effective_batch(cfg: RunCfg) -> int:
    """Sequences (LM: streams) per optimizer step the user asked for (--effective-batch, else batch size x accumulate)."""
    return cfg.memory.effective_batch or cfg.train.batch_size * cfg.memory.accumulate


def split_effective_batch(cfg: RunCfg) -> tuple[int, int]:
    """(micro-batch, accumulation steps) for the effective batch.

    --effective-batch E with --batch-size B: the micro-batch is the largest divisor of E that is at most B,
    so the default --batch-size never blocks an effective batch (under --budget the planner then chooses
    the micro-batch itself). Without --effective-batch: B x --accumulate as given.
    """
    micro, eff = cfg.train.batch_size, cfg.memory.effective_batch
    if not eff:
        return micro, cfg.memory.accumulate
    micro = max(d for d in range(1, min(micro, eff) + 1) if eff % d == 0)
    return micro, eff // micro


def apply_batch_plan(cfg: RunCfg, plan: dict) -> RunCfg:
    """The config whose requested plan has ``plan``'s micro-batch, accumulation and checkpointing."""
    return dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, batch_size=plan["micro_batch"]),
        memory=dataclasses.replace(cfg.memory, accumulate=plan["accumulate"], effective_batch=0,
                                   checkpoint_time=plan["checkpoint_time"]))
