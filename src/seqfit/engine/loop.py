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
import signal
import time
from pathlib import Path

from seqfit.atomic import write_text_atomic
from seqfit.config import RunCfg
from seqfit.device import resolve_device
from seqfit.engine.checkpoint import has_checkpoint, load_checkpoint, save_checkpoint
from seqfit.engine.rng import rng_state, set_rng_state
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
    """Train (or resume) the run ``cfg`` asks for; returns the summary also written to RUN_DIR/summary.json."""
    run_dir = Path(run_dir)
    if not resume and (has_checkpoint(run_dir) or (run_dir / "metrics.jsonl").exists()):
        raise SeqfitError(f"{run_dir} already holds a run; use --resume to continue it or choose another --out")
    budget = budget_bytes(cfg)
    if budget and not resume:  # a resumed run keeps the plan its config.toml holds
        choice = plan_for_budget(cfg, data_info_for(cfg, data_dir), budget)  # BudgetError: nothing built yet
        cfg = choice.cfg
        echo(f"--budget {format_bytes(budget)}: predicted peak {format_bytes(choice.plan['predicted_peak_bytes'])}, "
             f"{choice.plan['reason']}")
    if resolve_device(cfg.memory.device).type == "cpu":
        configure_allocator()  # before any tensor: freed tensors >= 64 KiB return to the kernel (memory/allocator.py)
    s = Session.build(cfg, data_dir, warn=echo)  # checks data and options before anything is written
    task, t = s.task, cfg.train
    start_run_dir(run_dir, cfg, data_dir)
    step, epoch, position = 0, 0, 0
    if resume:
        saved = load_checkpoint(run_dir, s.model)
        s.optimizer.load_state_dict(saved["optimizer"])
        s.schedule.load_state_dict(saved["schedule"])
        s.precision.load_state_dict(saved["precision"])
        step, epoch, position = saved["step"], saved["epoch"], saved["batch_index"]
        task.load_state_dict(saved)
        set_rng_state(saved["rng"])
        trim_metrics(run_dir / "metrics.jsonl", step)
    write_text_atomic(run_dir / "plan.json", json.dumps({"plan": s.plan}, indent=1))
    echo(f"plan: {task.describe(s.model)}")

    def checkpoint() -> None:
        save_checkpoint(run_dir, s.model, {
            "step": step, "epoch": epoch, "batch_index": position, **task.state_dict(),
            "optimizer": s.optimizer.state_dict(), "schedule": s.schedule.state_dict(),
            "precision": s.precision.state_dict(), "rng": rng_state(), "plan": s.plan})

    def validate(progress: Progress | None) -> dict | None:
        nonlocal window_start
        started = time.perf_counter()
        result = task.validate(s.model, s.precision)
        window_start += time.perf_counter() - started  # the throughput window counts training time only
        if result is not None:
            result["step"] = step
            log.write({"kind": "valid", "step": step, "epoch": epoch, **result})
            if progress is not None:
                progress.write(f"step {step} epoch {epoch}: {task.describe_valid(result)}")
        return result

    total_steps = s.total_steps()
    log = MetricsLog(run_dir / "metrics.jsonl", append=resume, tensorboard_dir=run_dir / "tensorboard" if tensorboard else None)
    profiler = PhaseProfiler(s.device) if profile else None
    sampler = MemorySampler(interval=0.05, keep_timeline=True)
    progress = Progress(total_steps, desc="train", initial=step)
    watchdog = Watchdog(budget, sampler, s.device.type) if budget else None
    interrupted, over_budget, last_valid = False, None, None
    window: dict[str, float] = {}
    window_start = time.perf_counter()
    deadline = time.monotonic() + t.max_minutes * 60 if t.max_minutes else math.inf
    previous_sigterm = signal.signal(signal.SIGTERM, signal.default_int_handler)
    s.model.train()
    try:
        with sampler:
            while step < total_steps:
                groups = task.epoch_groups(epoch)
                if position >= len(groups):  # epoch done: validate, anneal, next epoch
                    epoch, position = epoch + 1, 0
                    task.start_epoch()
                    last_valid = validate(progress)
                    if last_valid is not None:
                        s.schedule.on_validation(last_valid["loss"])
                    continue
                stats = s.step(groups[position], phase=profiler.phase if profiler else no_phase)
                if profiler:
                    profiler.step_done()
                s.schedule.step()
                step, position = step + 1, position + 1
                if watchdog:
                    watchdog.check(step)  # MemoryBudgetExceeded: this step is checkpointed below, exit 4
                if not math.isfinite(stats["loss_sum"]):
                    raise SeqfitError(f"the loss became {stats['loss_sum']} at step {step}: lower --lr or use --clip")
                add_stats(window, {k: v for k, v in stats.items() if k != "stepped"})
                out_of_time = time.monotonic() > deadline
                if step % t.log_every == 0 or step == total_steps or out_of_time:
                    rate = window["tokens"] / (time.perf_counter() - window_start)
                    metrics, mem = task.train_metrics(window), sampler.last
                    log.write({"kind": "train", "step": step, "epoch": epoch, **metrics,
                               "lr": s.optimizer.param_groups[0]["lr"], "tokens_per_s": rate,
                               "rss": mem.rss, "anon": mem.anon, "cuda_allocated": mem.cuda_allocated})
                    progress.update(step - progress.n, **{k: f"{v:.3f}" for k, v in metrics.items()},
                                    tok_s=f"{rate:,.0f}", mem=format_bytes(mem.rss))
                    window, window_start = {}, time.perf_counter()
                if t.eval_every and step % t.eval_every == 0:
                    last_valid = validate(progress)
                if t.checkpoint_every and step % t.checkpoint_every == 0:
                    checkpoint()
                if out_of_time:
                    progress.write(f"--max-minutes {t.max_minutes:g} reached at step {step}")
                    break
    except KeyboardInterrupt:
        interrupted = True
    except MemoryBudgetExceeded as e:
        over_budget = e
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)
        progress.close()
        if profiler:
            profiler.close()
            write_text_atomic(run_dir / "profile.json", json.dumps(profiler.to_json(), indent=1))
            echo(profiler.format_table())
    if position >= len(task.epoch_groups(epoch)):  # the last step ended an epoch
        epoch, position = epoch + 1, 0
        task.start_epoch()
    checkpoint()
    if over_budget is not None or interrupted:
        log.close()
        if over_budget is not None:
            raise over_budget
        raise SeqfitError(f"interrupted at step {step}; checkpoint saved, continue with --resume")
    if last_valid is None or last_valid["step"] != step:
        last_valid = validate(None)
    summary = {"step": step, "epoch": epoch, "parameters": count_parameters(s.model), "plan": s.plan,
               **task.summary(last_valid), "peak_rss": sampler.peak_rss, "peak_anon": sampler.peak_anon,
               "tokens_per_s": mean_throughput(run_dir / "metrics.jsonl")}
    log.write({"kind": "end", **{k: v for k, v in summary.items() if k != "plan"}})
    log.close()
    write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=1))
    write_text_atomic(run_dir / "memory_timeline.json", json.dumps(sampler.timeline))
    return summary
