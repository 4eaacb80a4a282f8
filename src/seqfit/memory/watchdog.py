"""Stop training cleanly when memory crosses the budget, instead of being killed by the kernel.

The planner keeps a run under its budget by prediction; the watchdog covers what prediction cannot
see: another process on the machine, a leak, data that grows a buffer. The loop calls ``check()``
once per step; it takes one fresh reading (/proc/self/status, tens of microseconds) and the peak of
the loop's MemorySampler (a thread sampling every few tens of ms), and raises MemoryBudgetExceeded;
the loop then writes a checkpoint and exits with code 4. At most the step in flight is lost: a
resumed run (``--resume``) continues from the step the check followed.

What is compared with the budget: on CPU the anonymous resident bytes (file-backed pages such as
the memory-mapped token store are reclaimable, see seqfit.memory.estimate); on CUDA the caching
allocator's reserved bytes. The sampler's running peak counts too, so a spike between two checks
is not missed.
"""

from __future__ import annotations

from seqfit.errors import MemoryBudgetExceeded
from seqfit.measure.memory import MemorySampler, format_bytes, read_resident

__all__ = ["Watchdog"]


class Watchdog:
    def __init__(self, budget_bytes: int, sampler: MemorySampler, device: str = "cpu"):
        if budget_bytes <= 0:
            raise ValueError(f"the watchdog needs a positive budget, got {budget_bytes}")
        self.budget = budget_bytes
        self.sampler = sampler
        self.device = device
        self.used_peak = 0  # the largest reading seen by check()

    def used(self) -> int:
        """Bytes the budget governs: the larger of a fresh reading and the sampler's peak so far."""
        if self.device == "cuda":
            import torch

            return max(torch.cuda.memory_reserved(), self.sampler.last.cuda_reserved)
        return max(read_resident()[1], self.sampler.peak_anon)

    def check(self, step: int | None = None) -> None:
        used = self.used()
        self.used_peak = max(self.used_peak, used)
        if used > self.budget:
            what = "CUDA memory reserved" if self.device == "cuda" else "anonymous memory"
            at = f" at step {step}" if step is not None else ""
            raise MemoryBudgetExceeded(
                f"{what} reached {format_bytes(used)}{at}, over --budget {format_bytes(self.budget)} "
                f"(another process, a leak, or a plan the estimate got wrong); a checkpoint was written, "
                f"free memory or raise --budget and continue with --resume")
