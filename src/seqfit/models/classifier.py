"""Sequence classifier: tokens (or numeric feature rows) -> recurrent stack -> pooled summary -> class logits.

Pooling looks at each sequence's valid steps only:

    last   the top layer's output at the last valid step; bidirectional: the forward half there and
           the reverse half at step 0, so each direction has read the whole sequence
    mean   the mean of the top layer's outputs over the valid steps

Both are sums of per-chunk contributions, so with ``checkpoint_time`` the time-chunked exact mode
folds the pooling into each checkpointed chunk and never keeps a (B, T, H) output; the embedding
lookup runs inside the chunk too. What stays alive is then the boundary states, O(T/k), plus one
chunk's recompute in backward, O(k) (unidirectional; see seqfit.nn.timechunk).

A very long sequence can also be fed in pieces, batch after batch, with ``stream``: the carried
state and running pooling continue it exactly (detach the carry between batches to truncate).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from seqfit.config import ModelCfg, RunCfg
from seqfit.errors import SeqfitError
from seqfit.models.lm import load_embedding_matrix
from seqfit.nn.recurrent import RecurrentStack, State, detach_state
from seqfit.nn.regularisers import make_dropout, new_batch
from seqfit.nn.timechunk import exact_forward, resolve_chunk
from seqfit.nn.precision import widen

__all__ = ["SequenceClassifier", "StreamCarry", "build_classifier"]


@dataclass
class StreamCarry:
    """What a stream carries from one piece to the next."""

    state: State  # recurrent state after the last valid step
    pooled: Tensor  # (B, D) running sum of outputs (mean) or the latest last-step output (last)
    steps: Tensor  # (B,) valid steps seen so far

    def detach(self) -> "StreamCarry":
        return StreamCarry(detach_state(self.state), self.pooled.detach(), self.steps)


class SequenceClassifier(nn.Module):
    def __init__(self, cfg: ModelCfg, num_classes: int, *, vocab_size: int = 0, num_features: int = 0,
                 checkpoint_time: int = 0):
        super().__init__()
        if (vocab_size > 0) == (num_features > 0):
            raise ValueError("give vocab_size (token sequences) or num_features (numeric sequences), not both")
        if num_classes < 2:
            raise SeqfitError(f"classification needs at least 2 classes, the data has {num_classes}")
        self.pooling = cfg.pooling
        self.checkpoint_time = checkpoint_time  # exact checkpointing every k steps (0: off, -1: ~sqrt(T))
        self.embedding = nn.Embedding(vocab_size, cfg.embed) if vocab_size else None
        self.drop_in = make_dropout(cfg.dropout, cfg.locked_dropout)  # on the inputs
        self.drop = nn.Dropout(cfg.dropout)  # on the pooled summary
        self.rnn = RecurrentStack(cfg.cell, cfg.embed if vocab_size else num_features, cfg.hidden, cfg.layers,
                                  dropout=cfg.dropout, bidirectional=cfg.bidirectional, layer_norm=cfg.layer_norm,
                                  locked_dropout=cfg.locked_dropout, weight_drop=cfg.weight_drop)
        self.head = nn.Linear(self.rnn.output_size, num_classes)
        if self.embedding is not None:
            nn.init.uniform_(self.embedding.weight, -0.1, 0.1)  # as the language model
            if cfg.embeddings:
                with torch.no_grad():
                    self.embedding.weight.copy_(load_embedding_matrix(cfg.embeddings, vocab_size, cfg.embed))
            if cfg.freeze_embeddings:
                self.embedding.weight.requires_grad_(False)

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    def chunk_inputs(self, x: Tensor):
        """x (B, T) ids or (B, T, F) floats -> a function giving the stack's input for steps [s, e)."""
        def inputs(start: int, stop: int) -> Tensor:
            piece = x[:, start:stop]
            v = self.embedding(piece) if self.embedding is not None else widen(piece)  # (B, k, I)
            return self.drop_in(v)
        return inputs

    def pool_contribution(self, out: Tensor, start: int, lengths: Tensor) -> Tensor:
        """The share of chunk out (B, k, D), starting at step ``start``, in the pooled summary (B, D)."""
        B, k, D = out.shape
        lengths = lengths.to(out.device)
        if self.pooling == "mean":
            valid = (torch.arange(start, start + k, device=out.device) < lengths[:, None]).to(out.dtype)  # (B, k)
            return (out * valid[..., None]).sum(1)  # (B, D)
        pos = lengths - 1 - start  # (B,) where the last valid step falls in this chunk
        here = ((pos >= 0) & (pos < k)).to(out.dtype)
        last = out.gather(1, pos.clamp(0, k - 1).view(B, 1, 1).expand(B, 1, D)).squeeze(1) * here[:, None]  # (B, D)
        if self.rnn.directions == 1:
            return last
        H = self.rnn.hidden
        first = out[:, 0, H:] if start == 0 else out.new_zeros(B, D - H)  # reverse direction ends at step 0
        return torch.cat([last[:, :H], first], 1)

    def summarize(self, total: Tensor, steps: Tensor) -> Tensor:
        if self.pooling == "mean":
            return total / steps.to(total.device).clamp(min=1)[:, None].to(total.dtype)
        return total

    def encode(self, x: Tensor, lengths: Tensor) -> Tensor:
        """Pooled summary (B, D) of right-padded x with valid lengths (B,)."""
        T = x.shape[1]
        new_batch(self)  # a new batch: locked dropout draws its masks once, for every chunk of it
        inputs = self.chunk_inputs(x)

        def reduce(out: Tensor, start: int) -> Tensor:
            return self.pool_contribution(out, start, lengths)

        if self.checkpoint_time and resolve_chunk(self.checkpoint_time, T) < T:
            total, _ = exact_forward(self.rnn, inputs, None, lengths, self.checkpoint_time, total=T, reduce=reduce)
        else:
            out, _ = self.rnn(inputs(0, T), None, lengths)  # (B, T, D)
            total = reduce(out, 0)
        return self.summarize(total, lengths)

    def classify(self, summary: Tensor) -> Tensor:
        return self.head(self.drop(summary))  # (B, C)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        """Class logits (B, C)."""
        return self.classify(self.encode(x, lengths))

    def stream(self, x: Tensor, lengths: Tensor | None = None, carry: StreamCarry | None = None
               ) -> tuple[Tensor, StreamCarry]:
        """Continue sequences from ``carry`` with their next pieces x (B, T); logits of all seen so far.

        Rows with length 0 in this piece keep their carry. Exactly equals one call on the joined
        sequences (unidirectional only: a reverse direction would need the sequence's end first).
        """
        if self.rnn.directions != 1:
            raise SeqfitError("a bidirectional classifier cannot continue a stream: its reverse direction "
                              "needs the end of the sequence first")
        B, T = x.shape[:2]
        lengths = torch.full((B,), T, dtype=torch.int64) if lengths is None else lengths.detach().cpu()
        k = self.checkpoint_time or T
        total, state = exact_forward(self.rnn, self.chunk_inputs(x), carry.state if carry else None, lengths, k,
                                     total=T, reduce=lambda out, start: self.pool_contribution(out, start, lengths),
                                     checkpointed=bool(self.checkpoint_time))
        if carry is None:
            pooled, steps = total, lengths
        elif self.pooling == "mean":
            pooled, steps = carry.pooled + total, carry.steps + lengths
        else:
            pooled = torch.where((lengths > 0).to(total.device)[:, None], total, carry.pooled)
            steps = carry.steps + lengths
        return self.classify(self.summarize(pooled, steps)), StreamCarry(state, pooled, steps)


def build_classifier(cfg: RunCfg, *, num_classes: int, vocab_size: int = 0, num_features: int = 0) -> SequenceClassifier:
    return SequenceClassifier(cfg.model, num_classes, vocab_size=vocab_size, num_features=num_features,
                              checkpoint_time=cfg.memory.checkpoint_time)
