"""Run a RecurrentStack over long sequences in time chunks of k steps: exact checkpointing or truncated BPTT.

Each chunk still runs PyTorch's fused RNN kernel over its k steps; only the loop over chunks is Python.
The state flows from chunk to chunk, forward in time for the forward direction and backward in time
for the reverse direction of a bidirectional layer::

    time ──▶    | chunk 0 | chunk 1 | chunk 2 |
    forward     s0 ──────▶ s1 ─────▶ s2 ─────▶ s3
    reverse     r0 ◀────── r1 ◀───── r2 ◀───── r3 (initial)

exact (``--checkpoint-time k``): every chunk runs under torch.utils.checkpoint (use_reentrant=False),
which keeps a chunk's inputs and drops what its ops saved; backward recomputes one chunk at a time.
Gradients equal full BPTT's; checkpoint restores the RNG state for the recompute, so dropout draws
the same masks. What stays alive through the forward pass:

  unidirectional  all layers of a chunk run inside one checkpoint (a wavefront), so only the
                  (T/k + 1) x layers boundary states, the stack input (nothing when the input is a
                  function of the chunk, e.g. an embedding lookup) and the top output (nothing when
                  ``reduce`` folds it inside the chunk, e.g. pooling) are kept: O(T/k + k) steps.
  bidirectional   layer l + 1 at step t needs layer l's reverse direction, which depends on every
                  step after t, so layers run one after another; a layer keeps its full output
                  (B, T, 2H) for the next layer and its boundary states, but no per-step gate
                  activations (a fused LSTM keeps about 10 H-sized values per step and layer).

truncated (``--bptt k``): the state is detached every k steps and each chunk is backpropagated on
its own (``truncated_chunks`` yields a chunk; the caller computes its loss and calls backward
before asking for the next). Bidirectional layers first run a no-grad pass to find every chunk's
boundary states in both directions, then rebuild each chunk with grad from them.

Variable lengths (right padding): a chunk runs each row over its valid steps only (fused calls over
segments where the set of valid rows is constant; see run_direction); rows with none hold their state.
So padding never changes an output or a state, and the reverse direction of each row starts at its own
last step, as with one packed call.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import Tensor, _VF
from torch.utils.checkpoint import checkpoint

from seqfit.nn.state import State, detach_state

__all__ = ["Inputs", "TimeChunk", "resolve_chunk", "chunk_bounds", "valid_steps", "flip_valid", "run_direction",
           "direction_chunk", "direction_state", "join_states", "exact_forward", "truncated_chunks"]

# The stack's input (B, T, I), or a function making its chunk [start, stop) -- called inside the
# checkpoint, so an embedding lookup and its dropout are recomputed rather than kept.
Inputs = Tensor | Callable[[int, int], Tensor]
# Folds a chunk's top-layer output (B, k, D) starting at step `start` into a (B, D') contribution;
# the result of a run is the sum of all chunks' contributions (pooling inside the checkpoint).
Reduce = Callable[[Tensor, int], Tensor]

# nn.LSTM / nn.GRU / nn.RNN call these fused kernels in their forward (torch/nn/modules/rnn.py); calling
# them directly lets one direction of a bidirectional layer run on its own with that direction's weights.
_FUSED = {"LSTM": _VF.lstm, "GRU": _VF.gru, "RNN_TANH": _VF.rnn_tanh, "RNN_RELU": _VF.rnn_relu}
_WEIGHTS = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")


@dataclass
class TimeChunk:
    start: int
    stop: int
    out: Tensor  # (B, stop - start, H * directions) top-layer output, with grad through this chunk only
    state: State  # unidirectional: the state after this chunk; bidirectional: the final state (no grad)


def resolve_chunk(k: int, total: int) -> int:
    """Chunk length for a sequence of ``total`` steps: -1 means about sqrt(T), the O(T/k + k) optimum."""
    if k < 0:
        k = math.ceil(math.sqrt(total))
    return max(1, min(k, total))


def chunk_bounds(total: int, k: int) -> list[tuple[int, int]]:
    return [(s, min(s + k, total)) for s in range(0, total, k)]


def valid_steps(lengths: Tensor | None, start: int, stop: int) -> Tensor | None:
    """Steps of each row inside [start, stop) (CPU int64), or None when every row fills the chunk."""
    if lengths is None:
        return None
    n = (lengths - start).clamp(0, stop - start)  # (B,)
    return None if bool((n == stop - start).all()) else n


def flip_valid(x: Tensor, n: Tensor | None) -> Tensor:
    """Reverse each row's first n[b] steps of x (B, k, ...); padding stays where it is (an involution)."""
    if n is None:
        return x.flip(1)
    j = torch.arange(x.shape[1])
    index = torch.where(j < n[:, None], n[:, None] - 1 - j, j).to(x.device)  # (B, k)
    return x.gather(1, index.view(*index.shape, *([1] * (x.dim() - 2))).expand_as(x))


