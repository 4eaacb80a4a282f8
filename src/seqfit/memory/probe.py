"""Measure real training steps in a fresh child process: peak memory and step time.

A child, because on CPU a process that runs out of memory is killed, not told (so only small probes
are ever run, and a kill reports as such here instead of taking the caller with it), and because a
fresh process is the only way to measure a peak that earlier work did not inflate.

What "measured peak" means: the largest *anonymous* resident size of the process while it trains,
including the runtime itself (python, torch, seqfit) -- the absolute figure, since that is what the
kernel kills on. It is read from the kernel's high-water mark VmHWM (reset through /proc/self/clear_refs
when the first step starts, so no spike is missed however short) minus the file-backed resident pages
at that moment; file pages (libraries, the memory-mapped token store) only grow while training, so this
is an upper bound, and `file_drift` says by how much they grew. The first step faults in most of the
library code, so the kernel's mark is reset after it; a sampler thread reading RssAnon every 2 ms
covers every step, the first included. The peak is the larger of the two. On CUDA it is
torch.cuda.max_memory_reserved.

The child pins the allocator (seqfit.memory.allocator), as `seqfit train` does, so that what it
measures is what training will do.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from seqfit.config import RunCfg, to_dict
from seqfit.errors import SeqfitError

__all__ = ["measure_run", "CHILD_MODULE"]

# The child runs the training engine; the planner (this layer) knows it by name only, so memory/ never
# imports the engine that itself calls the planner.
CHILD_MODULE = "seqfit.engine.measure_steps"
_LAUNCHER_VARS = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                  "ROLE_RANK", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}


def measure_run(cfg: RunCfg, data_dir: str | Path, *, steps: int = 4, threads: int = 0,
                timeout: float = 900.0) -> dict:
    """Train ``steps`` steps of ``cfg`` on DATA_DIR in a child process; returns its measurements.

    {"peak_bytes": anonymous (CPU) or reserved (CUDA) peak over the steps, "peak_anon_sampled",
    "baseline_bytes": anonymous bytes after imports, before the model is built, "file_drift",
    "step_seconds": [...] wall, "step_cpu_seconds": [...] process CPU time, "device"}.
    threads > 0 sets torch's thread count. A killed child raises SeqfitError.
    """
    spec = {"config": to_dict(cfg), "data_dir": str(data_dir), "steps": steps, "threads": threads}
    # a probe is one process of its own, also when asked from a rank of a torchrun group
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCHER_VARS and not k.startswith("TORCHELASTIC_")}
    env["PYTHONUNBUFFERED"] = "1"
    try:
        proc = subprocess.run([sys.executable, "-m", CHILD_MODULE], input=json.dumps(spec), text=True,
                              capture_output=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise SeqfitError(f"the memory probe did not finish in {timeout:.0f} s") from None
    if proc.returncode != 0:
        how = "was killed (out of memory?)" if proc.returncode < 0 else f"failed (exit {proc.returncode})"
        tail = proc.stderr.strip().splitlines()[-1:] or [""]
        raise SeqfitError(f"the memory probe {how}: {tail[0]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
