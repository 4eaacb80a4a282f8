"""Drop-in replacements for torch.nn.LSTM, GRU and RNN, for people who keep their own training loop.

Same constructor arguments, parameters and ``state_dict`` keys (they are subclasses), same call and
outputs. Two additions:

    checkpoint_time=k   exact activation checkpointing every k time steps (-1: about sqrt(T)); outputs
                        and gradients equal the plain module's, activations kept O(T/k + k) steps
    lengths=            forward(x, hx, lengths=...) with right-padded x: each sequence runs over its own
                        steps, as with pack_padded_sequence, but through fused kernel calls (on CPU a
                        packed sequence leaves oneDNN's fused kernel for a per-step loop, ~20x slower);
                        padded outputs are zero and h_n is each sequence's state after its last step

    >>> rnn = seqfit.nn.LSTM(64, 256, num_layers=2, batch_first=True, checkpoint_time=50)
    >>> out, (h, c) = rnn(x, lengths=lengths)  # x (B, T, 64), lengths (B,) -> out (B, T, 256)

Without lengths and checkpoint_time the call is the parent's own. Between layers, dropout is drawn
per layer output (the fused multi-layer kernel draws it inside), so with dropout > 0 in training the
masks, not the expectation, differ from the plain module's. Not covered (they fall back to the
parent, or refuse lengths): bias=False, proj_size > 0, PackedSequence input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from seqfit.nn.state import State
from seqfit.nn.timechunk import direction_chunk, direction_state, exact_forward, join_states, resolve_chunk

__all__ = ["LSTM", "GRU", "RNN"]


class _LayerView:
    """Layer ``i`` of a multi-layer module, as the fused runner reads a single-layer one (weights *_l0)."""

    def __init__(self, module: nn.RNNBase, i: int):
        self.module, self.i = module, i
        self.mode, self.hidden_size = module.mode, module.hidden_size

    @property
    def training(self) -> bool:
        return self.module.training

    def __getattr__(self, name: str):
        if "_l0" not in name:
            raise AttributeError(name)
        return getattr(self.module, name.replace("_l0", f"_l{self.i}"))


class _StackView:
    """The module as a stack of layers (what timechunk's runners take)."""

    def __init__(self, module: nn.RNNBase):
        self.module = module
        self.layers = [_LayerView(module, i) for i in range(module.num_layers)]
        self.directions = 2 if module.bidirectional else 1

    def parameters(self):
        return self.module.parameters()

    def init_state(self, batch: int, device=None, dtype=torch.float32) -> State:
        def zeros():
            return torch.zeros(self.directions, batch, self.module.hidden_size, device=device, dtype=dtype)
        return [(zeros(), zeros()) if self.module.mode == "LSTM" else zeros() for _ in self.layers]

    def between_layers(self, i: int, out: Tensor) -> Tensor:
        if i < len(self.layers) - 1 and self.module.dropout and self.module.training:
            out = F.dropout(out, self.module.dropout, training=True)
        return out


class _Recurrent:
    """The shared forward of the three drop-ins (mixed in ahead of the torch class)."""

    def _seqfit_init(self, checkpoint_time: int) -> None:
        if checkpoint_time < -1:
            raise ValueError(f"checkpoint_time must be -1 (about sqrt(T)), 0 (off) or a number of steps, got {checkpoint_time}")
        self.checkpoint_time = checkpoint_time

    def forward(self, input, hx=None, lengths: Tensor | None = None):
        plain = lengths is None and not self.checkpoint_time
        if plain or isinstance(input, PackedSequence):
            if lengths is not None:
                raise ValueError("give either a PackedSequence or lengths=, not both")
            return super().forward(input, hx)
        if not self.bias or getattr(self, "proj_size", 0):
            if lengths is not None:
                raise ValueError("lengths= needs bias=True and proj_size=0; pack the input instead")
            return super().forward(input, hx)
        unbatched = input.dim() == 2
        x = input.unsqueeze(1 if not self.batch_first else 0) if unbatched else input
        x = x if self.batch_first else x.transpose(0, 1)  # (B, T, I)
        state = self._split_state(hx, unbatched)
        if lengths is not None:
            lengths = torch.as_tensor(lengths).to("cpu", torch.int64)
            if lengths.shape != (x.shape[0],) or int(lengths.min()) < 0 or int(lengths.max()) > x.shape[1]:
                raise ValueError(f"lengths must hold one value in [0, {x.shape[1]}] per sequence, got {tuple(lengths.shape)}")
        stack = _StackView(self)
        if self.checkpoint_time and resolve_chunk(self.checkpoint_time, x.shape[1]) < x.shape[1]:
            out, state = exact_forward(stack, x, state, lengths, self.checkpoint_time)
        else:
            out, state = self._valid_steps(stack, x, state, lengths)
        out = out if self.batch_first else out.transpose(0, 1)
        if unbatched:
            out = out.squeeze(1 if not self.batch_first else 0)
        return out, self._join_state(state, unbatched)

    def _valid_steps(self, stack: _StackView, x: Tensor, state: State | None, lengths: Tensor | None):
        if state is None:
            state = stack.init_state(x.shape[0], device=x.device, dtype=x.dtype)
        new_state = []
        for i, layer in enumerate(stack.layers):
            outs, finals = zip(*(direction_chunk(layer, d, x, lengths, direction_state(state[i], d))
                                 for d in range(stack.directions)))
            x = stack.between_layers(i, torch.cat(outs, -1) if stack.directions > 1 else outs[0])
            new_state.append(join_states(list(finals)))
        return x, new_state

    def _split_state(self, hx, unbatched: bool) -> State | None:
        """hx as torch takes it ((L*D, B, H), a pair for LSTM) -> one entry per layer ((D, B, H))."""
        if hx is None:
            return None
        d = 2 if self.bidirectional else 1
        parts = hx if isinstance(hx, tuple) else (hx,)
        if unbatched:
            parts = tuple(t.unsqueeze(1) for t in parts)
        layers = [tuple(t[i * d:(i + 1) * d] for t in parts) for i in range(self.num_layers)]
        return layers if self.mode == "LSTM" else [layer[0] for layer in layers]

    def _join_state(self, state: State, unbatched: bool):
        if self.mode == "LSTM":
            h, c = (torch.cat([s[j] for s in state], 0) for j in (0, 1))
            return (h.squeeze(1), c.squeeze(1)) if unbatched else (h, c)
        h = torch.cat(state, 0)
        return h.squeeze(1) if unbatched else h


class LSTM(_Recurrent, nn.LSTM):
    """torch.nn.LSTM with ``checkpoint_time=k`` and ``forward(x, hx, lengths=...)`` (see the module doc)."""

    def __init__(self, *args, checkpoint_time: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self._seqfit_init(checkpoint_time)


class GRU(_Recurrent, nn.GRU):
    """torch.nn.GRU with ``checkpoint_time=k`` and ``forward(x, hx, lengths=...)`` (see the module doc)."""

    def __init__(self, *args, checkpoint_time: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self._seqfit_init(checkpoint_time)


class RNN(_Recurrent, nn.RNN):
    """torch.nn.RNN with ``checkpoint_time=k`` and ``forward(x, hx, lengths=...)`` (see the module doc)."""

    def __init__(self, *args, checkpoint_time: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self._seqfit_init(checkpoint_time)
