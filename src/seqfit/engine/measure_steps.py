"""The child process of seqfit.memory.probe.measure_run: real training steps of a config, measured.

Reads {"config", "data_dir", "steps", "threads"} as JSON on stdin, prints the measurements as JSON (see
measure_run for the keys and memory/probe.py for what "peak" means). Every step trains on the task's
probe group: a language model's consecutive batches, a classifier's largest batches (the worst case).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

from seqfit.config import from_dict

__all__ = ["child_main"]


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
    import click  # noqa: F401  (with the engine: the modules `seqfit train` has loaded, part of the runtime's baseline)
    import torch
    import tqdm  # noqa: F401

    import seqfit.engine.loop  # noqa: F401
    from seqfit.engine.session import Session
    from seqfit.measure.memory import read_peak_rss, read_resident, reset_peak_rss

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    cfg = from_dict(spec["config"])
    baseline = read_resident()[1]
    s = Session.build(cfg, Path(spec["data_dir"]))
    device, plan = s.device, s.plan
    s.model.train()

    def step(i: int) -> None:
        s.step(s.task.probe_group(i))

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


if __name__ == "__main__":
    print(json.dumps(child_main(json.loads(sys.stdin.read()))))
