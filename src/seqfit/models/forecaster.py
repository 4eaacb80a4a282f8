"""Forecaster: an encoder RNN over the lookback window -> a direct multi-horizon linear head.

    x (B, L, F)  normalised past rows: the target columns first, then the covariates
      -> RecurrentStack (unidirectional)  -> top layer's output at the last step (B, H)
         (--checkpoint-time k: chunks of k steps checkpointed, only the last step's output kept)
      -> dropout -> [ + known-future inputs of the horizon rows (B, horizon x k), flattened ]
      -> Linear(H + horizon x k, horizon x targets x quantiles)
      -> + the last observed value of each target     (B, horizon, targets, quantiles)

The encoder reads the targets relative to their last observed value, and the head predicts the change
from it (a residual over the naive forecast): a fresh model starts as the naive forecast, and the model
is invariant to the level, so a trend that leaves the train split's range needs no extrapolation. Outputs are in normalised units; the task converts them back.

Known-future inputs (--future-covariates, --calendar: k columns, the last k of x) are read twice: over the
lookback like any input, and their values on the horizon rows (B, horizon, k) go straight to the head, so
step j's forecast sees step j's promotion or weekday.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from seqfit.config import ModelCfg
from seqfit.nn.recurrent import RecurrentStack
from seqfit.nn.timechunk import exact_forward, resolve_chunk

__all__ = ["Forecaster"]


class Forecaster(nn.Module):
    def __init__(self, cfg: ModelCfg, *, num_inputs: int, num_targets: int, horizon: int, num_quantiles: int = 1,
                 checkpoint_time: int = 0, num_future: int = 0):
        super().__init__()
        self.num_targets, self.horizon, self.num_quantiles = num_targets, horizon, num_quantiles
        self.num_future = num_future  # k known-future inputs per horizon row (0: none)
        self.checkpoint_time = checkpoint_time  # exact checkpointing every k steps (0: off, -1: ~sqrt(L))
        self.rnn = RecurrentStack(cfg.cell, num_inputs, cfg.hidden, cfg.layers, dropout=cfg.dropout,
                                  bidirectional=False, layer_norm=cfg.layer_norm)
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.hidden + horizon * num_future, horizon * num_targets * num_quantiles)

    def forward(self, x: Tensor, future: Tensor | None = None) -> Tensor:
        """x (B, L, F), future (B, horizon, k) or None -> forecasts (B, horizon, targets, quantiles), normalised."""
        T = self.num_targets
        level = x[:, -1:, :T]  # (B, 1, T): the last observed targets
        x = torch.cat([x[:, :, :T] - level, x[:, :, T:]], 2)  # (B, L, F): targets relative to their last value
        L = x.shape[1]
        if self.checkpoint_time and resolve_chunk(self.checkpoint_time, L) < L:
            def reduce(out: Tensor, start: int) -> Tensor:  # the last step's output, never a (B, L, H) tensor
                return out[:, -1] if start + out.shape[1] == L else out.new_zeros(out.shape[0], out.shape[2])

            last, _ = exact_forward(self.rnn, x, None, None, self.checkpoint_time, reduce=reduce)  # (B, H)
        else:
            out, _ = self.rnn(x)  # (B, L, H)
            last = out[:, -1]  # (B, H)
        last = self.drop(last)
        if self.num_future:
            last = torch.cat([last, future.reshape(future.shape[0], -1).to(last.dtype)], 1)  # (B, H + h * k)
        delta = self.head(last).view(-1, self.horizon, T, self.num_quantiles)  # (B, h, T, Q)
        return delta.float() + level.transpose(1, 2).unsqueeze(1).float()  # + (B, 1, T, 1)
