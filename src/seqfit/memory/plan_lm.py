"""The planner's part of the language-model task: its data summary, candidate plans and their scores.

Candidates vary only what gives the same gradients:

    micro-batch      a divisor of the effective batch; the rest becomes accumulation steps
    checkpointing    exact time-chunked checkpointing every k steps (when --checkpoint-time is 0)
    output loss      full logits or chunked (when --loss is auto), and the chunk size
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path

from seqfit.config import RunCfg, lm_bptt
from seqfit.memory.batch_split import effective_batch
from seqfit.memory.constants import Constants
from seqfit.memory.estimate import DataInfo, estimate
from seqfit.memory.requested import plan_dict, run_device
from seqfit.memory.throughput import tokens_per_second

__all__ = ["CHUNK_DIVISORS", "data_info_from_dir", "candidates", "apply_plan", "describe_plan", "score_lm_plan"]

# The chunked loss's rows per chunk tried: its default (nn/chunked_loss.default_chunk_tokens) divided by these.
# Each halving halves the (C, V) buffer; the time grows as ~1/C (1.28x full logits at 256 rows, 1.58x at 64).
CHUNK_DIVISORS = (1, 2, 4, 8, 16)


def data_info_from_dir(data_dir: str | Path) -> DataInfo:
    """Vocabulary size, training tokens and id counts from DATA_DIR's meta.json and vocab.json."""
    from seqfit.data.store import read_meta

    data_dir = Path(data_dir)
    meta = read_meta(data_dir)
    counts = None
    try:
        counts = tuple(json.loads((data_dir / "vocab.json").read_text(encoding="utf-8"))["counts"])
    except (OSError, ValueError, KeyError):
        pass
    train = meta.get("splits", {}).get("train", {}).get("tokens", 0)
    return DataInfo(vocab_size=int(meta["vocab_size"]), train_tokens=int(train), counts=counts)


def _chunk_options(cfg: RunCfg, data: DataInfo, tokens: int) -> list[int]:
    """Rows per chunk to try for a micro-batch of ``tokens`` rows: the runtime's default and smaller ones."""
    from seqfit.nn.chunked_loss import balanced_chunk, default_chunk_tokens

    if cfg.memory.loss_chunk:
        return [cfg.memory.loss_chunk]
    default = default_chunk_tokens(data.vocab_size, tokens, 2 if cfg.memory.precision != "fp32" else 4)
    smaller = {balanced_chunk(tokens, default // d // 8 * 8) for d in CHUNK_DIVISORS[1:] if default // d >= 16}
    return sorted({default} | smaller, reverse=True)


def _checkpoint_options(cfg: RunCfg) -> list[int]:
    T = lm_bptt(cfg.train)
    if cfg.memory.checkpoint_time:
        return [cfg.memory.checkpoint_time]
    ks = {math.ceil(T / 2), math.ceil(T / 4), math.ceil(math.sqrt(T))}
    return [0] + sorted(k for k in ks if 1 <= k < T)


def candidates(cfg: RunCfg, data: DataInfo, device: str | None = None) -> list[dict]:
    """Every plan the planner may choose between for ``cfg`` (same gradients as the config asks for)."""
    device = device or run_device(cfg)
    eff = effective_batch(cfg)
    losses = ["full", "chunked"] if cfg.memory.loss == "auto" else [cfg.memory.loss]
    T = lm_bptt(cfg.train)
    # spare gradients are faster and hold a gradient or two longer: both, where they apply
    spares = (True, False) if device == "cpu" and cfg.memory.spare_grads else (False,)
    out = []
    for micro in sorted((d for d in range(1, eff + 1) if eff % d == 0), reverse=True):
        heads = [(loss, chunk) for loss in losses
                 for chunk in (_chunk_options(cfg, data, micro * T) if loss == "chunked" else [0])]
        for k, (loss, chunk), spare in itertools.product(_checkpoint_options(cfg), heads, spares):
            out.append(plan_dict(device, cfg.memory.precision, loss, chunk, micro, eff // micro, T, k,
                                 cfg.train.optimizer, spare))
    return out


def apply_plan(cfg: RunCfg, plan: dict) -> RunCfg:
    """The config whose requested_plan gives ``plan``: micro-batch, accumulation, loss and checkpointing set."""
    return dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, batch_size=plan["micro_batch"]),
        memory=dataclasses.replace(cfg.memory, accumulate=plan["accumulate"], effective_batch=0, loss=plan["loss"],
                                   loss_chunk=plan["loss_chunk"], checkpoint_time=plan["checkpoint_time"],
                                   spare_grads=plan.get("spare_grads", cfg.memory.spare_grads)))


def describe_plan(plan: dict) -> str:
    ckpt = f"checkpoint every {plan['checkpoint_time']} steps" if plan["checkpoint_time"] else "no checkpointing"
    loss = f"{plan['loss']} loss"
    if plan["loss"] == "chunked" and plan["loss_chunk"]:
        loss = f"chunked loss ({plan['loss_chunk']} tokens a chunk)"
    spares = ", no spare gradients" if plan.get("device") == "cpu" and not plan.get("spare_grads") else ""
    return (f"micro-batch {plan['micro_batch']} x {plan['accumulate']} accumulated, bptt {plan['bptt']}, {ckpt}, "
            f"{loss}, {plan['precision']}, {plan['optimizer']}{spares}")


def score_lm_plan(cfg: RunCfg, data: DataInfo, plan: dict, consts: Constants) -> dict:
    est = estimate(cfg, data, plan, consts)
    return {**plan, "predicted_peak_bytes": est["peak"], "peak_phase": est["phase"],
            "predicted_tokens_per_s": tokens_per_second(cfg.model, data.vocab_size, plan, consts),
            "_parts": est["parts"]}
