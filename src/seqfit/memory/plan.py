"""Choose the fastest plan that fits a memory budget, before anything is allocated.

The user's config fixes what changes the result: the effective batch (sequences per optimizer step),
bptt, model, optimizer and precision. The planner varies only what gives the same gradients (the
micro-batch, exact checkpointing, the output loss's chunks): each task's planner (task_planners.py;
plan_lm.py, plan_classify.py) lists its candidates and scores them.

Every candidate's peak comes from the task's estimator (estimate.py, ...) and its speed from the relative model
(throughput.py); the fastest candidate under budget x (1 - SAFETY_MARGIN) wins. Nothing is run to
find out: on CPU running out of memory is a kill, not an exception, so a search by trial would crash.
When nothing fits, BudgetError says what the smallest plan needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from seqfit.config import RunCfg
from seqfit.errors import BudgetError
from seqfit.measure.memory import format_bytes
from seqfit.memory.batch_split import effective_batch
from seqfit.memory.constants import Constants
from seqfit.memory.plan_lm import (
    apply_plan,
    candidates,
    data_info_from_dir,
    describe_plan,
)
from seqfit.memory.requested import requested_plan, run_device
from seqfit.memory.task_planners import planner_for

__all__ = ["SAFETY_MARGIN", "PlanChoice", "data_info_from_dir", "effective_batch", "requested_plan", "candidates",
           "plan_for_budget", "describe_plan", "apply_plan", "run_device", "data_info_for", "requested_plan_for",
           "estimate_for", "score_plan", "describe_plan_for"]

SAFETY_MARGIN = 0.07  # plans must fit in budget x (1 - this): the estimator's error on bench_planner is below it


@dataclass(frozen=True)
class PlanChoice:
    cfg: RunCfg  # the resolved config: train with this one
    plan: dict  # requested_plan's keys + predicted_peak_bytes, predicted_tokens_per_s, reason
    parts: dict[str, int]  # predicted bytes by part at the peak (they add up to the peak)
    alternatives: list[dict] = field(default_factory=list)  # other plans with their peak, speed and fit
    budget: int = 0


def data_info_for(cfg: RunCfg, data_dir: str | Path):
    """What the task's estimate needs from DATA_DIR (a DataInfo for a language model, ...)."""
    return planner_for(cfg).data_info(cfg, Path(data_dir))


def requested_plan_for(cfg: RunCfg, data, device: str | None = None) -> dict:
    """The plan the config asks for as it stands, for its task."""
    return planner_for(cfg).requested(cfg, data, device or run_device(cfg))


def estimate_for(cfg: RunCfg, data, plan: dict, consts: Constants) -> dict:
    """The estimate of the config's task: peak, parts, phases."""
    return planner_for(cfg).estimate(cfg, data, plan, consts)


def score_plan(cfg: RunCfg, data, plan: dict, consts: Constants) -> dict:
    """``plan`` with its predicted peak, peak phase and tokens/s (and ``_parts``, the peak by part)."""
    return planner_for(cfg).score(cfg, data, plan, consts)


def describe_plan_for(cfg: RunCfg, plan: dict) -> str:
    return planner_for(cfg).describe(plan)


def plan_for_budget(cfg: RunCfg, data_info, budget_bytes: int, consts: Constants | None = None,
                    device: str | None = None) -> PlanChoice:
    """The fastest plan predicted to fit in ``budget_bytes``; BudgetError (nothing allocated) when none does.

    ``data_info``: what the task's planner reads from the data (data_info_for)."""
    device = device or run_device(cfg)
    if consts is None:
        from seqfit.memory.calibrate import load_constants

        consts = load_constants(device, [(cfg.model.cell, cfg.memory.precision)])
    usable = int(budget_bytes * (1 - SAFETY_MARGIN))
    task = planner_for(cfg)
    plans, apply, describe = task.candidates(cfg, data_info, device), task.apply, task.describe
    scored = [task.score(cfg, data_info, p, consts) for p in plans]
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
