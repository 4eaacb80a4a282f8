"""Gradient buffers handed from one step to the next, so that a large gradient is not a fresh mapping each step.

On CPU every tensor of 64 KiB or more is its own mapping (memory/allocator.py), and the engine sets gradients
to None before each step, so the two vocabulary-sized gradients of a language model -- the embedding's and the
chunked loss's output weight, (V, E) and (V, H) -- were mapped, faulted in and zeroed by the kernel every step.
Measured on a Zen 5 guest: a fresh 18,000 x 200 fp32 zeros took 11-13 ms with huge pages and 2.7 ms without,
against 0.35 ms to zero one that is kept; a 2 x 200 LSTM LM step in bf16 made two of them.

So the kernels that make these gradients themselves (the chunked loss, SpareGradEmbedding) ask for a spare:
``hand_back`` (the engine, before it sets the gradients to None) moves such a parameter's last gradient into its
spare slot, where the optimizer no longer sees it, and ``take`` gives it to the next backward, which writes the
new gradient into it and returns it. Autograd keeps a returned gradient that nothing else holds as ``.grad``
without a copy, so the same memory serves every step. The cost is memory: the spare lives through the forward
that follows, which the planner counts (memory/estimate.py, the plan's "spare_grads").

Modules whose parameters take part say so (SparesGradients); only CPU gradients are handed back (CUDA's caching
allocator reuses freed blocks).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary

__all__ = ["SparesGradients", "hand_back", "take", "spare"]

_spares = WeakIdKeyDictionary()  # parameter -> its spare gradient


class SparesGradients:
    """A module whose kernels write some of its parameters' gradients with ``take``: it names them."""

    def spared_parameters(self) -> list[nn.Parameter]:
        raise NotImplementedError


def hand_back(model: nn.Module) -> int:
    """Move the CPU gradients of the parameters that ``model``'s SparesGradients modules name into their spare
    slots (their .grad becomes None); every other gradient is left as it is. Returns the bytes now held as spares."""
    held = 0
    for module in model.modules():
        if not isinstance(module, SparesGradients):
            continue
        for p in module.spared_parameters():
            grad = p.grad
            if grad is None or grad.device.type != "cpu" or grad.layout != torch.strided:
                continue
            _spares[p] = grad
            p.grad = None
            held += grad.numel() * grad.element_size()
    return held


def take(param: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A buffer for ``param``'s next gradient, uninitialised: its spare when one of this shape, dtype and device
    is held (the slot is emptied, so the caller's tensor is the only reference), else a fresh one."""
    held = _spares.pop(param, None)
    if (held is not None and tuple(held.shape) == tuple(shape) and held.dtype == dtype and held.device == device
            and held.is_contiguous()):
        return held
    return torch.empty(shape, dtype=dtype, device=device)


def spare(param: torch.Tensor) -> torch.Tensor | None:
    """The spare held for ``param`` now, if any."""
    return _spares.get(param)
