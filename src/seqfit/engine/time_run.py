"""A few real training steps, timed phase by phase, read against the machine's matrix-product ceilings.

`seqfit profile --time` runs the configured run's steps (on the task's probe groups, as the memory
profile does; nothing is written) under a TimeProfiler, after ``warmup`` untimed steps (the first
step picks kernels and maps fresh memory). For a language model the forward and backward phases are
cut into embedding, recurrent and output parts by hooks that only read the clock:

    forward     embedding  the embedding module's call          (forward hooks: pre and post)
                recurrent  the recurrent stack's call
                other      dropout and the rest
    backward    output     from the start to the gradient of the stack's output: the loss and the output
                           layer's backward (and the dropout between)
                recurrent  from there to the gradient of the embedding's output
                embedding  the rest: the embedding's backward

The hooks return nothing, so the gradients and the results are those of an unhooked step. Other tasks
keep their phases whole (a classifier's checkpointed or chunked runs call the embedding once per chunk,
in forward and in recomputation: a split there would mislabel).
"""

from __future__ import annotations

import statistics
from pathlib import Path

import torch

from seqfit.config import RunCfg
from seqfit.engine.session import Session
from seqfit.measure.ceilings import best_ceiling
from seqfit.measure.flops import step_flops
from seqfit.measure.time_profile import TimeProfiler
from seqfit.memory.allocator import configure_allocator

__all__ = ["time_steps", "time_report", "part_hooks", "MAX_STEPS"]


MAX_STEPS = 500  # the most timed steps ``min_seconds`` may ask for


def time_steps(cfg: RunCfg, data_dir: Path, steps: int, warmup: int = 1,
               min_seconds: float = 0.0) -> tuple[Session, TimeProfiler, list[dict]]:
    """Build the run, take ``warmup`` untimed steps, then ``steps`` timed ones, and more until the timed steps
    add up to ``min_seconds`` (at most MAX_STEPS: a short step timed a few times is noise); returns the
    session, the profiler and each timed step's statistics with its model FLOPs ("flops", None where not
    counted)."""
    device = torch.device("cuda" if cfg.memory.device != "cpu" and torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        configure_allocator()  # as `seqfit train` does: time the allocator training will run with
    s = Session.build(cfg, data_dir)
    s.model.train()
    prof = TimeProfiler(s.device)
    handles = part_hooks(s.module, prof) if s.task.name == "lm" else []
    stats = []
    try:
        for i in range(warmup):
            s.step(s.task.probe_group(i))
        i = warmup
        while len(stats) < steps or (sum(prof.step_seconds()) < min_seconds and len(stats) < MAX_STEPS):
            with prof.step():
                step = s.step(s.task.probe_group(i), phase=prof.phase)
            stats.append({**step, "flops": step_flops(s.task.name, s.module, step)})
            i += 1
    finally:
        for h in handles:
            h.remove()
    return s, prof, stats


def part_hooks(model: torch.nn.Module, prof: TimeProfiler) -> list:
    """Hooks on ``model.embedding`` and ``model.rnn`` that cut forward and backward into parts (module
    docstring); returns their handles (``.remove()`` each)."""
    handles = []
    for name, grad_label in (("embedding", "embedding"), ("rnn", "recurrent")):
        module = getattr(model, name, None)
        if module is None:
            continue
        label = "recurrent" if name == "rnn" else name

        def pre(mod, args, label=label):
            if prof.current == "forward":
                prof.switch(label)

        def post(mod, args, out, grad_label=grad_label):
            if prof.current != "forward":
                return None  # e.g. a recomputation inside backward
            prof.switch("other")
            out = out[0] if isinstance(out, tuple) else out  # the stack returns (outputs (B, T, H), state)
            if isinstance(out, torch.Tensor) and out.requires_grad:
                out.register_hook(lambda grad: prof.switch(grad_label))  # returns None: the gradient is unchanged
            return None

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    return handles


def time_report(session: Session, prof: TimeProfiler, stats: list[dict], ceilings: dict) -> dict:
    """The profile with the step's tokens/s, model FLOP/s and its fraction of the ceiling of the run's precision,
    from the mean step (as the phases are), and again from the median step ("median": a few steps slowed by
    another process on the machine move the mean, not the median)."""
    profile = prof.to_json()
    tokens = sum(s["tokens"] for s in stats) / max(1, len(stats))
    flops = [s["flops"] for s in stats]
    flops_per_step = sum(flops) / len(flops) if flops and None not in flops else None
    precision = session.plan["precision"]
    best = best_ceiling(ceilings, precision)

    def rates(seconds: float) -> dict:
        achieved = flops_per_step / seconds if flops_per_step is not None and seconds > 0 else None
        return {"tokens_per_second": tokens / seconds if seconds > 0 else None, "achieved_flops": achieved,
                "fraction_of_ceiling": achieved / (best[1] * 1e9) if achieved is not None and best else None}

    median = statistics.median(prof.step_seconds()) if prof.steps else 0.0
    return {"plan": session.plan, "precision": precision, "tokens_per_step": tokens,
            "flops_per_step": flops_per_step, **rates(profile["phases"]["step"]["seconds"]),
            "median": {"seconds": median, **rates(median)},
            "ceiling": {"path": best[0], "gflops": best[1]} if best else None, "ceilings": ceilings, **profile}
