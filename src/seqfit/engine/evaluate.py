"""Perplexity on a held-out split, streamed batch by batch with the state carried across batches."""

from __future__ import annotations

import math

import torch
from torch import nn

from seqfit.data.batching import StreamBatches
from seqfit.data.store import TokenArray

__all__ = ["evaluate_lm", "EVAL_STREAMS"]

# Streams a split is cut into for evaluation, whatever the training micro-batch: each stream starts from a
# zero state, so their number changes the perplexity a little; fixing it makes the perplexity a property of
# the model and the split alone (the PyTorch word-language-model example evaluates with 10 as well).
EVAL_STREAMS = 10


@torch.no_grad()
def evaluate_lm(model: nn.Module, tokens: TokenArray, *, bptt: int, device: torch.device, precision,
                batch_size: int = EVAL_STREAMS, max_batches: int = 0) -> dict:
    """Mean token negative log-likelihood and perplexity over ``batch_size`` streams (never more than one
    batch's logits)."""
    was_training = model.training
    model.eval()
    batches = StreamBatches(tokens, batch_size, bptt)
    state = model.init_state(batch_size, device=device)
    nll, count = 0.0, 0
    limit = min(len(batches), max_batches) if max_batches else len(batches)
    for i in range(limit):
        x, y = (t.to(device, non_blocking=True) for t in batches.batch(i))
        with precision.autocast():
            loss, state = model.nll(x, y, state)
        nll += loss.item()
        count += y.numel()
    model.train(was_training)
    mean = nll / count
    return {"loss": mean, "ppl": math.exp(min(mean, 700)), "tokens": count, "streams": batch_size}
