"""Choose the fastest plan that fits a memory budget, before anything is allocated.

The user's config fixes what changes the result: the effective batch (streams per optimizer step),
bptt, model, optimizer and precision. The planner varies only what gives the same gradients:

    micro-batch      a divisor of the effective batch; the rest becomes accumulation steps
    checkpointing    exact time-chunked checkpointing every k steps (when --checkpoint-time is 0)
    output loss      full logits or chunked (when --loss is auto), and the chunk size

Every candidate's peak comes from the estimator (estimate.py) and its speed from the relative model
(throughput.py); the fastest candidate under budget x (1 - SAFETY_MARGIN) wins. Nothing is run to
find out: on CPU running out of memory is a kill, not an exception, so a search by trial would crash.
When nothing fits, BudgetError says what the smallest plan needs.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from seqfit.config import RunCfg, lm_bptt
from seqfit.errors import BudgetError
from seqfit.measure.memory import format_bytes
from seqfit.memory.batch_split import effective_batch
from seqfit.memory.constants import Constants
from seqfit.memory.requested import plan_dict, requested_plan, run_device
from seqfit.memory.estimate import DataInfo, estimate
from seqfit.memory.throughput import tokens_per_second

__all__ = ["SAFETY_MARGIN", "PlanChoice", "data_info_from_dir", "effective_batch", "requested_plan", "candidates",
           "plan_for_budget", "describe_plan", "apply_plan", "run_device", "data_info_for", "requested_plan_for",
           "estimate_for", "score_plan"]

SAFETY_MARGIN = 0.07  # plans must fit in budget x (1 - this): the estimator's error on bench_planner is below it
# The chunked loss's rows per chunk tried: its default (nn/chunked_loss.default_chunk_tokens) divided by these.
# Each halving halves the (C, V) buffer; the time grows as ~1/C (1.28x full logits at 256 rows, 1.58x at 64).
CHUNK_DIVISORS = (1, 2, 4, 8, 16)


@dataclass(frozen=True)
class PlanChoice:
    cfg: RunCfg  # the resolved config: train with this one
    plan: dict  # requested_plan's keys + predicted_peak_bytes, predicted_tokens_per_s, reason
    parts: dict[str, int]  # predicted bytes by part at the peak (they add up to the peak)
    alternatives: list[dict] = field(default_factory=list)  # other plans with their peak, speed and fit
    budget: int = 0


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
    out = []
    for micro in sorted((d for d in range(1, eff + 1) if eff % d == 0), reverse=True):
        for k in _checkpoint_options(cfg):
            for loss in losses:
                for chunk in (_chunk_options(cfg, data, micro * lm_bptt(cfg.train)) if loss == "chunked" else [0]):
                    out.append(plan_dict(device, cfg.memory.precision, loss, chunk, micro, eff // micro, lm_bptt(cfg.train),
                                     k, cfg.train.optimizer))
    return out


def apply_plan(cfg: RunCfg, plan: dict) -> RunCfg:
    """The config whose requested_plan gives ``plan``: micro-batch, accumulation, loss and checkpointing set."""
    return dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, batch_size=plan["micro_batch"]),
        memory=dataclasses.replace(cfg.memory, accumulate=plan["accumulate"], effective_batch=0, loss=plan["loss"],
                                   loss_chunk=plan["loss_chunk"], checkpoint_time=plan["checkpoint_time"]))


def describe_plan(plan: dict) -> str:
    ckpt = f"checkpoint every {plan['checkpoint_time']} steps" if plan["checkpoint_time"] else "no checkpointing"
    loss = f"{plan['loss']} loss"
    if plan["loss"] == "chunked" and plan["loss_chunk"]:
        loss = f"chunked loss ({plan['loss_chunk']} tokens a chunk)"
    return (f"micro-batch {plan['micro_batch']} x {plan['accumulate']} accumulated, bptt {plan['bptt']}, {ckpt}, "
            f"{loss}, {plan['precision']}, {plan['optimizer']}")


def _scored(cfg: RunCfg, data: DataInfo, plan: dict, consts: Constants) -> dict:
    est = estimate(cfg, data, plan, consts)
    return {**plan, "predicted_peak_bytes": est["peak"], "peak_phase": est["phase"],
            "predicted_tokens_per_s": tokens_per_second(cfg.model, data.vocab_size, plan, consts),
            "_parts": est["parts"]}


# Every task-dependent step of planning goes through these, so callers never branch on the task.

def data_info_for(cfg: RunCfg, data_dir: str | Path):
    """What the estimate needs from DATA_DIR: a DataInfo (language model) or a SequenceInfo (classifier)."""
    if cfg.model.task == "classify":
        from seqfit.memory.plan_classify import sequence_info_from_dir

        return sequence_info_from_dir(data_dir, cfg.train.max_length)
    return data_info_from_dir(data_dir)


def requested_plan_for(cfg: RunCfg, data, device: str | None = None) -> dict:
    """The plan the config asks for as it stands, for its task."""
    device = device or run_device(cfg)
    if cfg.model.task == "classify":
        from seqfit.memory.plan_classify import requested_classify_plan

        return requested_classify_plan(cfg, device)
    return requested_plan(cfg, data, device)


def estimate_for(cfg: RunCfg, data, plan: dict, consts: Constants) -> dict:
    """The estimator of the config's task (estimate.py or estimate_classify.py)."""
    if cfg.model.task == "classify":
        from seqfit.memory.estimate_classify import estimate_classifier

        return estimate_classifier(cfg, data, plan, consts)
    return estimate(cfg, data, plan, consts)