def _fused(layer, d: int, data: Tensor, batch_sizes: Tensor | None, h):
    suffix = "_reverse" if d else ""
    weights = [getattr(layer, name + suffix) for name in _WEIGHTS]
    fn = _FUSED[layer.mode]
    hx = list(h) if isinstance(h, tuple) else h
    if batch_sizes is None:
        result = fn(data, hx, weights, True, 1, 0.0, layer.training, False, True)
    else:
        result = fn(data, batch_sizes, hx, weights, True, 1, 0.0, layer.training, False)
    return result[0], (tuple(result[1:]) if layer.mode == "LSTM" else result[1])


def _rows(h, index: Tensor):
    return tuple(t.index_select(1, index) for t in h) if isinstance(h, tuple) else h.index_select(1, index)


def _put_rows(h, index: Tensor, part):
    if isinstance(h, tuple):
        return tuple(t.index_copy(1, index, p) for t, p in zip(h, part))
    return h.index_copy(1, index, part)


def run_direction(layer, d: int, x: Tensor, n: Tensor | None, h):
    """Direction d of a single-layer nn.LSTM/GRU/RNN forward over x (B, k, I) from state h (1, B, H).

    n (B,): valid leading steps per row (None: all k). Rows with n = 0 keep their state and output
    zeros; the others stop after their last valid step, so their state is the one after it, as with a
    packed sequence. Returns out (B, k, H) and the new state. (The reverse direction is this on
    flip_valid(x).)

    Not packed: on CPU a packed sequence leaves oneDNN's fused kernel for a per-step loop (20x slower
    for a 32 x 400 LSTM batch). Instead the steps are cut where rows end: between two consecutive
    distinct lengths every remaining row is valid, so one fused call covers that segment -- at most
    one call per distinct length, the same tokens computed as packed, the same results.
    """
    B, k = x.shape[:2]
    if n is None:
        return _fused(layer, d, x, None, h)
    ends = sorted(set(n.tolist()) - {0})
    # one split into segments (its backward is one cat): a row subset copies only its segment's steps
    sizes = [e - s for s, e in zip([0] + ends, ends)] + ([k - ends[-1]] if ends and ends[-1] < k else [])
    segments = x.split(sizes, dim=1) if ends else ()
    pieces, start = [], 0
    for end, segment in zip(ends, segments):
        rows = (n >= end).nonzero().squeeze(1).to(x.device)  # rows valid through [start, end)
        inputs = segment if len(rows) == B else segment.index_select(0, rows)
        out, part = _fused(layer, d, inputs, None, _rows(h, rows))
        pieces.append(out if len(rows) == B else out.new_zeros(B, end - start, out.shape[-1]).index_copy(0, rows, out))
        h = _put_rows(h, rows, part)
        start = end
    if start < k:  # steps no row reaches (zeros in the kernel's output dtype, as under autocast)
        like = pieces[0] if pieces else x
        pieces.append(like.new_zeros(B, k - start, layer.hidden_size))
    return torch.cat(pieces, 1) if len(pieces) > 1 else pieces[0], h


def direction_chunk(layer, d: int, x: Tensor, n: Tensor | None, h):
    if d == 0:
        return run_direction(layer, 0, x, n, h)
    out, h = run_direction(layer, 1, flip_valid(x, n), n, h)
    return flip_valid(out, n), h


