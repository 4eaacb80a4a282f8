"""`seqfit train --task classify`: sequence classification on a "sequences" store; accuracy and macro-F1.

How a micro-batch is backpropagated (the plan's "mode"):

    full       one call over the whole batch (each row over its valid steps): activations grow with T
    exact      --checkpoint-time k: chunks of k steps checkpointed, same gradients, O(T/k + k) kept
    truncated  --bptt k: each chunk of k steps backpropagated on its own; a sequence's loss is taken
               in the chunk holding its last step, and its gradient reaches k steps back at most

Batches come from TokenBudgetSampler (length-bucketed; --max-tokens bounds B x T). An optimizer step
takes --accumulate batches; every sequence's loss is divided by the step's sequence count, so the
step equals one big batch.
"""

from __future__ import annotations

import json
import math
import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from seqfit.atomic import write_text_atomic
from seqfit.config import RunCfg
from seqfit.data.buckets import TokenBudgetSampler
from seqfit.data.sequences import SequenceSplit, SequenceStore
from seqfit.device import resolve_device
from seqfit.errors import MemoryBudgetExceeded, SeqfitError
from seqfit.measure.memory import MemorySampler, format_bytes
from seqfit.measure.metrics import MetricsLog
from seqfit.measure.profile import PhaseProfiler
from seqfit.measure.progress import Progress
from seqfit.memory.allocator import configure_allocator
from seqfit.memory.watchdog import Watchdog
from seqfit.models.classifier import SequenceClassifier
from seqfit.nn.timechunk import truncated_chunks
from seqfit.engine.checkpoint import (
    has_checkpoint,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)
from seqfit.engine.classify_session import ClassifierSession, build_model
from seqfit.engine.rng import rng_state, set_rng_state
from seqfit.engine.run_files import (
    budget_bytes,
    inference_precision,
    mean_throughput,
    read_run,
    start_run_dir,
    trim_metrics,
)
from seqfit.engine.schedule import make_schedule
from seqfit.engine.step import no_phase

__all__ = ["resolve_classify_plan", "class_weights", "check_split", "classify_step", "evaluate_classifier",
           "sampler_for", "batch_to_device", "predict_classifier", "macro_f1", "load_classifier_run",
           "train_classifier", "LoadedClassifier"]


def resolve_classify_plan(cfg: RunCfg, device: torch.device) -> dict:
    mem, t = cfg.memory, cfg.train
    bptt = t.bptt
    if bptt and mem.checkpoint_time:
        raise SeqfitError("--bptt (truncated BPTT) and --checkpoint-time (exact checkpointing) exclude each other; "
                          "choose one")
    accumulate = mem.accumulate
    if mem.effective_batch:
        if mem.effective_batch % t.batch_size:
            raise SeqfitError(f"--effective-batch {mem.effective_batch} is not a multiple of --batch-size {t.batch_size}")
        accumulate = mem.effective_batch // t.batch_size
    return {"device": device.type, "precision": mem.precision, "micro_batch": t.batch_size,
            "max_tokens": mem.max_tokens, "accumulate": accumulate,
            "mode": "truncated" if bptt else "exact" if mem.checkpoint_time else "full",
            "bptt": bptt, "checkpoint_time": mem.checkpoint_time, "optimizer": t.optimizer,
            "max_length": t.max_length, "too_long": t.too_long, "class_weights": t.class_weights}


def class_weights(spec: str, labels: np.ndarray, num_classes: int) -> torch.Tensor | None:
    """"" -> None; "balanced" -> n / (C * count_c) (sklearn's rule); "1,2,0.5" -> those."""
    if not spec:
        return None
    if spec == "balanced":
        counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
        weights = np.where(counts > 0, len(labels) / (num_classes * np.maximum(counts, 1)), 0.0)
        return torch.tensor(weights, dtype=torch.float32)
    try:
        weights = [float(v) for v in spec.split(",")]
    except ValueError:
        raise SeqfitError(f"class weights must be 'balanced' or comma-separated numbers, got {spec!r}") from None
    if len(weights) != num_classes or min(weights) < 0:
        raise SeqfitError(f"class weights give {len(weights)} values; the data has {num_classes} classes "
                          "(and weights must be >= 0)")
    return torch.tensor(weights, dtype=torch.float32)