def score_plan(cfg: RunCfg, data, plan: dict, consts: Constants) -> dict:
    """``plan`` with its predicted peak, peak phase and tokens/s (and ``_parts``, the peak by part)."""
    if cfg.model.task == "classify":
        from seqfit.memory.plan_classify import score_classify_plan

        return score_classify_plan(cfg, data, plan, consts)
    return _scored(cfg, data, plan, consts)


def plan_for_budget(cfg: RunCfg, data_info, budget_bytes: int, consts: Constants | None = None,
                    device: str | None = None) -> PlanChoice:
    """The fastest plan predicted to fit in ``budget_bytes``; BudgetError (nothing allocated) when none does.

    ``data_info``: a DataInfo for language models, a plan_classify.SequenceInfo for classifiers."""
    device = device or run_device(cfg)
    if consts is None:
        from seqfit.memory.calibrate import load_constants

        consts = load_constants(device, [(cfg.model.cell, cfg.memory.precision)])
    usable = int(budget_bytes * (1 - SAFETY_MARGIN))
    if cfg.model.task == "classify":
        from seqfit.memory import plan_classify as pc

        plans, apply, describe = pc.classify_candidates(cfg, data_info, device), pc.apply_classify_plan, pc.describe_classify_plan
    else:
        plans, apply, describe = candidates(cfg, data_info, device), apply_plan, describe_plan
    scored = [score_plan(cfg, data_info, p, consts) for p in plans]
    fits = [s for s in scored if s["predicted_peak_bytes"] <= usable]
    if not fits:
        smallest = min(scored, key=lambda s: s["predicted_peak_bytes"])
        parts = smallest["_parts"]
        fixed = ", ".join(f"{k.replace('_', ' ')} {format_bytes(parts[k])}"
                          for k in ("baseline", "weights", "gradients", "optimizer_state") if parts[k])
        raise BudgetError(f"nothing fits in --budget {format_bytes(budget_bytes)}: the smallest plan "
                          f"({describe(smallest)}) needs {format_bytes(smallest['predicted_peak_bytes'])} "
                          f"+ {SAFETY_MARGIN:.0%} margin ({fixed}); raise --budget or shrink the model")
    best = max(fits, key=lambda s: (s["predicted_tokens_per_s"], -s["predicted_peak_bytes"]))
    faster = [s for s in scored if s["predicted_tokens_per_s"] > best["predicted_tokens_per_s"]]
    reason = (f"fastest of {len(fits)} of {len(scored)} plans predicted to fit in {format_bytes(usable)} "
              f"(budget {format_bytes(budget_bytes)} less a {SAFETY_MARGIN:.0%} margin)")
    if faster:
        nxt = min(faster, key=lambda s: s["predicted_peak_bytes"])
        reason += f"; the next faster plan ({describe(nxt)}) needs {format_bytes(nxt['predicted_peak_bytes'])}"
    plan = {k: v for k, v in best.items() if k != "_parts"} | {"reason": reason, "budget_bytes": budget_bytes}
    ranked = sorted(scored, key=lambda s: -s["predicted_tokens_per_s"])
    alternatives = [{k: v for k, v in s.items() if k != "_parts"} | {"fits": s["predicted_peak_bytes"] <= usable}
                    for s in ranked if s is not best][:15]
    return PlanChoice(apply(cfg, best), plan, best["_parts"], alternatives, budget_bytes)
