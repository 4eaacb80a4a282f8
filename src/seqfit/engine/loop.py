"""`seqfit train` for language models: the one readable loop that wires the components together."""

from __future__ import annotations

import json
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from seqfit.atomic import write_text_atomic
from seqfit.config import RunCfg, lm_bptt
from seqfit.data.batching import StreamBatches
from seqfit.data.store import TokenStore
from seqfit.device import resolve_device
from seqfit.errors import MemoryBudgetExceeded, SeqfitError
from seqfit.measure.memory import MemorySampler, format_bytes
from seqfit.measure.metrics import MetricsLog
from seqfit.measure.profile import PhaseProfiler
from seqfit.measure.progress import Progress
from seqfit.memory import (
    Watchdog,
    configure_allocator,
    data_info_from_dir,
    plan_for_budget,
)
from seqfit.models.build import build_model, count_parameters
from seqfit.models.heads import choose_loss_kind
from seqfit.nn.recurrent import detach_state
from seqfit.engine.checkpoint import has_checkpoint, load_checkpoint, save_checkpoint
from seqfit.engine.evaluate import evaluate_lm
from seqfit.nn.optim import optimizer_for
from seqfit.nn.precision import make_precision
from seqfit.engine.rng import rng_state, seed_everything, set_rng_state
from seqfit.engine.run_files import budget_bytes, mean_throughput, start_run_dir, trim_metrics
from seqfit.engine.schedule import make_schedule
from seqfit.engine.step import lm_train_step, no_phase

__all__ = ["TrainSession", "resolve_plan", "train"]


def resolve_plan(cfg: RunCfg, store: TokenStore, device: torch.device) -> dict:
    """The memory settings this run uses (the planner fills these in under a budget)."""
    mem = cfg.memory
    accumulate = mem.accumulate
    if mem.effective_batch:
        if mem.effective_batch % cfg.train.batch_size:
            raise SeqfitError(f"--effective-batch {mem.effective_batch} is not a multiple of --batch-size {cfg.train.batch_size}")
        accumulate = mem.effective_batch // cfg.train.batch_size
    loss = mem.loss
    if loss == "auto":
        loss = choose_loss_kind(len(store.vocab), cfg.train.batch_size * lm_bptt(cfg.train), None)
    return {"device": device.type, "precision": mem.precision, "loss": loss, "loss_chunk": mem.loss_chunk,
            "micro_batch": cfg.train.batch_size, "accumulate": accumulate,
            "batch_size": cfg.train.batch_size * accumulate, "bptt": lm_bptt(cfg.train),
            "checkpoint_time": mem.checkpoint_time, "optimizer": cfg.train.optimizer}


@dataclass
class TrainSession:
    """Everything a step needs, built once from the resolved config."""

    cfg: RunCfg
    plan: dict
    store: TokenStore
    device: torch.device
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    precision: object
    schedule: object
    batches: StreamBatches

    @classmethod
    def build(cls, cfg: RunCfg, data_dir: Path) -> "TrainSession":
        store = TokenStore(data_dir)
        device = resolve_device(cfg.memory.device)
        plan = resolve_plan(cfg, store, device)
        seed_everything(cfg.train.seed)
        model = build_model(cfg, store.vocab, loss_kind=plan["loss"]).to(device)
        precision = make_precision(plan["precision"], device)
        optimizer, lr = optimizer_for(cfg.train, model)
        batches = StreamBatches(store.split("train"), plan["batch_size"], plan["bptt"])
        total = cfg.train.max_steps or cfg.train.epochs * len(batches)
        schedule = make_schedule(cfg.train.schedule, optimizer, base_lr=lr, total_steps=total,
                                 warmup=cfg.train.warmup)
        return cls(cfg, plan, store, device, model, optimizer, precision, schedule, batches)

    def validate(self) -> dict | None:
        if not self.store.has_split("valid"):
            return None
        return evaluate_lm(self.model, self.store.split("valid"), batch_size=self.plan["micro_batch"],
                           bptt=self.plan["bptt"], device=self.device, precision=self.precision,
                           max_batches=self.cfg.train.eval_batches)