def check_split(split: SequenceSplit, store: SequenceStore, *, max_length: int, too_long: str,
                train_labels: set[int] | None = None, needs_labels: bool = True, warn=warnings.warn) -> None:
    """Fail (or warn) with one line about input the model cannot take."""
    name = split.name
    lengths = split.lengths
    if (empty := np.flatnonzero(lengths == 0)).size:
        raise SeqfitError(f"the {name} split has {empty.size} empty sequence(s) (first: #{empty[0]}); "
                          "remove them from the data and re-run `seqfit prepare`")
    if max_length and (over := np.flatnonzero(lengths > max_length)).size:
        what = f"{over.size} sequence(s) of the {name} split exceed the maximum length {max_length} (longest {lengths.max()})"
        if too_long == "error":
            raise SeqfitError(f"{what}; raise the maximum or let them be truncated")
        warn(f"warning: {what}; they are truncated to their first {max_length} steps")
    if not needs_labels:
        return
    if split.labels is None:
        raise SeqfitError(f"the {name} split has no labels; prepare it with --label-field")
    labels = np.asarray(split.labels)
    if labels.size and (labels.min() < 0 or labels.max() >= len(store.label_names)):
        raise SeqfitError(f"the {name} split has label ids outside 0..{len(store.label_names) - 1}; re-run `seqfit prepare`")
    if train_labels is not None:
        unseen = sorted(set(np.unique(labels).tolist()) - train_labels)
        if unseen:
            names = ", ".join(repr(store.label_names[i]) for i in unseen[:5])
            count = int(np.isin(labels, unseen).sum())
            raise SeqfitError(f"the {name} split has labels training never saw: {names} ({count} sequence(s)); "
                              "the model cannot predict them -- add examples to the training split")


def batch_to_device(split: SequenceSplit, indices, max_length: int, device: torch.device):
    x, lengths, y = split.batch(indices)  # (B, T) or (B, T, F); (B,); (B,)
    if max_length and x.shape[1] > max_length:
        x, lengths = x[:, :max_length], lengths.clamp(max=max_length)
    return x.to(device, non_blocking=True), lengths, y.to(device, non_blocking=True)


@dataclass
class StepResult:
    loss_sum: float  # summed (weighted) cross-entropy over the step's sequences
    correct: int
    count: int
    tokens: int
    stepped: bool


def _truncated_backward(model: SequenceClassifier, x, lengths, y, *, k: int, weight, denom: int, precision):
    """Truncated BPTT over one micro-batch; returns (summed loss, logits (B, C) without grad)."""
    B, T = x.shape[:2]
    pooled, logits_all, loss_sum = None, torch.zeros(B, model.num_classes, device=x.device), 0.0
    for chunk in truncated_chunks(model.rnn, model.chunk_inputs(x), None, lengths, k, total=T,
                                  context=precision.autocast):
        ending = ((lengths > chunk.start) & (lengths <= chunk.stop)).nonzero().squeeze(1)  # rows whose last step is here
        with precision.autocast():
            total = model.pool_contribution(chunk.out, chunk.start, lengths)  # (B, D)
            if pooled is not None:
                total = total + pooled
            if ending.numel():
                rows = ending.to(x.device)
                logits = model.classify(model.summarize(total.index_select(0, rows), lengths[ending]))  # (b, C)
                loss = F.cross_entropy(logits.float(), y.index_select(0, rows), weight=weight, reduction="sum")
        if ending.numel():
            precision.backward(loss / denom)
            loss_sum += loss.item()
            logits_all.index_copy_(0, rows, logits.detach().float())
        pooled = total.detach()  # the cut: earlier chunks get no gradient through the pooling either
    return loss_sum, logits_all


def classify_step(model: SequenceClassifier, micro: list, *, plan: dict, weight, precision,
                  optimizer: torch.optim.Optimizer, clip: float, phase=no_phase) -> StepResult:
    """One optimizer step over micro-batches [(x, lengths, y), ...]; ``phase(name)``: a profiler's hook."""
    optimizer.zero_grad(set_to_none=True)
    count = sum(len(y) for _, _, y in micro)
    loss_sum, correct, tokens = 0.0, 0, 0
    for x, lengths, y in micro:
        if plan["mode"] == "truncated":
            with phase("backward"):  # forward and backward interleave chunk by chunk
                part, logits = _truncated_backward(model, x, lengths, y, k=plan["bptt"], weight=weight,
                                                   denom=count, precision=precision)
        else:
            with phase("forward"), precision.autocast():
                logits = model(x, lengths)  # (B, C)
            with phase("loss"), precision.autocast():
                loss = F.cross_entropy(logits.float(), y, weight=weight, reduction="sum")
            with phase("backward"):
                precision.backward(loss / count)
            part = loss.item()
            del loss  # frees this micro-batch's graph before the next one is built
        loss_sum += part
        correct += int((logits.argmax(1) == y).sum())
        tokens += int(lengths.sum())
    with phase("optimizer"):
        precision.unscale_(optimizer)
        if clip > 0:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], clip)
        stepped = precision.step(optimizer)
    return StepResult(loss_sum, correct, count, tokens, stepped)


