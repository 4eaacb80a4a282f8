"""Plans that reuse chunk- or step-sized buffers from the allocator's pool (memory/pool_plan.py): which ones, and
that their estimate counts what the pool holds."""

from __future__ import annotations

import pytest

from seqfit.config import RunCfg, merge
from seqfit.memory.allocator import WINDOW_POOL_TRIM
from seqfit.memory.constants import default_constants
from seqfit.memory.estimate import DataInfo, estimate
from seqfit.memory.estimate_classify import SequenceInfo, estimate_classifier
from seqfit.memory.plan_classify import requested_classify_plan
from seqfit.memory.plan_forecast import ForecastInfo, estimate_forecaster, requested_forecast_plan
from seqfit.memory.requested import requested_plan

CONSTS = default_constants("cpu")


def _cfg(task: str, model=None, train=None, memory=None) -> RunCfg:
    return merge(RunCfg(), {"model": {"task": task, "layers": 2, "hidden": 32, "embed": 16, **(model or {})},
                            "train": {"batch_size": 8, **(train or {})}, "memory": {"device": "cpu", **(memory or {})}})


def _held(estimate, cfg, data, plan) -> int:
    """Peak with the plan as it is minus the peak with the pool off."""
    without = {**plan, "buffer_pool": False}
    return estimate(cfg, data, plan, CONSTS)["peak"] - estimate(cfg, data, without, CONSTS)["peak"]


@pytest.mark.parametrize("model,train,memory,pooled", [
    ({}, {}, {"checkpoint_time": -1}, True), ({}, {"bptt": 20}, {}, True), ({}, {}, {}, False),
    ({"bidirectional": True}, {}, {"checkpoint_time": -1}, False)])
def test_classifiers_in_time_chunks_pool_their_buffers_and_count_them(model, train, memory, pooled):
    cfg = _cfg("classify", model, train, memory)
    plan = requested_classify_plan(cfg, "cpu")
    assert plan["buffer_pool"] is pooled
    assert requested_classify_plan(cfg, "cuda")["buffer_pool"] is False
    data = SequenceInfo(num_classes=3, vocab_size=500, num_features=0, longest=2000,
                        top_lengths=tuple(range(2000, 1950, -1)))
    held = _held(estimate_classifier, cfg, data, plan)
    assert (held > 0) if pooled else held == 0
    assert estimate_classifier(cfg, data, plan, CONSTS)["phase"] == "backward"


@pytest.mark.parametrize("checkpoint_time,pooled", [(-1, True), (0, False)])
def test_forecasters_in_time_chunks_pool_their_buffers_and_count_them(checkpoint_time, pooled):
    cfg = _cfg("forecast", train={"lookback": 2000}, memory={"checkpoint_time": checkpoint_time})
    plan = requested_forecast_plan(cfg, "cpu")
    assert plan["buffer_pool"] is pooled
    assert requested_forecast_plan(cfg, "cuda")["buffer_pool"] is False
    held = _held(estimate_forecaster, cfg, ForecastInfo(num_inputs=3, num_targets=1, train_rows=100_000), plan)
    assert (held > 0) if pooled else held == 0


# A language model's window pool
def _lm_cfg(**memory) -> RunCfg:
    return merge(RunCfg(), {"model": {"cell": "lstm", "layers": 1, "hidden": 32, "embed": 16},
                            "train": {"batch_size": 4, "bptt": 10}, "memory": {"device": "cpu", **memory}})


def test_cpu_plans_take_the_window_pool_and_checkpointed_or_cuda_ones_do_not():
    data = DataInfo(500)
    assert requested_plan(_lm_cfg(), data, "cpu")["buffer_pool"] == "window"
    assert requested_plan(_lm_cfg(checkpoint_time=5), data, "cpu")["buffer_pool"] is False
    assert requested_plan(_lm_cfg(), data, "cuda")["buffer_pool"] is False


def test_the_estimate_counts_the_free_memory_the_pool_may_keep():
    cfg, data = _lm_cfg(), DataInfo(500)
    plan = requested_plan(cfg, data, "cpu")
    with_pool = estimate(cfg, data, plan)
    without = estimate(cfg, data, {**plan, "buffer_pool": False})
    assert with_pool["peak"] - without["peak"] == WINDOW_POOL_TRIM
