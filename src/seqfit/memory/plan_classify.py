"""The planner for sequence classifiers: the same contract as plan.py (fastest plan predicted to fit, nothing
run to find out), over the switches that leave a classifier's gradients unchanged:

    micro-batch      a divisor of the effective batch (fixed --batch-size batches); the rest is accumulated
    checkpointing    exact time-chunked checkpointing every k steps, when neither --bptt nor
                     --checkpoint-time is set (truncation changes the gradients: never chosen for you)

--max-tokens batches are kept as asked: their size is the batch's composition, not only its memory.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from seqfit.config import RunCfg
from seqfit.errors import SeqfitError
from seqfit.memory.batch_split import apply_batch_plan, split_effective_batch
from seqfit.memory.constants import Constants
from seqfit.memory.estimate_classify import (
    SequenceInfo,
    estimate_classifier,
    worst_batch,
)
from seqfit.memory.pool_plan import pools_chunk_buffers
from seqfit.memory.throughput import classifier_step_seconds

__all__ = ["sequence_info_from_dir", "requested_classify_plan", "classify_candidates", "apply_classify_plan",
           "describe_classify_plan", "score_classify_plan", "TOP_LENGTHS"]

TOP_LENGTHS = 8192  # longest lengths remembered: enough for any batch's real tokens


def sequence_info_from_dir(data_dir: str | Path, max_length: int = 0) -> SequenceInfo:
    """Classes, vocabulary or features, and the longest training lengths of a "sequences" DATA_DIR
    (the lengths come from the offsets file alone: 8 bytes per sequence)."""
    from seqfit.data.sequences import SequenceStore

    store = SequenceStore(data_dir)
    lengths = store.split("train").lengths
    if max_length:
        lengths = np.minimum(lengths, max_length)
    top = np.sort(lengths)[::-1][:TOP_LENGTHS] if len(lengths) else np.zeros(1, np.int64)
    return SequenceInfo(num_classes=len(store.label_names), vocab_size=len(store.vocab) if store.vocab is not None else 0,
                        num_features=store.num_features, longest=int(top[0]), top_lengths=tuple(top.tolist()))


def requested_classify_plan(cfg: RunCfg, device: str) -> dict:
    """The plan the config asks for as it stands (no budget): batching, BPTT mode and the classifier's options."""
    mem, t = cfg.memory, cfg.train
    if t.bptt and mem.checkpoint_time:
        raise SeqfitError("--bptt (truncated BPTT) and --checkpoint-time (exact checkpointing) exclude each other; "
                          "choose one")
    micro, accumulate = split_effective_batch(cfg)
    mode = "truncated" if t.bptt else "exact" if mem.checkpoint_time else "full"
    return {"device": device, "precision": mem.precision, "micro_batch": micro,
            "max_tokens": mem.max_tokens, "accumulate": accumulate, "mode": mode,
            "buffer_pool": pools_chunk_buffers(device, mode, cfg.model.bidirectional),
            "bptt": t.bptt, "checkpoint_time": mem.checkpoint_time, "optimizer": t.optimizer,
            "max_length": t.max_length, "too_long": t.too_long, "class_weights": t.class_weights}


def classify_candidates(cfg: RunCfg, data: SequenceInfo, device: str) -> list[dict]:
    base = requested_classify_plan(cfg, device)
    eff = base["micro_batch"] * base["accumulate"]
    micros = [base["micro_batch"]] if base["max_tokens"] else sorted((d for d in range(1, eff + 1) if eff % d == 0),
                                                                      reverse=True)
    T = worst_batch(base, data)[1]
    if base["mode"] == "full":
        ks = [0] + sorted({k for k in (math.ceil(T / 2), math.ceil(T / 4), math.ceil(math.sqrt(T))) if 1 <= k < T})
    else:
        ks = [base["checkpoint_time"]]
    out = []
    for micro in micros:
        for k in ks:
            mode = base["mode"] if base["mode"] != "full" else "exact" if k else "full"
            out.append({**base, "micro_batch": micro, "accumulate": eff // micro, "checkpoint_time": k, "mode": mode,
                        "buffer_pool": pools_chunk_buffers(device, mode, cfg.model.bidirectional)})
    return out


apply_classify_plan = apply_batch_plan  # micro-batch, accumulation and checkpointing: all the planner varies


def describe_classify_plan(plan: dict) -> str:
    batch = f"{plan['max_tokens']} tokens" if plan["max_tokens"] else f"micro-batch {plan['micro_batch']}"
    mode = {"full": "full BPTT", "exact": f"checkpoint every {plan['checkpoint_time']} steps",
            "truncated": f"truncated BPTT every {plan['bptt']} steps"}[plan["mode"]]
    return f"{batch} x {plan['accumulate']} accumulated, {mode}, {plan['precision']}, {plan['optimizer']}"


def score_classify_plan(cfg: RunCfg, data: SequenceInfo, plan: dict, consts: Constants) -> dict:
    est = estimate_classifier(cfg, data, plan, consts)
    b, T, real = est["batch"]
    inputs = cfg.model.embed if data.vocab_size else data.num_features
    seconds = classifier_step_seconds(cfg.model, inputs, plan, (b, T, real), consts)
    return {**plan, "predicted_peak_bytes": est["peak"], "peak_phase": est["phase"],
            "predicted_tokens_per_s": plan["accumulate"] * real / seconds, "_parts": est["parts"]}
