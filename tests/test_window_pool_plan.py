"""A language model's plan asks for the window pool on CPU, and the estimate counts what the pool keeps."""

from seqfit.config import RunCfg, merge
from seqfit.memory.allocator import WINDOW_POOL_TRIM
from seqfit.memory.estimate import DataInfo, estimate
from seqfit.memory.requested import requested_plan


def _cfg(**memory) -> RunCfg:
    return merge(RunCfg(), {"model": {"cell": "lstm", "layers": 1, "hidden": 32, "embed": 16},
                            "train": {"batch_size": 4, "bptt": 10}, "memory": {"device": "cpu", **memory}})


def test_cpu_plans_take_the_window_pool_and_checkpointed_or_cuda_ones_do_not():
    data = DataInfo(500)
    assert requested_plan(_cfg(), data, "cpu")["buffer_pool"] == "window"
    assert requested_plan(_cfg(checkpoint_time=5), data, "cpu")["buffer_pool"] is False
    assert requested_plan(_cfg(), data, "cuda")["buffer_pool"] is False


def test_the_estimate_counts_the_free_memory_the_pool_may_keep():
    cfg, data = _cfg(), DataInfo(500)
    plan = requested_plan(cfg, data, "cpu")
    with_pool = estimate(cfg, data, plan)
    without = estimate(cfg, data, {**plan, "buffer_pool": False})
    assert with_pool["peak"] - without["peak"] == WINDOW_POOL_TRIM