def direction_state(s, d: int):
    """Direction d of one layer's state (directions, B, H) -> (1, B, H)."""
    return tuple(t[d:d + 1] for t in s) if isinstance(s, tuple) else s[d:d + 1]


def join_states(parts: list):
    if isinstance(parts[0], tuple):
        return tuple(torch.cat(ts, 0) for ts in zip(*parts))
    return torch.cat(parts, 0)


def _chunk_input(inputs: Inputs, start: int, stop: int) -> Tensor:
    return inputs[:, start:stop] if isinstance(inputs, Tensor) else inputs(start, stop)


def _wavefront_chunk(stack, inputs: Inputs, start: int, stop: int, n: Tensor | None, state: State,
                     reduce: Reduce | None):
    """All layers of a unidirectional stack over one chunk: (top output or its reduction, new state)."""
    x = _chunk_input(inputs, start, stop)  # (B, k, I)
    new_state = []
    for i, layer in enumerate(stack.layers):
        x, s = run_direction(layer, 0, x, n, state[i])  # (B, k, H)
        new_state.append(s)
        x = stack.between_layers(i, x)
    return (reduce(x, start) if reduce is not None else x), new_state


def _prepare(stack, inputs: Inputs, state: State | None, lengths: Tensor | None, total: int | None):
    if isinstance(inputs, Tensor):
        total = inputs.shape[1]
        probe = inputs
    else:
        if total is None:
            raise ValueError("a function as inputs needs total= (the sequence length)")
        probe = None
    if lengths is not None:
        lengths = lengths.detach().to("cpu", torch.int64)
    if state is None:
        batch = probe.shape[0] if probe is not None else int(lengths.shape[0]) if lengths is not None else None
        if batch is None:
            raise ValueError("cannot tell the batch size: give state=, lengths= or a tensor as inputs")
        param = next(stack.parameters())
        state = stack.init_state(batch, device=param.device, dtype=param.dtype)
    return total, state, lengths


