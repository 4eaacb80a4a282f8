"""Forecaster: an encoder RNN over the lookback window -> a direct multi-horizon linear head, or an
autoregressive RNN decoder (--decoder autoregressive).

    x (B, L, F)  normalised past rows: the target columns first, then the covariates
      [+ the series' static category embeddings (B, E), repeated on every step]
      -> RecurrentStack (unidirectional)  -> top layer's output at the last step (B, H), and the final state
         (--checkpoint-time k: chunks of k steps checkpointed, only the last step's output kept)
    direct:
      -> dropout -> [ + known-future inputs of the horizon rows (B, horizon x k), flattened ] [ + static (B, E) ]
      -> Linear(H + horizon x k + E, horizon x targets x quantiles)
    autoregressive:
      decoder RecurrentStack (the encoder's cell and layers), its state starting as the encoder's final state;
      step j reads (the previous step's targets (B, T) [+ step j's known-future inputs (B, k)]) -> (B, H)
      -> dropout [ + static (B, E) ] -> Linear(H + E, targets x quantiles): step j's forecast
      The previous step's value is the true one in training (teacher forcing: one fused call over the
      horizon), and the model's own point forecast (the quantile nearest the median) at inference
      (a loop of horizon single steps); for step 0 it is the last observed value.
    both:
      -> + the last observed value of each target     (B, horizon, targets, quantiles)

The encoder reads the targets relative to their last observed value, and the head predicts the change
from it (a residual over the naive forecast): a fresh model starts as the naive forecast, and the model
is invariant to the level, so a trend that leaves the train split's range needs no extrapolation. The
autoregressive decoder's inputs are relative to the same level. Outputs are in normalised units; the task
converts them back.

Known-future inputs (--future-covariates, --calendar: k columns, the last k of x) are read twice: over the
lookback like any input, and their values on the horizon rows (B, horizon, k) go to the head (direct) or
to the decoder's step j (autoregressive), so step j's forecast sees step j's promotion or weekday.

Static categories (prepare --static-field; one id per series and column) each have a learned embedding of
static_dim(cardinality) = min(16, ceil(sqrt(cardinality)) + 1) values.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from seqfit.config import ModelCfg
from seqfit.nn.recurrent import RecurrentStack
from seqfit.nn.timechunk import exact_forward, resolve_chunk

__all__ = ["Forecaster", "static_dim", "DECODERS"]

DECODERS = ("direct", "autoregressive")


def static_dim(cardinality: int) -> int:
    """Embedding size of a static column with ``cardinality`` categories."""
    return min(16, math.ceil(math.sqrt(cardinality)) + 1)


class Forecaster(nn.Module):
    def __init__(self, cfg: ModelCfg, *, num_inputs: int, num_targets: int, horizon: int, num_quantiles: int = 1,
                 checkpoint_time: int = 0, num_future: int = 0, static_sizes: tuple[int, ...] = (),
                 decoder: str = "direct", point: int = 0):
        super().__init__()
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        self.num_targets, self.horizon, self.num_quantiles = num_targets, horizon, num_quantiles
        self.num_future = num_future  # k known-future inputs per horizon row (0: none)
        self.checkpoint_time = checkpoint_time  # exact checkpointing every k steps (0: off, -1: ~sqrt(L))
        self.decoder_kind, self.point = decoder, point  # point: the quantile fed back (autoregressive)
        self.static = nn.ModuleList(nn.Embedding(c, static_dim(c)) for c in static_sizes)
        E = self.num_static = sum(static_dim(c) for c in static_sizes)
        self.rnn = RecurrentStack(cfg.cell, num_inputs + E, cfg.hidden, cfg.layers, dropout=cfg.dropout,
                                  bidirectional=False, layer_norm=cfg.layer_norm)
        self.drop = nn.Dropout(cfg.dropout)
        if decoder == "direct":
            self.head = nn.Linear(cfg.hidden + horizon * num_future + E, horizon * num_targets * num_quantiles)
        else:
            self.decoder = RecurrentStack(cfg.cell, num_targets + num_future, cfg.hidden, cfg.layers,
                                          dropout=cfg.dropout, bidirectional=False, layer_norm=cfg.layer_norm)
            self.head = nn.Linear(cfg.hidden + E, num_targets * num_quantiles)

    def embed_static(self, static: Tensor | None) -> Tensor | None:
        """static (B, K) int64 category ids -> (B, E), or None without static columns."""
        if not self.num_static:
            return None
        if static is None:
            raise ValueError("this forecaster reads static categories: pass static (B, K) ids")
        return torch.cat([emb(static[:, i]) for i, emb in enumerate(self.static)], 1)

    def encode(self, x: Tensor, emb: Tensor | None):
        """x (B, L, F) relative to the level -> (top layer's last output (B, H), final state)."""
        if emb is not None:
            x = torch.cat([x, emb.to(x.dtype).unsqueeze(1).expand(-1, x.shape[1], -1)], 2)  # (B, L, F + E)
        L = x.shape[1]
        if self.checkpoint_time and resolve_chunk(self.checkpoint_time, L) < L:
            def reduce(out: Tensor, start: int) -> Tensor:  # the last step's output, never a (B, L, H) tensor
                return out[:, -1] if start + out.shape[1] == L else out.new_zeros(out.shape[0], out.shape[2])

            return exact_forward(self.rnn, x, None, None, self.checkpoint_time, reduce=reduce)  # (B, H), state
        out, state = self.rnn(x)  # (B, L, H)
        return out[:, -1], state

    def forward(self, x: Tensor, future: Tensor | None = None, static: Tensor | None = None,
                target: Tensor | None = None) -> Tensor:
        """x (B, L, F), future (B, horizon, k) or None, static (B, K) ids or None, target (B, horizon, T)
        normalised (autoregressive: teacher forcing; None: the model feeds back its own forecasts)
        -> forecasts (B, horizon, targets, quantiles), normalised."""
        T = self.num_targets
        level = x[:, -1:, :T]  # (B, 1, T): the last observed targets
        x = torch.cat([x[:, :, :T] - level, x[:, :, T:]], 2)  # (B, L, F): targets relative to their last value
        emb = self.embed_static(static)  # (B, E) | None
        last, state = self.encode(x, emb)
        if self.decoder_kind == "direct":
            last = self.drop(last)
            parts = [last]
            if self.num_future:
                parts.append(future.reshape(future.shape[0], -1).to(last.dtype))  # (B, h * k)
            if emb is not None:
                parts.append(emb.to(last.dtype))
            delta = self.head(torch.cat(parts, 1) if len(parts) > 1 else last).view(-1, self.horizon, T, self.num_quantiles)
        elif target is not None:
            delta = self._teacher_forced(target - level.to(target.dtype), future, state, emb)
        else:
            delta = self._free_running(level, future, state, emb)
        return delta.float() + level.transpose(1, 2).unsqueeze(1).float()  # + (B, 1, T, 1)

    def _step_head(self, out: Tensor, emb: Tensor | None) -> Tensor:
        """Decoder outputs (B, n, H) -> changes from the level (B, n, T, Q)."""
        out = self.drop(out)
        if emb is not None:
            out = torch.cat([out, emb.to(out.dtype).unsqueeze(1).expand(-1, out.shape[1], -1)], 2)
        return self.head(out).view(out.shape[0], out.shape[1], self.num_targets, self.num_quantiles)

    def _teacher_forced(self, rel: Tensor, future: Tensor | None, state, emb: Tensor | None) -> Tensor:
        """rel (B, h, T): the true targets relative to the level; step j reads step j - 1's (step 0: zero)."""
        prev = torch.cat([rel.new_zeros(rel.shape[0], 1, rel.shape[2]), rel[:, :-1]], 1)  # (B, h, T)
        if self.num_future:
            prev = torch.cat([prev, future.to(prev.dtype)], 2)  # (B, h, T + k)
        out, _ = self.decoder(prev, state)  # (B, h, H): one fused call
        return self._step_head(out, emb)

    def _free_running(self, level: Tensor, future: Tensor | None, state, emb: Tensor | None) -> Tensor:
        """Step by step, each step reading the previous step's point forecast (relative to the level)."""
        prev = level.new_zeros(level.shape[0], 1, self.num_targets)  # (B, 1, T)
        steps = []
        for j in range(self.horizon):
            inp = torch.cat([prev, future[:, j:j + 1].to(prev.dtype)], 2) if self.num_future else prev
            out, state = self.decoder(inp, state)  # (B, 1, H)
            delta = self._step_head(out, emb)  # (B, 1, T, Q)
            steps.append(delta)
            prev = delta[..., self.point].to(prev.dtype)
        return torch.cat(steps, 1)  # (B, h, T, Q)
