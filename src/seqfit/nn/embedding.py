"""An nn.Embedding whose dense weight gradient is written into the spare of the last step (nn/spare_grads.py).

The lookup and its state_dict are nn.Embedding's; only the backward differs: the (V, E) gradient is the
spare handed back by the engine, zeroed and summed into with index_add_, where nn.Embedding's backward maps a
fresh zero matrix every step. Options whose backward is not a plain scatter-add (max_norm, scale_grad_by_freq,
sparse) and other devices than CPU take nn.Embedding's own path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seqfit.nn import spare_grads

__all__ = ["SpareGradEmbedding"]


class _Lookup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight: torch.Tensor, ids: torch.Tensor, padding_idx: int | None) -> torch.Tensor:
        ctx.save_for_backward(ids)
        ctx.weight, ctx.padding_idx = weight, padding_idx
        return F.embedding(ids, weight, padding_idx)  # (..., E)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        (ids,) = ctx.saved_tensors
        weight = ctx.weight
        grad = spare_grads.take(weight, tuple(weight.shape), grad_out.dtype, grad_out.device).zero_()  # (V, E)
        grad.index_add_(0, ids.reshape(-1), grad_out.reshape(-1, weight.shape[1]))
        if ctx.padding_idx is not None:
            grad[ctx.padding_idx] = 0  # nn.Embedding leaves the padding row's gradient at zero
        ctx.weight = None
        return grad, None, None


class SpareGradEmbedding(nn.Embedding, spare_grads.SparesGradients):
    """nn.Embedding (same arguments, same state_dict) whose weight gradient reuses the last step's memory on CPU."""

    def spared_parameters(self) -> list[nn.Parameter]:
        return [self.weight]

    def _plain(self) -> bool:
        return (self.max_norm is not None or self.scale_grad_by_freq or self.sparse
                or self.weight.device.type != "cpu" or not (torch.is_grad_enabled() and self.weight.requires_grad))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self._plain():
            return super().forward(ids)
        return _Lookup.apply(self.weight, ids, self.padding_idx)
