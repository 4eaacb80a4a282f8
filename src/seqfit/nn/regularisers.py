"""Regularisers of recurrent language models (Merity et al. 2017, AWD-LSTM, arXiv:1708.02182).

    LockedDropout             one dropout mask per sequence, shared by every time step (variational dropout,
                              Gal & Ghahramani 2016)
    WeightDropped             a recurrent layer whose hidden-to-hidden weights are seen through a DropConnect
                              mask (Wan et al. 2013): the same dropped weights at every time step

Masks are drawn once per batch and kept until new_batch(), so every time chunk of a batch (exact
checkpointing and its recompute, truncated chunks) uses the same ones.
    embedding_dropout         drops whole words: rows of the embedding matrix, one mask per batch
    activation_regularisation AR (large activations) and TAR (fast-changing activations), as penalties
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LockedDropout", "WeightDropped", "weight_drop_masks", "make_dropout", "new_batch", "embedding_dropout",
           "activation_regularisation"]


class LockedDropout(nn.Module):
    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self._mask: torch.Tensor | None = None

    def new_batch(self) -> None:
        """Forget the mask: the next batch draws its own."""
        self._mask = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, D): every step of a sequence gets the same mask (B, 1, D)."""
        if not self.training or self.p == 0:
            return x
        if self._mask is None or self._mask.shape[0] != x.shape[0] or self._mask.shape[-1] != x.shape[-1]:
            keep = 1.0 - self.p
            self._mask = torch.empty(x.shape[0], 1, x.shape[-1], device=x.device).bernoulli_(keep).div_(keep)
        return x * self._mask.to(x.dtype)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def make_dropout(p: float, locked: bool) -> nn.Module:
    return LockedDropout(p) if locked else nn.Dropout(p)


def new_batch(module: nn.Module) -> None:
    """A new batch begins: every mask-keeping regulariser inside ``module`` draws fresh masks."""
    for m in module.modules():
        if m is not module and hasattr(m, "new_batch"):
            m.new_batch()


class WeightDropped:
    """``layer`` (a single-layer nn.LSTM/GRU/RNN) as the fused runner reads it, with weight_hh_l0 (and its
    reverse) times ``masks``; the raw weights stay the parameters, so their gradients flow through the mask."""

    def __init__(self, layer: nn.Module, masks: dict[str, torch.Tensor]):
        self.layer, self.masks = layer, masks

    def __getattr__(self, name: str):
        value = getattr(self.layer, name)
        mask = self.masks.get(name)
        return value * mask.to(value.dtype) if mask is not None else value


def weight_drop_masks(layer: nn.Module, p: float) -> dict[str, torch.Tensor]:
    """One DropConnect mask (scaled by 1/(1-p)) per hidden-to-hidden weight of ``layer``."""
    names = [n for n, _ in layer.named_parameters() if n.startswith("weight_hh_l0")]
    return {n: torch.empty_like(getattr(layer, n)).bernoulli_(1 - p).div_(1 - p) for n in names}


def embedding_dropout(embedding: nn.Embedding, ids: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """embedding(ids) with whole rows of the matrix dropped (one mask per call; the rest scaled by 1/(1-p))."""
    if not training or p == 0:
        return embedding(ids)
    weight = embedding.weight  # (V, E)
    mask = torch.empty(weight.shape[0], 1, device=weight.device).bernoulli_(1 - p).div_(1 - p)  # (V, 1)
    return F.embedding(ids, weight * mask.to(weight.dtype), embedding.padding_idx)


def activation_regularisation(dropped: torch.Tensor, raw: torch.Tensor, ar: float, tar: float) -> torch.Tensor:
    """ar * mean(dropped^2) + tar * mean((raw_t - raw_{t-1})^2), on the last layer's outputs (B, T, H)."""
    total = dropped.new_zeros((), dtype=torch.float32)
    if ar:
        total = total + ar * dropped.float().pow(2).mean()
    if tar and raw.shape[1] > 1:
        total = total + tar * (raw[:, 1:] - raw[:, :-1]).float().pow(2).mean()
    return total
