"""What the planner needs from each task, found by the task's name (--task): a task's planner is a module of
this layer (plan_lm.py, plan_classify.py, plan_forecast.py, plan_seq2seq.py) with its own estimator, so the planner never imports the engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from seqfit.config import RunCfg
from seqfit.errors import SeqfitError
from seqfit.memory import plan_classify, plan_forecast, plan_lm, plan_seq2seq
from seqfit.memory.constants import Constants
from seqfit.memory.estimate import estimate
from seqfit.memory.estimate_classify import estimate_classifier
from seqfit.memory.estimate_seq2seq import estimate_seq2seq
from seqfit.memory.requested import requested_plan

__all__ = ["TaskPlanner", "PLANNERS", "planner_for"]


@dataclass(frozen=True)
class TaskPlanner:
    data_info: Callable[[RunCfg, Path], Any]  # what the estimate reads from DATA_DIR (sizes, worst lengths)
    requested: Callable[[RunCfg, Any, str], dict]  # the plan the config asks for (what the engine runs)
    candidates: Callable[[RunCfg, Any, str], list[dict]]  # plans with the same gradients
    apply: Callable[[RunCfg, dict], RunCfg]  # the config whose requested plan is this one
    describe: Callable[[dict], str]  # one line for people
    estimate: Callable[[RunCfg, Any, dict, Constants], dict]  # peak, parts and phases of one step
    score: Callable[[RunCfg, Any, dict, Constants], dict]  # plan + predicted peak, peak phase, tokens/s, _parts


PLANNERS: dict[str, TaskPlanner] = {
    "lm": TaskPlanner(
        data_info=lambda cfg, data_dir: plan_lm.data_info_from_dir(data_dir),
        requested=requested_plan, candidates=plan_lm.candidates, apply=plan_lm.apply_plan,
        describe=plan_lm.describe_plan, estimate=estimate, score=plan_lm.score_lm_plan),
    "classify": TaskPlanner(
        data_info=lambda cfg, data_dir: plan_classify.sequence_info_from_dir(data_dir, cfg.train.max_length),
        requested=lambda cfg, data, device: plan_classify.requested_classify_plan(cfg, device),
        candidates=plan_classify.classify_candidates, apply=plan_classify.apply_classify_plan,
        describe=plan_classify.describe_classify_plan, estimate=estimate_classifier,
        score=plan_classify.score_classify_plan),
    "forecast": TaskPlanner(
        data_info=plan_forecast.forecast_info_from_dir,
        requested=lambda cfg, data, device: plan_forecast.requested_forecast_plan(cfg, device),
        candidates=plan_forecast.forecast_candidates, apply=plan_forecast.apply_forecast_plan,
        describe=plan_forecast.describe_forecast_plan, estimate=plan_forecast.estimate_forecaster,
        score=plan_forecast.score_forecast_plan),
    "seq2seq": TaskPlanner(
        data_info=plan_seq2seq.pair_info_from_dir,
        requested=plan_seq2seq.requested_for_data, candidates=plan_seq2seq.seq2seq_candidates,
        apply=plan_seq2seq.apply_seq2seq_plan, describe=plan_seq2seq.describe_seq2seq_plan,
        estimate=estimate_seq2seq, score=plan_seq2seq.score_seq2seq_plan),
}


def planner_for(cfg: RunCfg) -> TaskPlanner:
    try:
        return PLANNERS[cfg.model.task]
    except KeyError:
        raise SeqfitError(f"no memory planner for task {cfg.model.task!r}") from None
