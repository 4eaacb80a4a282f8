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
import threading
import time
from pathlib import Path

from seqfit.config import RunCfg, from_dict, to_dict
from seqfit.errors import SeqfitError

__all__ = ["measure_run", "child_main"]


def measure_run(cfg: RunCfg, data_dir: str | Path, *, steps: int = 4, threads: int = 0,
                timeout: float = 900.0) -> dict:
    """Train ``steps`` steps of ``cfg`` on DATA_DIR in a child process; returns its measurements.

    {"peak_bytes": anonymous (CPU) or reserved (CUDA) peak over the steps, "peak_anon_sampled",
    "baseline_bytes": anonymous bytes after imports, before the model is built, "file_drift",
    "step_seconds": [...] wall, "step_cpu_seconds": [...] process CPU time, "device"}.
    threads > 0 sets torch's thread count. A killed child raises SeqfitError.
    """
    spec = {"config": to_dict(cfg), "data_dir": str(data_dir), "steps": steps, "threads": threads}
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    try:
        proc = subprocess.run([sys.executable, "-m", "seqfit.memory.probe"], input=json.dumps(spec), text=True,
                              capture_output=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise SeqfitError(f"the memory probe did not finish in {timeout:.0f} s") from None
    if proc.returncode != 0:
        how = "was killed (out of memory?)" if proc.returncode < 0 else f"failed (exit {proc.returncode})"
        tail = proc.stderr.strip().splitlines()[-1:] or [""]
        raise SeqfitError(f"the memory probe {how}: {tail[0]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


class _Sampler(threading.Thread):
    def __init__(self, read):
        super().__init__(daemon=True)
        self.read, self.peak, self.stop = read, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.002):
            self.peak = max(self.peak, self.read()[1])


def child_main(spec: dict) -> dict:
    from seqfit.memory.allocator import configure_allocator

    configure_allocator()
    from seqfit.measure.memory import read_peak_rss, read_resident, reset_peak_rss

    import torch

    import seqfit.cli.main  # noqa: F401  (the modules `seqfit train` has loaded: part of the runtime's baseline)

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    cfg = from_dict(spec["config"])
    baseline = read_resident()[1]
    if cfg.model.task == "classify":
        device, plan, step = _classifier_steps(cfg, Path(spec["data_dir"]))
    else:
        device, plan, step = _lm_steps(cfg, Path(spec["data_dir"]))
    cuda = device.type == "cuda"
    sampler = _Sampler(read_resident)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    sampler.start()
    times, cpu_times = [], []
    file_start = 0
    for i in range(spec["steps"]):
        if i == 1:  # the first step faults in library code (file pages); measure the kernel's peak after it
            reset_peak_rss()
            file_start = read_resident()[2]
        t0, c0 = time.perf_counter(), time.process_time()
        step(i)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    sampler.stop.set()
    sampler.join()
    rss, anon, file_end = read_resident()
    peak = read_peak_rss() - file_start if spec["steps"] > 1 else 0
    result = {"device": device.type, "peak_bytes": max(peak, sampler.peak), "peak_anon_sampled": sampler.peak,
              "baseline_bytes": baseline, "file_drift": file_end - file_start, "step_seconds": times,
              "step_cpu_seconds": cpu_times, "end_anon": anon, "plan": plan}
    if cuda:
        result["peak_bytes"] = torch.cuda.max_memory_reserved()
        result["peak_allocated"] = torch.cuda.max_memory_allocated()
    return result


def _lm_steps(cfg: RunCfg, data_dir: Path):
    """(device, plan, step(i)) training the language model on consecutive batches, state carried."""
    from seqfit.engine.loop import TrainSession
    from seqfit.engine.step import lm_train_step

    s = TrainSession.build(cfg, data_dir)
    carried = {"state": s.model.init_state(s.plan["batch_size"], device=s.device)}
    s.model.train()

    def step(i: int) -> None:
        x, y = (v.to(s.device) for v in s.batches.batch(i % len(s.batches)))
        result = lm_train_step(s.model, x, y, carried["state"], accumulate=s.plan["accumulate"], precision=s.precision,
                               optimizer=s.optimizer, clip=cfg.train.clip)
        carried["state"] = result.state

    return s.device, s.plan, step


def _classifier_steps(cfg: RunCfg, data_dir: Path):
    """(device, plan, step(i)) training the classifier on its largest batches every step: the worst case."""
    from seqfit.engine.classify_session import ClassifierSession

    s = ClassifierSession.build(cfg, data_dir)
    group = s.largest_batches()
    s.model.train()

    return s.device, s.plan, lambda i: s.step(group)


if __name__ == "__main__":
    print(json.dumps(child_main(json.loads(sys.stdin.read()))))
