"""A stack of recurrent layers (RNN, LSTM or GRU), one fused PyTorch module per layer.

One module per layer (rather than one multi-layer nn.LSTM) lets layer norm sit between layers and
lets the time-chunked runners process a layer at a time; each layer still runs PyTorch's fused kernel
over the whole sequence, never a Python loop per time step.

State: a list with one entry per layer; an entry is ``(h, c)`` for LSTM or ``h`` otherwise, each
shaped (directions, B, H).
"""

from __future__ import annotations

import torch
from torch import nn

from seqfit.nn.regularisers import LockedDropout, WeightDropped, weight_drop_masks
from seqfit.nn.state import State, detach_state
from seqfit.nn.timechunk import direction_chunk, direction_state, exact_forward, join_states, resolve_chunk

__all__ = ["CELLS", "RecurrentStack", "detach_state", "State"]

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


class RecurrentStack(nn.Module):
    def __init__(self, cell: str, input_size: int, hidden: int, layers: int, *, dropout: float = 0.0,
                 bidirectional: bool = False, layer_norm: bool = False, locked_dropout: bool = False,
                 weight_drop: float = 0.0):
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"unknown cell {cell!r}")
        self.cell, self.hidden, self.num_layers = cell, hidden, layers
        self.directions = 2 if bidirectional else 1
        self.output_size = hidden * self.directions
        self.layers = nn.ModuleList(
            CELLS[cell](input_size if i == 0 else self.output_size, hidden, batch_first=True, bidirectional=bidirectional)
            for i in range(layers))
        self.norms = nn.ModuleList(nn.LayerNorm(self.output_size) for _ in range(layers)) if layer_norm else None
        # locked: one mask per layer and batch, shared over time (its own module per layer: its own mask)
        self.dropout = nn.Dropout(dropout) if not locked_dropout else None
        self.locked = nn.ModuleList(LockedDropout(dropout) for _ in range(layers - 1)) if locked_dropout else None
        self.weight_drop = weight_drop  # DropConnect on the hidden-to-hidden weights, one mask per batch (0: off)
        self._weight_masks: list[dict] | None = None

    def new_batch(self) -> None:
        """Forget the weight-drop masks: the next batch draws its own (regularisers.new_batch calls this)."""
        self._weight_masks = None

    def _runnable(self) -> "RecurrentStack | _WithLayers":
        """The stack as the runners see it: its own layers, or (weight drop, training) their dropped views."""
        if not (self.training and self.weight_drop):
            return self
        if self._weight_masks is None:
            self._weight_masks = [weight_drop_masks(layer, self.weight_drop) for layer in self.layers]
        return _WithLayers(self, [WeightDropped(layer, m) for layer, m in zip(self.layers, self._weight_masks)])

    def init_state(self, batch_size: int, device=None, dtype=torch.float32) -> State:
        def zeros():
            return torch.zeros(self.directions, batch_size, self.hidden, device=device, dtype=dtype)
        return [(zeros(), zeros()) if self.cell == "lstm" else zeros() for _ in range(self.num_layers)]

    def between_layers(self, i: int, out: torch.Tensor) -> torch.Tensor:
        """Layer norm after every layer; dropout between layers (not after the last: the caller decides)."""
        if self.norms is not None:
            out = self.norms[i](out)
        if i < self.num_layers - 1:
            out = self.dropout(out) if self.locked is None else self.locked[i](out)
        return out

    def forward(self, x: torch.Tensor, state: State | None = None,
                lengths: torch.Tensor | None = None, *, checkpoint_time: int = 0) -> tuple[torch.Tensor, State]:
        """x (B, T, I) -> outputs (B, T, H * directions), final state.

        With ``lengths`` each row runs over its valid steps only, as a packed sequence would (but with
        fused kernels; see timechunk.run_direction): padding costs no compute, the final state is each
        sequence's own last step, and padded outputs are zero.
        ``checkpoint_time`` k != 0 gives the same result with activations checkpointed every k steps
        (-1: about sqrt(T)); see seqfit.nn.timechunk.
        """
        stack = self._runnable()
        if checkpoint_time:
            if resolve_chunk(checkpoint_time, x.shape[1]) < x.shape[1]:  # one chunk would only add a recompute
                return exact_forward(stack, x, state, lengths, checkpoint_time)
        if lengths is not None and bool((lengths == x.shape[1]).all()):
            lengths = None  # no padding: the unpacked call is the same and, on CPU, takes the fused oneDNN kernel
        new_state: State = []
        out = x
        for i, layer in enumerate(stack.layers):
            s = None if state is None else state[i]
            if lengths is not None or stack is not self:  # dropped weights: the fused kernel called with them
                out, s = self._valid_steps_only(layer, out, s, None if lengths is None else lengths.cpu())
            else:
                out, s = layer(out, s)  # (B, T, H*dirs)
            new_state.append(s)
            out = self.between_layers(i, out)
        return out, new_state

    def _valid_steps_only(self, layer: nn.Module, x: torch.Tensor, s, lengths: torch.Tensor | None):
        """One layer over right-padded x (B, T, I), each row over its first lengths[b] steps, both directions."""
        if s is None:
            s = self.init_state(x.shape[0], device=x.device, dtype=x.dtype)[0]
        outs, states = zip(*(direction_chunk(layer, d, x, lengths, direction_state(s, d)) for d in range(self.directions)))
        return torch.cat(outs, -1) if self.directions > 1 else outs[0], join_states(list(states))


class _WithLayers:
    """A stack whose layers are stood in for (weight-dropped views): what timechunk's runners take."""

    def __init__(self, stack: RecurrentStack, layers: list):
        self.stack, self.layers = stack, layers

    def __getattr__(self, name: str):
        return getattr(self.stack, name)
