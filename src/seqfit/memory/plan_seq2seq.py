"""The planner for encoder-decoder models: the same contract as plan.py (the fastest plan predicted to fit,
nothing run to find out), over the switches that leave the gradients unchanged:

    micro-batch      a divisor of the effective batch (fixed --batch-size batches); the rest is accumulated
    checkpointing    exact time-chunked checkpointing of encoder and decoder every k steps
    output loss      full logits or the chunked loss (same loss, same gradients), and the chunk's rows

--max-tokens batches are kept as asked: their size is the batch's composition, not only its memory.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from seqfit.config import RunCfg
from seqfit.errors import SeqfitError
from seqfit.memory.batch_split import apply_batch_plan, split_effective_batch
from seqfit.memory.constants import Constants
from seqfit.memory.estimate_seq2seq import PairInfo, estimate_seq2seq, worst_pair_batch
from seqfit.memory.throughput import seq2seq_step_seconds

__all__ = ["pair_info_from_dir", "requested_seq2seq_plan", "seq2seq_candidates", "apply_seq2seq_plan",
           "describe_seq2seq_plan", "score_seq2seq_plan", "requested_for_data", "pair_keys", "TOP_PAIRS"]

TOP_PAIRS = 8192  # longest pairs remembered: enough for any batch's rows


def pair_keys(source_lengths: np.ndarray, target_lengths: np.ndarray) -> np.ndarray:
    """What batches are bucketed and budgeted by: a pair's source and target steps (+ the decoder's <eos>)."""
    return source_lengths + target_lengths + 1


def pair_info_from_dir(cfg: RunCfg, data_dir: str | Path) -> PairInfo:
    """Vocabularies and the longest training pairs of a seq2seq DATA_DIR (lengths from the offsets alone)."""
    from seqfit.data.sequences import SequenceStore

    store = SequenceStore(data_dir)
    split = store.split("train")
    src, tgt = split.lengths, split.target_lengths
    if cfg.train.max_length:
        src, tgt = np.minimum(src, cfg.train.max_length), np.minimum(tgt, cfg.train.max_length)
    order = np.argsort(-pair_keys(src, tgt), kind="stable")[:TOP_PAIRS]
    return PairInfo(src_vocab=len(store.vocab), tgt_vocab=len(store.target_vocab),
                    top_pairs=tuple(zip(src[order].tolist(), tgt[order].tolist())))


def requested_seq2seq_plan(cfg: RunCfg, device: str, tgt_vocab: int = 0, longest_target: int = 0) -> dict:
    """The plan the config asks for as it stands (no budget); "auto" loss: full logits when they are small."""
    from seqfit.models.heads import choose_loss_kind

    mem, t = cfg.memory, cfg.train
    if t.bptt:
        raise SeqfitError("--bptt (truncated BPTT) does not apply to an encoder-decoder: the decoder attends to the "
                          "whole source; use --checkpoint-time to bound activation memory")
    micro, accumulate = split_effective_batch(cfg)
    loss = mem.loss
    if loss == "auto":
        rows = mem.max_tokens or micro * max(1, longest_target + 1)
        loss = choose_loss_kind(tgt_vocab, rows, None) if tgt_vocab > 1 else "chunked"
    return {"device": device, "precision": mem.precision, "micro_batch": micro, "max_tokens": mem.max_tokens,
            "accumulate": accumulate, "mode": "exact" if mem.checkpoint_time else "full",
            "checkpoint_time": mem.checkpoint_time, "loss": loss, "loss_chunk": mem.loss_chunk if loss == "chunked" else 0,
            "optimizer": t.optimizer, "max_length": t.max_length, "too_long": t.too_long}


def requested_for_data(cfg: RunCfg, data: PairInfo, device: str) -> dict:
    longest = max((t for _, t in data.top_pairs), default=1)
    return requested_seq2seq_plan(cfg, device, data.tgt_vocab, longest)


def seq2seq_candidates(cfg: RunCfg, data: PairInfo, device: str) -> list[dict]:
    base = requested_for_data(cfg, data, device)
    eff = base["micro_batch"] * base["accumulate"]
    micros = [base["micro_batch"]] if base["max_tokens"] else sorted((d for d in range(1, eff + 1) if eff % d == 0),
                                                                      reverse=True)
    _, S, T = worst_pair_batch(base, data)
    longest = max(S, T + 1)
    if base["mode"] == "full":
        ks = [0] + sorted({k for k in (math.ceil(longest / 2), math.ceil(longest / 4), math.ceil(math.sqrt(longest)))
                           if 1 <= k < longest})
    else:
        ks = [base["checkpoint_time"]]
    losses = [base["loss"]] if cfg.memory.loss not in ("auto",) else ["full", "chunked"]
    out = []
    for micro in micros:
        for k in ks:
            for loss in losses:
                out.append({**base, "micro_batch": micro, "accumulate": eff // micro, "checkpoint_time": k,
                            "mode": "exact" if k else "full", "loss": loss,
                            "loss_chunk": base["loss_chunk"] if loss == "chunked" else 0})
    return out


def apply_seq2seq_plan(cfg: RunCfg, plan: dict) -> RunCfg:
    cfg = apply_batch_plan(cfg, plan)
    return dataclasses.replace(cfg, memory=dataclasses.replace(cfg.memory, loss=plan["loss"],
                                                               loss_chunk=plan["loss_chunk"]))


def describe_seq2seq_plan(plan: dict) -> str:
    batch = f"{plan['max_tokens']} tokens" if plan["max_tokens"] else f"micro-batch {plan['micro_batch']}"
    mode = "full BPTT" if plan["mode"] == "full" else f"checkpoint every {plan['checkpoint_time']} steps"
    return f"{batch} x {plan['accumulate']} accumulated, {mode}, {plan['loss']} loss, {plan['precision']}, {plan['optimizer']}"


def score_seq2seq_plan(cfg: RunCfg, data: PairInfo, plan: dict, consts: Constants) -> dict:
    est = estimate_seq2seq(cfg, data, plan, consts)
    b, S, T = est["batch"]
    seconds = seq2seq_step_seconds(cfg.model, data, plan, (b, S, T), consts)
    return {**plan, "predicted_peak_bytes": est["peak"], "peak_phase": est["phase"],
            "predicted_tokens_per_s": plan["accumulate"] * b * (T + 1) / seconds, "_parts": est["parts"]}