def exact_forward(stack, inputs: Inputs, state: State | None = None, lengths: Tensor | None = None, k: int = -1,
                  *, total: int | None = None, reduce: Reduce | None = None, checkpointed: bool = True,
                  ) -> tuple[Tensor, State]:
    """Same result as ``stack(x, state, lengths)`` with every chunk of k steps checkpointed.

    Returns (outputs (B, T, D), final state), or (sum of ``reduce`` over chunks, final state).
    Without grad (evaluation), or with ``checkpointed=False``, the same chunks run unwrapped; without
    grad that bounds memory to one chunk (unidirectional).
    """
    total, state, lengths = _prepare(stack, inputs, state, lengths, total)
    k = resolve_chunk(k, total)
    grad = checkpointed and torch.is_grad_enabled()

    def run(fn, *args):
        return checkpoint(fn, *args, use_reentrant=False) if grad else fn(*args)

    bounds = chunk_bounds(total, k)
    if stack.directions == 1:
        pieces = []
        for start, stop in bounds:
            y, state = run(_wavefront_chunk, stack, inputs, start, stop, valid_steps(lengths, start, stop), state, reduce)
            pieces.append(y)
        return (sum(pieces[1:], pieces[0]) if reduce is not None else torch.cat(pieces, 1)), state

    x = inputs if isinstance(inputs, Tensor) else torch.cat([inputs(s, e) for s, e in bounds], 1)  # (B, T, I)
    steps = [valid_steps(lengths, s, e) for s, e in bounds]
    new_state: State = []
    for i, layer in enumerate(stack.layers):
        halves, finals = [], []
        chunks = x.split([e - s for s, e in bounds], 1)  # one split: its backward is one cat, not a (B, T, I) per chunk
        for d in range(stack.directions):
            h = direction_state(state[i], d)
            pieces = [None] * len(bounds)
            for c in (range(len(bounds)) if d == 0 else reversed(range(len(bounds)))):
                pieces[c], h = run(direction_chunk, layer, d, chunks[c], steps[c], h)
            halves.append(torch.cat(pieces, 1))  # (B, T, H)
            finals.append(h)
        x = stack.between_layers(i, torch.cat(halves, -1))  # (B, T, 2H); the next layer's input
        new_state.append(join_states(finals))
    return (reduce(x, 0) if reduce is not None else x), new_state


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device):
    """Run under a fixed RNG seed and restore the global RNG after (None: no change)."""
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def truncated_chunks(stack, inputs: Inputs, state: State | None = None, lengths: Tensor | None = None, k: int = 35,
                     *, total: int | None = None,
                     context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                     ) -> Iterator[TimeChunk]:
    """Truncated BPTT: yield chunk after chunk; backpropagate each one's loss before taking the next.

    The state entering a chunk is detached, so a chunk's graph reaches back k steps at most and is
    freed by its backward. ``context`` wraps every forward computation (e.g. precision.autocast).
    Carry ``chunk.state`` of the last chunk (detached) into the next batch to continue a stream.
    """
    total, state, lengths = _prepare(stack, inputs, state, lengths, total)
    bounds = chunk_bounds(total, resolve_chunk(k, total))
    if stack.directions == 1:
        for start, stop in bounds:
            with context():
                out, state = _wavefront_chunk(stack, inputs, start, stop, valid_steps(lengths, start, stop), state, None)
            yield TimeChunk(start, stop, out, state)
            state = detach_state(state)
        return

    # Bidirectional. Pass 1 (no grad) finds each layer's boundary states; pass 2 rebuilds chunk c with
    # grad from them. Dropout must draw the same masks in both passes, so every random op of chunk c
    # runs under a seed fixed for (c, stage): stage 0 the input, stage i + 1 after layer i.
    device = next(stack.parameters()).device
    stages = stack.num_layers + 1
    base = int(torch.randint(0, 2**31 - 1, ()).item()) if stack.training else None

    def seed(c: int, stage: int) -> int | None:
        return None if base is None else (base * 1_000_003 + c * stages + stage) % 2**63

    steps = [valid_steps(lengths, s, e) for s, e in bounds]
    nc = len(bounds)
    # fwd[i][c]: layer i's forward state entering chunk c (fwd[i][nc]: final);
    # rev[i][c + 1]: its reverse state entering chunk c (rev[i][nc]: initial, rev[i][0]: final)
    fwd: list[list] = []
    rev: list[list] = []
    with torch.no_grad(), context():
        xs = []
        for c, (s, e) in enumerate(bounds):
            with _seeded(seed(c, 0), device):
                xs.append(_chunk_input(inputs, s, e))  # (B, k, I)
        for i, layer in enumerate(stack.layers):
            f, r = [direction_state(state[i], 0)], [None] * nc + [direction_state(state[i], 1)]
            outs_f, outs_r = [None] * nc, [None] * nc
            for c in range(nc):
                outs_f[c], h = direction_chunk(layer, 0, xs[c], steps[c], f[-1])
                f.append(h)
            for c in reversed(range(nc)):
                outs_r[c], r[c] = direction_chunk(layer, 1, xs[c], steps[c], r[c + 1])
            for c in range(nc):
                with _seeded(seed(c, i + 1), device):
                    xs[c] = stack.between_layers(i, torch.cat([outs_f[c], outs_r[c]], -1))  # (B, k, 2H)
            fwd.append(f)
            rev.append(r)
        del xs, outs_f, outs_r
    final = [join_states([fwd[i][nc], rev[i][0]]) for i in range(stack.num_layers)]
    for c, (start, stop) in enumerate(bounds):
        with context():
            with _seeded(seed(c, 0), device):
                x = _chunk_input(inputs, start, stop)
            for i, layer in enumerate(stack.layers):
                out_f, _ = direction_chunk(layer, 0, x, steps[c], fwd[i][c])
                out_r, _ = direction_chunk(layer, 1, x, steps[c], rev[i][c + 1])
                with _seeded(seed(c, i + 1), device):
                    x = stack.between_layers(i, torch.cat([out_f, out_r], -1))  # (B, k, 2H)
        yield TimeChunk(start, stop, x, final)
