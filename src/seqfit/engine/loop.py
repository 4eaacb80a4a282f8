"""`seqfit train`: the one training loop, for every task (engine/task.py says what a task supplies).

    plan (under --budget)  ->  Session (task, model, optimizer, precision, schedule)  ->  run directory
    while steps remain:
        epoch over?  validate, let the schedule see it, start the next epoch
        one optimizer step (engine/step.py); watchdog; metrics and progress; validation; checkpoint
    checkpoint, final validation, summary.json
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path


from seqfit.atomic import write_text_atomic
from seqfit.config import RunCfg
from seqfit.device import resolve_device
from seqfit.engine.checkpoint import has_checkpoint, load_checkpoint, save_checkpoint
from seqfit.engine.rng import rng_state
from seqfit.engine.run_control import Silent, StopSignals, quiet, restore_rank_state, to_cpu
from seqfit.engine.run_files import (
    budget_bytes,
    mean_throughput,
    start_run_dir,
    trim_metrics,
)
from seqfit.engine.session import Session
from seqfit.engine.task import add_stats, no_phase
from seqfit.errors import MemoryBudgetExceeded, SeqfitError
from seqfit.measure.memory import MemorySampler, format_bytes
from seqfit.measure.metrics import MetricsLog
from seqfit.measure.profile import PhaseProfiler
from seqfit.measure.progress import Progress
from seqfit.memory.allocator import configure_allocator
from seqfit.memory.plan import data_info_for, plan_for_budget
from seqfit.memory.watchdog import Watchdog
from seqfit.models.build import count_parameters

__all__ = ["train"]


def train(cfg: RunCfg, data_dir: Path, run_dir: Path, *, resume: bool = False, echo=print,
          profile: bool = False, tensorboard: bool = False) -> dict:
    """Train (or resume) the run ``cfg`` asks for; returns the summary also written to RUN_DIR/summary.json.
    Under torchrun every rank calls this; rank 0 alone writes and speaks (engine/distributed.py)."""
    run_dir = Path(run_dir)
    if not resume and (has_checkpoint(run_dir) or (run_dir / "metrics.jsonl").exists()):
        raise SeqfitError(f"{run_dir} already holds a run; use --resume to continue it or choose another --out")
    if resolve_device(cfg.memory.device).type == "cpu":
        # before any tensor, the planner's included (its first use on a machine times the fp32 product library):
        # freed tensors >= 64 KiB return to the kernel, and PyTorch reads THP_MEM_ALLOC_ENABLE at its first
        # CPU allocation (memory/allocator.py)
        configure_allocator()
    budget = budget_bytes(cfg)
    if budget and not resume:  # a resumed run keeps the plan its config.toml holds; a budget is per process
        choice = plan_for_budget(cfg, data_info_for(cfg, data_dir), budget)  # BudgetError: nothing built yet
        cfg = choice.cfg
        plan_line = (f"--budget {format_bytes(budget)}: predicted peak {format_bytes(choice.plan['predicted_peak_bytes'])}, "
                     f"{choice.plan['reason']}")
    s = Session.build(cfg, data_dir, warn=echo)  # checks data and options before anything is written
    task, t, dist = s.task, cfg.train, s.dist
    if not dist.main:
        echo = quiet
    if budget and not resume:
        echo(plan_line)
    step, epoch, position = 0, 0, 0
    if resume:  # before anything is written: a checkpoint that does not fit leaves the run as it was
        saved = load_checkpoint(run_dir, s.module)
        try:
            s.optimizer.load_state_dict(saved["optimizer"])
            s.schedule.load_state_dict(saved["schedule"])
            s.precision.load_state_dict(saved["precision"])
            step, epoch, position = saved["step"], saved["epoch"], saved["batch_index"]
            s.average.load_state_dict(saved.get("weight_average"))  # the raw weights back under the mean
            restore_rank_state(saved, task, dist, cfg, echo)
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise SeqfitError(f"the checkpoint in {run_dir} is incomplete or from another run ({e!r})") from None
    dist.barrier()  # every rank has checked the run directory (and its checkpoint) before rank 0 writes to it
    if dist.main:
        start_run_dir(run_dir, cfg, data_dir)
        if resume:
            trim_metrics(run_dir / "metrics.jsonl", step)
    if dist.main:
        write_text_atomic(run_dir / "plan.json", json.dumps({"plan": s.plan, "world_size": dist.world}, indent=1))
    echo(f"plan: {task.describe(s.module)}" + (f", {dist.world} processes" if dist.enabled else ""))

    def checkpoint() -> None:
        mine = {**task.state_dict(), "rng": rng_state()}
        ranks = dist.gather(to_cpu(mine) if dist.enabled else mine)
        if dist.main:
            per_rank = ranks[0] if not dist.enabled else {"ranks": ranks, "world_size": dist.world}
            state = {"step": step, "epoch": epoch, "batch_index": position, **per_rank,
                     "optimizer": s.optimizer.state_dict(), "schedule": s.schedule.state_dict(),
                     "precision": s.precision.state_dict(), "plan": s.plan, "weight_average": s.average.state_dict()}
            with s.average.swapped():  # the model file holds what inference should use
                save_checkpoint(run_dir, s.module, state)
        dist.barrier()

    def validate(progress) -> dict | None:
        nonlocal window_start
        started = time.perf_counter()
        with s.average.swapped():  # every rank: the same numbers, no rank waits on another
            result = task.validate(s.module, s.precision)
        window_start += time.perf_counter() - started  # the throughput window counts training time only
        if result is not None:
            result["step"] = step
            log.write({"kind": "valid", "step": step, "epoch": epoch, **result})
            if progress is not None:
                progress.write(f"step {step} epoch {epoch}: {task.describe_valid(result)}")
        return result

    total_steps = s.total_steps()
    log = MetricsLog(run_dir / "metrics.jsonl", append=resume, tensorboard_dir=run_dir / "tensorboard" if tensorboard else None) if dist.main else Silent()
    profiler = PhaseProfiler(s.device) if profile else None
    sampler = MemorySampler(interval=0.05, keep_timeline=True)
    progress = Progress(total_steps, desc="train", initial=step) if dist.main else Silent()
    watchdog = Watchdog(budget, sampler, s.device.type) if budget else None
    stop = StopSignals(echo)
    over_budget, out_of_time, last_valid = None, False, None
    window: dict[str, float] = {}
    window_start = time.perf_counter()
    deadline = time.monotonic() + t.max_minutes * 60 if t.max_minutes else math.inf
    # CPU time of the whole process (every thread, validation too) from here on: on a machine that other jobs
    # share, a run gets the same work done in its budget however long the wall clock takes
    cpu_deadline = time.process_time() + t.max_cpu_minutes * 60 if t.max_cpu_minutes else math.inf
    out_of_cpu = False
    if t.max_cpu_minutes:
        s.schedule.budget(t.max_cpu_minutes * 60)  # a cosine schedule ends with the budget
    cpu_mark = time.process_time()
    s.model.train()
    try:
        with sampler, stop:
            while step < total_steps:
                groups = task.epoch_groups(epoch)
                if position >= len(groups):  # epoch done: validate, anneal, next epoch
                    epoch, position = epoch + 1, 0
                    task.start_epoch()
                    last_valid = validate(progress)
                    if last_valid is not None:
                        s.schedule.on_validation(last_valid["loss"])
                        if s.average.on_validation(last_valid["loss"]):
                            progress.write(f"step {step}: validation stopped improving; averaging the weights (NT-ASGD)")
                    continue
                stats = s.step(groups[position], phase=profiler.phase if profiler else no_phase)
                if profiler:
                    profiler.step_done()
                step, position = step + 1, position + 1
                try:
                    if watchdog:
                        watchdog.check(step)
                except MemoryBudgetExceeded as e:
                    over_budget = e
                # every rank stops after the same step: a signal, the budget or the clock on any of them; and
                # every rank's schedule counts the same CPU seconds (the ranks' mean), so their lrs agree
                now_cpu = time.process_time()
                *flags, cpu_used = dist.sum([float(stop.requested), float(over_budget is not None),
                                             float(time.monotonic() > deadline), float(now_cpu > cpu_deadline),
                                             now_cpu - cpu_mark])
                stopping, over_anywhere, out_of_time, out_of_cpu = (v > 0 for v in flags)
                cpu_mark = now_cpu
                s.schedule.step(cpu_used / dist.world)
                if not math.isfinite(stats["loss_sum"]):
                    raise SeqfitError(f"the loss became {stats['loss_sum']} at step {step}: lower --lr or use --clip")
                add_stats(window, {k: v for k, v in stats.items() if k != "stepped"})
                if (step % t.log_every == 0 or step == total_steps or out_of_time or out_of_cpu or stopping
                        or over_anywhere):
                    keys = sorted(window)
                    window = dict(zip(keys, dist.sum([window[k] for k in keys])))  # the whole batch's numbers
                    rate = window["tokens"] / (time.perf_counter() - window_start)
                    metrics, mem = task.train_metrics(window), sampler.last
                    log.write({"kind": "train", "step": step, "epoch": epoch, **metrics,
                               "lr": s.optimizer.param_groups[0]["lr"], "tokens_per_s": rate,
                               "rss": mem.rss, "anon": mem.anon, "cuda_allocated": mem.cuda_allocated})
                    progress.update(step - progress.n, **{k: f"{v:.3f}" for k, v in metrics.items()},
                                    tok_s=f"{rate:,.0f}", mem=format_bytes(mem.rss))
                    window, window_start = {}, time.perf_counter()
                if stopping or over_anywhere:
                    over_budget = over_budget or (MemoryBudgetExceeded(
                        f"another process of this run crossed --budget at step {step}; a checkpoint was written, "
                        "continue with --resume") if over_anywhere else None)
                    break
                if t.eval_every and step % t.eval_every == 0:
                    last_valid = validate(progress)
                if t.checkpoint_every and step % t.checkpoint_every == 0:
                    checkpoint()
                if out_of_time:
                    progress.write(f"--max-minutes {t.max_minutes:g} reached at step {step}")
                    break
                if out_of_cpu:
                    progress.write(f"--max-cpu-minutes {t.max_cpu_minutes:g} reached at step {step}")
                    break
    finally:
        progress.close()
        if profiler:
            profiler.close()
            if dist.main:
                write_text_atomic(run_dir / "profile.json", json.dumps(profiler.to_json(), indent=1))
            echo(profiler.format_table())
    if position >= len(task.epoch_groups(epoch)):  # the last step ended an epoch
        epoch, position = epoch + 1, 0
        task.start_epoch()
    checkpoint()
    if over_budget is not None or stop.requested:
        log.close()
        if over_budget is not None:
            raise over_budget
        raise SeqfitError(f"interrupted at step {step}; checkpoint saved, continue with --resume")
    if last_valid is None or last_valid["step"] != step:
        last_valid = validate(None)
    summary = {"step": step, "epoch": epoch, "parameters": count_parameters(s.module), "plan": s.plan,
               **task.summary(last_valid), "peak_rss": sampler.peak_rss, "peak_anon": sampler.peak_anon,
               "tokens_per_s": mean_throughput(run_dir / "metrics.jsonl") if dist.main else None,
               "world_size": dist.world}
    log.write({"kind": "end", **{k: v for k, v in summary.items() if k != "plan"}})
    log.close()
    if dist.main:
        write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=1))
        write_text_atomic(run_dir / "memory_timeline.json", json.dumps(sampler.timeline))
    dist.barrier()
    return summary