def train(cfg: RunCfg, data_dir: Path, run_dir: Path, *, resume: bool = False, echo=print,
          profile: bool = False, tensorboard: bool = False) -> dict:
    """Train (or resume) a language model; returns the summary also written to RUN_DIR/summary.json."""
    run_dir = Path(run_dir)
    if not resume and (has_checkpoint(run_dir) or (run_dir / "metrics.jsonl").exists()):
        raise SeqfitError(f"{run_dir} already holds a run; use --resume to continue it or choose another --out")
    budget = budget_bytes(cfg)
    if budget and not resume:  # a resumed run keeps the plan its config.toml holds
        choice = plan_for_budget(cfg, data_info_from_dir(data_dir), budget)  # BudgetError: nothing built yet
        cfg = choice.cfg
        echo(f"--budget {format_bytes(budget)}: predicted peak {format_bytes(choice.plan['predicted_peak_bytes'])}, "
             f"{choice.plan['reason']}")
    if resolve_device(cfg.memory.device).type == "cpu":
        configure_allocator()  # before any tensor: freed tensors >= 64 KiB return to the kernel (memory/allocator.py)
    s = TrainSession.build(cfg, data_dir)  # checks data and options before anything is written
    start_run_dir(run_dir, cfg, data_dir)
    t = cfg.train
    step, epoch, batch_index = 0, 0, 0
    state = s.model.init_state(s.plan["batch_size"], device=s.device)
    if resume:
        saved = load_checkpoint(run_dir, s.model)
        s.optimizer.load_state_dict(saved["optimizer"])
        s.schedule.load_state_dict(saved["schedule"])
        s.precision.load_state_dict(saved["precision"])
        step, epoch, batch_index = saved["step"], saved["epoch"], saved["batch_index"]
        state = [tuple(x.to(s.device) for x in l) if isinstance(l, tuple) else l.to(s.device) for l in saved["hidden"]]
        set_rng_state(saved["rng"])
        trim_metrics(run_dir / "metrics.jsonl", step)
    write_text_atomic(run_dir / "plan.json", json.dumps({"plan": s.plan}, indent=1))
    echo(f"plan: {_describe(s)}")

    def checkpoint() -> None:
        save_checkpoint(run_dir, s.model, {
            "step": step, "epoch": epoch, "batch_index": batch_index, "hidden": detach_state(state),
            "optimizer": s.optimizer.state_dict(), "schedule": s.schedule.state_dict(),
            "precision": s.precision.state_dict(), "rng": rng_state(), "plan": s.plan})

    total_steps = t.max_steps or t.epochs * len(s.batches)
    log = MetricsLog(run_dir / "metrics.jsonl", append=resume, tensorboard_dir=run_dir / "tensorboard" if tensorboard else None)
    profiler = PhaseProfiler(s.device) if profile else None
    sampler = MemorySampler(interval=0.05, keep_timeline=True)
    progress = Progress(total_steps, desc="train", initial=step)
    interrupted = False
    watchdog = Watchdog(budget, sampler, s.device.type) if budget else None
    over_budget: MemoryBudgetExceeded | None = None
    last_valid: dict | None = None
    window_tokens, window_start = 0, time.perf_counter()
    deadline = time.monotonic() + t.max_minutes * 60 if t.max_minutes else math.inf
    previous_sigterm = signal.signal(signal.SIGTERM, signal.default_int_handler)
    s.model.train()
    try:
        with sampler:
            while step < total_steps:
                if batch_index == len(s.batches):  # epoch done: validate, anneal, restart the streams
                    epoch, batch_index = epoch + 1, 0
                    state = s.model.init_state(s.plan["batch_size"], device=s.device)
                    last_valid = _validate(s, log, step, epoch, progress)
                    if last_valid is not None:
                        s.schedule.on_validation(last_valid["loss"])
                    window_start = time.perf_counter()
                phase = profiler.phase if profiler else no_phase
                with phase("data"):
                    x, y = (v.to(s.device, non_blocking=True) for v in s.batches.batch(batch_index))
                result = lm_train_step(s.model, x, y, state, accumulate=s.plan["accumulate"],
                                       precision=s.precision, optimizer=s.optimizer, clip=t.clip, phase=phase)
                if profiler:
                    profiler.step_done()
                state = result.state
                s.schedule.step()
                step, batch_index = step + 1, batch_index + 1
                if watchdog:
                    watchdog.check(step)  # MemoryBudgetExceeded: this step is checkpointed below, exit 4
                window_tokens += result.tokens
                loss = result.loss_sum / result.tokens
                if not math.isfinite(loss):
                    raise SeqfitError(f"the loss became {loss} at step {step}: lower --lr or use --clip")
                out_of_time = time.monotonic() > deadline
                if step % t.log_every == 0 or step == total_steps or out_of_time:
                    elapsed = time.perf_counter() - window_start
                    mem = sampler.last
                    log.write({"kind": "train", "step": step, "epoch": epoch, "loss": loss,
                               "lr": s.optimizer.param_groups[0]["lr"], "tokens_per_s": window_tokens / elapsed,
                               "rss": mem.rss, "anon": mem.anon, "cuda_allocated": mem.cuda_allocated})
                    progress.update(step - progress.n, loss=f"{loss:.3f}", tok_s=f"{window_tokens / elapsed:,.0f}",
                                    mem=format_bytes(mem.rss))
                    window_tokens, window_start = 0, time.perf_counter()
                if t.eval_every and step % t.eval_every == 0:
                    last_valid = _validate(s, log, step, epoch, progress)
                    window_start = time.perf_counter()
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
    if batch_index == len(s.batches):  # the last step ended an epoch
        epoch, batch_index = epoch + 1, 0
        state = s.model.init_state(s.plan["batch_size"], device=s.device)
    checkpoint()
    if over_budget is not None:
        log.close()
        raise over_budget
    if interrupted:
        log.close()
        raise SeqfitError(f"interrupted at step {step}; checkpoint saved, continue with --resume")
    if last_valid is None or last_valid["step"] != step:
        last_valid = _validate(s, log, step, epoch, None)
    summary = {"step": step, "epoch": epoch, "parameters": count_parameters(s.model), "plan": s.plan,
               "valid_loss": last_valid and last_valid["loss"], "valid_ppl": last_valid and last_valid["ppl"],
               "peak_rss": sampler.peak_rss, "peak_anon": sampler.peak_anon,
               "tokens_per_s": mean_throughput(run_dir / "metrics.jsonl")}
    log.write({"kind": "end", **{k: v for k, v in summary.items() if k != "plan"}})
    log.close()
    write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=1))
    write_text_atomic(run_dir / "memory_timeline.json", json.dumps(sampler.timeline))
    return summary


def _validate(s: TrainSession, log: MetricsLog, step: int, epoch: int, progress) -> dict | None:
    result = s.validate()
    if result is not None:
        result["step"] = step
        log.write({"kind": "valid", "step": step, "epoch": epoch, **result})
        if progress is not None:
            progress.write(f"step {step} epoch {epoch}: valid loss {result['loss']:.3f} ppl {result['ppl']:.2f}")
    return result


def _describe(s: TrainSession) -> str:
    p = s.plan
    return (f"{p['device']} {p['precision']}, batch {p['micro_batch']} x {p['accumulate']} accumulated, "
            f"bptt {p['bptt']}, loss {p['loss']}, optimizer {p['optimizer']}, "
            f"{count_parameters(s.model):,} parameters")
