"""The classification task: one label per sequence (texts or numeric sequences), accuracy and macro-F1.

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

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from seqfit.config import RunCfg
from seqfit.data.buckets import TokenBudgetSampler
from seqfit.data.sequences import SequenceSplit, SequenceStore
from seqfit.engine.bucketed import BucketedBatches
from seqfit.engine.distributed import Dist, unwrap
from seqfit.engine.task import NoCarriedState, no_phase
from seqfit.errors import SeqfitError
from seqfit.memory.plan_classify import requested_classify_plan
from seqfit.models.classifier import SequenceClassifier, build_classifier
from seqfit.nn.regularisers import new_batch
from seqfit.nn.timechunk import truncated_chunks

__all__ = ["ClassifierTask", "class_weights", "check_split", "micro_backward", "evaluate_classifier", "sampler_for",
           "batch_to_device", "predict_classifier", "macro_f1", "build_model"]


def build_model(cfg: RunCfg, store: SequenceStore) -> SequenceClassifier:
    return build_classifier(cfg, num_classes=len(store.label_names),
                            vocab_size=len(store.vocab) if store.vocab is not None else 0,
                            num_features=store.num_features)


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


def _truncated_backward(model: SequenceClassifier, x, lengths, y, *, k: int, weight, denom: int, precision):
    """Truncated BPTT over one micro-batch; returns (summed loss, logits (B, C) without grad)."""
    B, T = x.shape[:2]
    new_batch(model)  # locked dropout: one mask for every chunk of this batch
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


def micro_backward(model: SequenceClassifier, micro, *, plan: dict, weight, denom: int, precision,
                   phase=no_phase) -> dict[str, float]:
    """Forward, loss / denom and backward of one micro-batch (x, lengths, y); its summed statistics."""
    x, lengths, y = micro
    if plan["mode"] == "truncated":
        with phase("backward"):  # forward and backward interleave chunk by chunk (a single process: see __init__)
            part, logits = _truncated_backward(unwrap(model), x, lengths, y, k=plan["bptt"], weight=weight,
                                               denom=denom, precision=precision)
    else:
        with phase("forward"), precision.autocast():
            logits = model(x, lengths)  # (B, C)
        with phase("loss"), precision.autocast():
            loss = F.cross_entropy(logits.float(), y, weight=weight, reduction="sum")
        with phase("backward"):
            precision.backward(loss / denom)
        part = loss.item()
        del loss  # frees this micro-batch's graph before the next one is built
    return {"loss_sum": part, "correct": int((logits.argmax(1) == y).sum()), "count": len(y),
            "tokens": int(lengths.sum())}


def macro_f1(pred: np.ndarray, true: np.ndarray, num_classes: int) -> float:
    """Mean F1 over the classes present in ``true`` or ``pred`` (as sklearn's f1_score(average="macro"))."""
    confusion = np.bincount(true * num_classes + pred, minlength=num_classes ** 2).reshape(num_classes, num_classes)
    tp = np.diag(confusion).astype(np.float64)
    fp, fn = confusion.sum(0) - tp, confusion.sum(1) - tp
    present = (tp + fp + fn) > 0
    return float((2 * tp[present] / (2 * tp[present] + fp[present] + fn[present])).mean()) if present.any() else 0.0


def sampler_for(split: SequenceSplit, plan: dict, *, shuffle: bool, seed: int = 0, ranks: int = 1) -> TokenBudgetSampler:
    """Length-bucketed batches of the plan's size (times ``ranks``: a batch for every data-parallel rank)."""
    lengths = np.minimum(split.lengths, plan["max_length"]) if plan["max_length"] else split.lengths
    if plan["max_tokens"]:
        return TokenBudgetSampler(lengths, plan["max_tokens"] * ranks, shuffle=shuffle, seed=seed)
    return TokenBudgetSampler(lengths, batch_size=plan["micro_batch"] * ranks, shuffle=shuffle, seed=seed)


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


class ClassifierTask(BucketedBatches, NoCarriedState):
    name = "classify"

    def __init__(self, cfg: RunCfg, data_dir: Path, device: torch.device, dist: Dist = Dist()):
        self.cfg, self.device, self.dist = cfg, device, dist
        self.store = SequenceStore(data_dir)
        self.plan = requested_classify_plan(cfg, device.type)
        if dist.enabled and self.plan["mode"] == "truncated":
            raise SeqfitError("truncated BPTT (--bptt) of a classifier runs forward and backward chunk by chunk, "
                              "which data-parallel training does not support; use --checkpoint-time instead")
        self.train_split = self.store.split("train")
        self.valid = self.store.split("valid") if self.store.has_split("valid") else None
        # data-parallel: the batches one process would take with every rank's share, each split over the ranks
        self.sampler = sampler_for(self.train_split, self.plan, shuffle=True, seed=cfg.train.seed, ranks=dist.world)
        self.weight: torch.Tensor | None = None

    def check_data(self, warn) -> None:
        plan = self.plan
        check_split(self.train_split, self.store, max_length=plan["max_length"], too_long=plan["too_long"], warn=warn)
        if self.valid is not None:
            seen = set(np.unique(np.asarray(self.train_split.labels)).tolist())
            check_split(self.valid, self.store, max_length=plan["max_length"], too_long=plan["too_long"],
                        train_labels=seen, warn=warn)

    def build_model(self) -> SequenceClassifier:
        model = build_model(self.cfg, self.store)
        weight = class_weights(self.plan["class_weights"], np.asarray(self.train_split.labels), model.num_classes)
        self.weight = None if weight is None else weight.to(self.device)
        return model

    def describe(self, model) -> str:
        plan = self.plan
        return (f"{plan['device']} {plan['precision']}, {plan['mode']} BPTT"
                + (f" (k={plan['bptt'] or plan['checkpoint_time']})" if plan["mode"] != "full" else "")
                + f", batch {plan['max_tokens'] and str(plan['max_tokens']) + ' tokens' or plan['micro_batch']}"
                + f" x {plan['accumulate']}, {len(self.store.label_names)} classes, "
                + f"{sum(p.numel() for p in model.parameters()):,} parameters")

    # -- data (epoch_groups, probe_group: BucketedBatches) --
    def fixed_sampler(self) -> TokenBudgetSampler:
        return sampler_for(self.train_split, self.plan, shuffle=False, ranks=self.dist.world)

    def micro_batches(self, group: list[np.ndarray]) -> list:
        return [batch_to_device(self.train_split, g, self.plan["max_length"], self.device) for g in group]

    def denominator(self, micro) -> int:
        return sum(len(y) for _, _, y in micro)

    def backward(self, model, micro, *, denom: int, precision, phase) -> dict[str, float]:
        return micro_backward(model, micro, plan=self.plan, weight=self.weight, denom=denom, precision=precision,
                              phase=phase)

    # -- metrics --
    def train_metrics(self, stats: dict) -> dict:
        return {"loss": stats["loss_sum"] / stats["count"], "accuracy": stats["correct"] / stats["count"]}

    def validate(self, model, precision) -> dict | None:
        if self.valid is None:
            return None
        return evaluate_classifier(model, self.valid, self.plan, device=self.device, precision=precision,
                                   weight=self.weight, max_batches=self.cfg.train.eval_batches)

    def describe_valid(self, result: dict) -> str:
        return f"valid loss {result['loss']:.3f} accuracy {result['accuracy']:.3f} macro-F1 {result['macro_f1']:.3f}"

    def evaluate_split(self, model, split: str, precision, *, batch_size: int = 0, warn=None) -> tuple[dict, str]:
        """`seqfit evaluate`: loss, accuracy and macro-F1 on a labelled split (``batch_size``: default the run's)."""
        plan = {**self.plan, "micro_batch": batch_size} if batch_size else self.plan
        part = self.store.split(split)
        seen = set(np.unique(np.asarray(self.train_split.labels)).tolist())
        check_split(part, self.store, max_length=plan["max_length"], too_long=plan["too_long"], train_labels=seen,
                    warn=warn or warnings.warn)
        result = evaluate_classifier(model, part, plan, device=self.device, precision=precision)
        return result, (f"loss {result['loss']:.4f}, accuracy {result['accuracy']:.2%}, "
                        f"macro-F1 {result['macro_f1']:.3f} over {result['count']:,} sequences")

    def summary(self, last_valid: dict | None) -> dict:
        return {"valid_loss": last_valid and last_valid["loss"], "valid_accuracy": last_valid and last_valid["accuracy"],
                "valid_macro_f1": last_valid and last_valid["macro_f1"], "valid_ppl": None}
