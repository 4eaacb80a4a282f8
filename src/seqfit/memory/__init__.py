"""Memory planning: predict a run's peak before it starts, pick the fastest plan under a budget, stop if crossed.

    estimate.py    pure byte arithmetic: parts and peak of one training step (what the budget governs: see there)
    constants.py   the machine-dependent numbers (per-token bytes of each recurrent kernel, runtime baseline)
    calibrate.py   refits them with small probes, cached per machine and torch version
    probe.py       runs real training steps in a child process and measures their peak and time
    throughput.py  relative speed model for ranking plans
    plan.py        plan_for_budget: the fastest candidate predicted to fit, or BudgetError
    watchdog.py    per-step check against the budget during training (MemoryBudgetExceeded)
    allocator.py   pins glibc's mmap threshold so resident memory tracks live tensors
    synthetic.py   synthetic token stores for probes and benchmarks
"""

from seqfit.memory.allocator import configure_allocator
from seqfit.memory.constants import Constants, DEFAULT_CONSTANTS
from seqfit.memory.estimate import PARTS, DataInfo, estimate
from seqfit.memory.plan import (SAFETY_MARGIN, PlanChoice, apply_plan, candidates, data_info_from_dir, describe_plan,
                                plan_for_budget, requested_plan)
from seqfit.memory.watchdog import Watchdog

__all__ = ["configure_allocator", "Constants", "DEFAULT_CONSTANTS", "PARTS", "DataInfo", "estimate", "SAFETY_MARGIN",
           "PlanChoice", "apply_plan", "candidates", "data_info_from_dir", "describe_plan", "plan_for_budget",
           "requested_plan", "Watchdog"]