def macro_f1(pred: np.ndarray, true: np.ndarray, num_classes: int) -> float:
    """Mean F1 over the classes present in ``true`` or ``pred`` (as sklearn's f1_score(average="macro"))."""
    confusion = np.bincount(true * num_classes + pred, minlength=num_classes ** 2).reshape(num_classes, num_classes)
    tp = np.diag(confusion).astype(np.float64)
    fp, fn = confusion.sum(0) - tp, confusion.sum(1) - tp
    present = (tp + fp + fn) > 0
    return float((2 * tp[present] / (2 * tp[present] + fp[present] + fn[present])).mean()) if present.any() else 0.0


def sampler_for(split: SequenceSplit, plan: dict, *, shuffle: bool, seed: int = 0) -> TokenBudgetSampler:
    lengths = np.minimum(split.lengths, plan["max_length"]) if plan["max_length"] else split.lengths
    if plan["max_tokens"]:
        return TokenBudgetSampler(lengths, plan["max_tokens"], shuffle=shuffle, seed=seed)
    return TokenBudgetSampler(lengths, batch_size=plan["micro_batch"], shuffle=shuffle, seed=seed)


@torch.no_grad()
def predict_classifier(model: SequenceClassifier, split: SequenceSplit, plan: dict, *, device: torch.device,
                       precision, max_batches: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities (N, C) and the split's labels (N,) (-1: none), in the split's order."""
    was_training = model.training
    model.eval()
    probs = np.zeros((len(split), model.num_classes), dtype=np.float32)
    labels = np.full(len(split), -1, dtype=np.int64)
    seen = np.zeros(len(split), dtype=bool)
    for b, indices in enumerate(sampler_for(split, plan, shuffle=False).batches()):
        if max_batches and b >= max_batches:
            break
        x, lengths, y = batch_to_device(split, indices, plan["max_length"], device)
        with precision.autocast():
            logits = model(x, lengths)  # (B, C)
        probs[indices] = torch.softmax(logits.float(), 1).cpu().numpy()
        labels[indices] = y.cpu().numpy()
        seen[indices] = True
    model.train(was_training)
    return probs[seen], labels[seen]


def evaluate_classifier(model: SequenceClassifier, split: SequenceSplit, plan: dict, *, device: torch.device,
                        precision, weight=None, max_batches: int = 0) -> dict:
    """Mean (weighted) cross-entropy, accuracy and macro-F1 on a labelled split."""
    probs, labels = predict_classifier(model, split, plan, device=device, precision=precision, max_batches=max_batches)
    pred = probs.argmax(1)
    logp = torch.log(torch.from_numpy(probs).clamp(min=1e-30))
    loss = F.cross_entropy(logp, torch.from_numpy(labels), weight=None if weight is None else weight.cpu(), reduction="sum")
    return {"loss": loss.item() / max(1, len(labels)), "accuracy": float((pred == labels).mean()) if len(labels) else 0.0,
            "macro_f1": macro_f1(pred, labels, model.num_classes), "count": int(len(labels))}


@dataclass
class LoadedClassifier:
    cfg: RunCfg
    plan: dict
    store: SequenceStore
    model: SequenceClassifier
    device: torch.device
    precision: object


def load_classifier_run(run_dir: str | Path, *, data_dir: str | Path | None = None, device: str = "auto") -> LoadedClassifier:
    run_dir = Path(run_dir)
    cfg, plan, info = read_run(run_dir)
    if cfg.model.task != "classify":
        raise SeqfitError(f"{run_dir} holds a {cfg.model.task!r} model, not a classifier")
    store = SequenceStore(Path(data_dir or info["data_dir"]))
    dev = resolve_device(device)
    model = build_model(cfg, store)
    load_weights(run_dir, model)
    model.to(dev).eval()
    precision = inference_precision(plan["precision"], dev)
    return LoadedClassifier(cfg, plan, store, model, dev, precision)


def train_classifier(cfg: RunCfg, data_dir: Path, run_dir: Path, *, resume: bool = False, echo=print,
                     profile: bool = False, tensorboard: bool = False) -> dict:
    """Train (or resume) a sequence classifier; returns the summary also written to RUN_DIR/summary.json."""
    run_dir = Path(run_dir)
    if not resume and (has_checkpoint(run_dir) or (run_dir / "metrics.jsonl").exists()):
        raise SeqfitError(f"{run_dir} already holds a run; use --resume to continue it or choose another --out")
    device = resolve_device(cfg.memory.device)
    budget = budget_bytes(cfg)
    if budget and not resume:  # a resumed run keeps the plan its config.toml holds
        from seqfit.memory.plan import data_info_for, plan_for_budget

        choice = plan_for_budget(cfg, data_info_for(cfg, data_dir), budget)  # BudgetError: nothing built yet
        cfg = choice.cfg
        echo(f"--budget {format_bytes(budget)}: predicted peak {format_bytes(choice.plan['predicted_peak_bytes'])}, "
             f"{choice.plan['reason']}")
    if device.type == "cpu":
        configure_allocator()  # before any tensor: freed tensors >= 64 KiB return to the kernel (memory/allocator.py)
    t = cfg.train
    s = ClassifierSession.build(cfg, data_dir)  # checks the options; nothing is written before the data checks
    store, plan, train_split = s.store, s.plan, s.train_split
    check_split(train_split, store, max_length=plan["max_length"], too_long=plan["too_long"], warn=echo)
    seen = set(np.unique(np.asarray(train_split.labels)).tolist())
    valid = store.split("valid") if store.has_split("valid") else None
    if valid is not None:
        check_split(valid, store, max_length=plan["max_length"], too_long=plan["too_long"], train_labels=seen, warn=echo)
    start_run_dir(run_dir, cfg, data_dir)
    model, optimizer, precision, lr = s.model, s.optimizer, s.precision, s.lr
    weight = class_weights(plan["class_weights"], np.asarray(train_split.labels), model.num_classes)
    weight = None if weight is None else weight.to(device)
    sampler = sampler_for(train_split, plan, shuffle=True, seed=t.seed)
    steps_per_epoch = math.ceil(len(sampler) / plan["accumulate"])
    total_steps = t.max_steps or t.epochs * steps_per_epoch
    schedule = make_schedule(t.schedule, optimizer, base_lr=lr, total_steps=total_steps, warmup=t.warmup)
    step, epoch, batch_index = 0, 0, 0
    if resume:
        saved = load_checkpoint(run_dir, model)
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        precision.load_state_dict(saved["precision"])
        step, epoch, batch_index = saved["step"], saved["epoch"], saved["batch_index"]
        set_rng_state(saved["rng"])
        trim_metrics(run_dir / "metrics.jsonl", step)
    write_text_atomic(run_dir / "plan.json", json.dumps({"plan": plan}, indent=1))
    echo(f"plan: {plan['device']} {plan['precision']}, {plan['mode']} BPTT"
         + (f" (k={plan['bptt'] or plan['checkpoint_time']})" if plan["mode"] != "full" else "")
         + f", batch {plan['max_tokens'] and str(plan['max_tokens']) + ' tokens' or plan['micro_batch']}"
         + f" x {plan['accumulate']}, {len(store.label_names)} classes, {sum(p.numel() for p in model.parameters()):,} parameters")

    def checkpoint() -> None:
        save_checkpoint(run_dir, model, {
            "step": step, "epoch": epoch, "batch_index": batch_index, "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(), "precision": precision.state_dict(), "rng": rng_state(), "plan": plan})

    def validate() -> dict | None:
        if valid is None:
            return None
        result = evaluate_classifier(model, valid, plan, device=device, precision=precision, weight=weight,
                                     max_batches=t.eval_batches)
        log.write({"kind": "valid", "step": step, "epoch": epoch, **result})
        progress.write(f"step {step} epoch {epoch}: valid loss {result['loss']:.3f} accuracy {result['accuracy']:.3f} "
                       f"macro-F1 {result['macro_f1']:.3f}")
        return {"step": step, **result}

    log = MetricsLog(run_dir / "metrics.jsonl", append=resume, tensorboard_dir=run_dir / "tensorboard" if tensorboard else None)
    profiler = PhaseProfiler(device) if profile else None
    memory = MemorySampler(interval=0.05, keep_timeline=True)
    progress = Progress(total_steps, desc="train", initial=step)
    last_valid, interrupted = None, False
    watchdog = Watchdog(budget, memory, device.type) if budget else None
    over_budget: MemoryBudgetExceeded | None = None
    window = {"tokens": 0, "loss": 0.0, "correct": 0, "count": 0, "start": time.perf_counter()}
    deadline = time.monotonic() + t.max_minutes * 60 if t.max_minutes else math.inf
    previous_sigterm = signal.signal(signal.SIGTERM, signal.default_int_handler)
    model.train()
    try:
        with memory:
            while step < total_steps and (t.max_steps or epoch < t.epochs):
                sampler.set_epoch(epoch)
                batches = sampler.batches()
                if batch_index >= len(batches):  # epoch done: validate, anneal, next epoch
                    epoch, batch_index = epoch + 1, 0
                    last_valid = validate()
                    if last_valid is not None:
                        schedule.on_validation(last_valid["loss"])
                    window["start"] = time.perf_counter()
                    continue
                group = batches[batch_index:batch_index + plan["accumulate"]]
                result = s.step(group, weight=weight, phase=profiler.phase if profiler else no_phase)
                if profiler:
                    profiler.step_done()
                schedule.step()
                step, batch_index = step + 1, batch_index + len(group)
                if watchdog:
                    watchdog.check(step)  # MemoryBudgetExceeded: this step is checkpointed below, exit 4
                for key in ("tokens", "correct", "count"):
                    window[key] += getattr(result, key)
                window["loss"] += result.loss_sum
                if not math.isfinite(result.loss_sum):
                    raise SeqfitError(f"the loss became {result.loss_sum} at step {step}: lower --lr or use --clip")
                if step % t.log_every == 0 or step == total_steps:
                    elapsed = time.perf_counter() - window["start"]
                    mem = memory.last
                    loss, acc = window["loss"] / window["count"], window["correct"] / window["count"]
                    log.write({"kind": "train", "step": step, "epoch": epoch, "loss": loss, "accuracy": acc,
                               "lr": optimizer.param_groups[0]["lr"], "tokens_per_s": window["tokens"] / elapsed,
                               "rss": mem.rss, "anon": mem.anon, "cuda_allocated": mem.cuda_allocated})
                    progress.update(step - progress.n, loss=f"{loss:.3f}", acc=f"{acc:.3f}",
                                    tok_s=f"{window['tokens'] / elapsed:,.0f}", mem=format_bytes(mem.rss))
                    window.update(tokens=0, loss=0.0, correct=0, count=0, start=time.perf_counter())
                if t.eval_every and step % t.eval_every == 0:
                    last_valid = validate()
                    window["start"] = time.perf_counter()
                if t.checkpoint_every and step % t.checkpoint_every == 0:
                    checkpoint()
                if time.monotonic() > deadline:
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
    if batch_index >= len(sampler.batches()):  # the last step ended an epoch
        epoch, batch_index = epoch + 1, 0
    checkpoint()
    if over_budget is not None:
        log.close()
        raise over_budget
    if interrupted:
        log.close()
        raise SeqfitError(f"interrupted at step {step}; checkpoint saved, continue with --resume")
    if valid is not None and (last_valid is None or last_valid["step"] != step):
        last_valid = validate()
    summary = {"step": step, "epoch": epoch, "parameters": sum(p.numel() for p in model.parameters()), "plan": plan,
               "valid_loss": last_valid and last_valid["loss"], "valid_accuracy": last_valid and last_valid["accuracy"],
               "valid_macro_f1": last_valid and last_valid["macro_f1"], "valid_ppl": None,
               "peak_rss": memory.peak_rss, "peak_anon": memory.peak_anon,
               "tokens_per_s": mean_throughput(run_dir / "metrics.jsonl")}
    log.write({"kind": "end", **{k: v for k, v in summary.items() if k != "plan"}})
    log.close()
    write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=1))
    write_text_atomic(run_dir / "memory_timeline.json", json.dumps(memory.timeline))
    return summary
