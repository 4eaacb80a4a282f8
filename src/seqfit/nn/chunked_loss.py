"""Chunked cross-entropy over a large vocabulary: the (N, V) logits never exist at once.

At V = 250k, 64 x 200 tokens of fp32 logits are 12.8 GB, and F.cross_entropy keeps a log-softmax
of the same size for backward and makes two more in backward. Here the forward walks the tokens in
chunks of C rows and, while a chunk's logits are in cache, turns them in place into the gradient of
the logits and folds that into the gradients of the hidden rows, the weight and the bias:

    hidden (N, H) --rows s:s+C--> logits (C, V) --> loss, and when grad is on:
    logits (C, V) --softmax - onehot--> dz (C, V) --> dh (C, H), dW += dz^T h, db += sum dz

The backward then only scales dh, dW, db by its incoming scalar. So one (C, V) fp32 buffer is the only
vocabulary-sized activation, the matmuls are full logits' three, and the (N, V) arrays that full
logits write and read back three times never exist. The same idea as Liger's fused linear
cross-entropy (and torchtune's CEWithChunkedOutputLoss, PR 1390, which keeps each chunk's logits
instead), written as one autograd.Function so that no logits are saved for backward. Since the
gradients are made in the forward, a forward under grad that is never backpropagated, or one that a
checkpoint recomputes, pays for them: keep the loss outside checkpointed regions.

Under autocast the matmuls run in the autocast dtype (bf16) while the log-sum-exp, the gradient of
the logits and the accumulation across chunks stay fp32.

On CPU a caller may hand in a LossWorkspace that keeps the buffer from call to call when a training call
runs as one chunk (N <= C): its fresh buffer would be a fresh mapping, faulted in and zeroed every step
(700 x 18,000 fp32 on 2 cores: the loss's forward and backward took 136 instead of 159 ms with the buffer
kept). A call of many chunks allocates once for all of them, and keeping its buffer would add C x V to
every other phase of the step (+71 MB at the backward peak of a 2 x 650 LSTM on 64 x 200 tokens, V = 18k).
LinearHead and ChunkedCrossEntropy own one.

Within a chunk the softmax and gradient passes walk row blocks of ~4 MiB (ROW_BLOCK_BYTES) that stay in cache;
under bf16 autocast the chunk lives as the bf16 product (then its gradient, cast down) and only one block is
widened to fp32 at a time. fp32 products go through oneDNN where it is clearly faster than MKL (nn/products.py,
measured once per machine); oneDNN writes its logits into a fresh tensor, so such a call keeps no buffer.
"""

from __future__ import annotations

import contextlib

import torch

from seqfit.errors import SeqfitError
from seqfit.nn import products, spare_grads

__all__ = ["chunked_cross_entropy", "ChunkedCrossEntropy", "LossWorkspace", "kept_buffer_bytes", "fresh_logits_used",
           "block_rows", "ROW_BLOCK_BYTES", "chunked_log_softmax", "chunk_tokens_for_budget", "default_chunk_tokens",
           "balanced_chunk", "full_logits_peak_bytes", "DEFAULT_CHUNK_ROWS", "DEFAULT_CHUNK_BUDGET"]

# Every chunk re-reads the (V, H) weight and reads and writes its (V, H) gradient, while its matmuls
# grow with the C rows, so the overhead is ~1/C whatever V is. Measured when the backward still recomputed
# the logits (a fourth matmul), on 2 CPU cores at V=250k, H=512 (N=2048): 1.58x / 1.28x / 1.06x / 1.03x the
# time of full logits at C = 64 / 256 / 512 / 1024 rows; at V=100k, H=256, N=3200: 1.40x / 1.10x / 1.03x /
# 1.01x / 1.01x at C = 256 / 512 / 800 / 1024 / 2048. With the gradients made in the forward, the default
# C = 1024 takes 0.35-0.86x full logits' time at V = 10k-250k (benchmarks/bench_loss.py, 2 threads; 0.57-0.97x
# before the one-pass softmax).
# So the default chunk is sized in rows, at the knee, not in bytes: a byte budget alone (1 GiB before) let
# one chunk hold all 12,800 rows of a 64 x 200 batch at V = 18k, i.e. the full logits, and 2,700 of 3,200
# rows at V = 100k -- a user who asks for the chunked loss is asking for memory. DEFAULT_CHUNK_BUDGET caps
# the (C, V) buffers at very large V: 512 MiB keeps C >= 512 rows (<= 1.10x) up to V = 262k in fp32.
# Under --budget the planner tries smaller chunks (memory/plan.py CHUNK_DIVISORS).
DEFAULT_CHUNK_ROWS = 1024
DEFAULT_CHUNK_BUDGET = 512 * 2**20


def chunk_tokens_for_budget(budget_bytes: int, vocab: int, dtype_bytes: int = 4) -> int:
    """Rows per chunk so that the chunk buffers of the backward pass fit in budget_bytes.

    Each row costs V fp32 (the logits turned into their gradient in place); when the matmul runs in a
    narrower dtype (dtype_bytes < 4, e.g. bf16) it also costs the matmul's output and the gradient cast
    to that dtype: 2 * V * dtype_bytes more.
    """
    if budget_bytes <= 0 or vocab <= 0 or dtype_bytes <= 0:
        raise SeqfitError(f"chunk budget, vocabulary and dtype size must be positive "
                          f"(got {budget_bytes}, {vocab}, {dtype_bytes})")
    per_row = vocab * (4 + (2 * dtype_bytes if dtype_bytes < 4 else 0))
    rows = budget_bytes // per_row
    # Multiples of 8 rows keep the matmul tiles whole; below 8 take what fits, at least one row.
    return max(1, rows - rows % 8 if rows >= 8 else rows)


def balanced_chunk(tokens: int, rows: int) -> int:
    """At most ``rows`` rows a chunk, spread evenly over the chunks that ``tokens`` rows need.

    3,200 rows at C = 1,024 run as 4 chunks of 800, not 3 x 1,024 + 128: the buffer is 22% smaller for the
    same number of chunks (the same time). Rounded up to whole 8-row tiles, which never passes ``rows``
    when it is a multiple of 8.
    """
    if tokens <= 0 or rows <= 0:
        return rows
    chunks = -(-tokens // rows)
    even = -(-tokens // chunks)  # <= rows
    return min(rows, even + (-even) % 8)


def default_chunk_tokens(vocab: int, tokens: int, dtype_bytes: int = 4) -> int:
    """Rows per chunk when none is given: DEFAULT_CHUNK_ROWS capped by DEFAULT_CHUNK_BUDGET, balanced over tokens.

    The planner's estimate (memory/estimate.py) calls this too, so it predicts the chunk the runtime takes.
    """
    rows = min(DEFAULT_CHUNK_ROWS, chunk_tokens_for_budget(DEFAULT_CHUNK_BUDGET, vocab, dtype_bytes))
    return balanced_chunk(tokens, rows)


def full_logits_peak_bytes(tokens: int, vocab: int, dtype_bytes: int = 4) -> int:
    """Predicted vocabulary-sized peak of Linear + F.cross_entropy + backward on full logits.

    Backward holds the saved log-softmax, the gradient of the log-softmax from nll_loss and the
    gradient of the logits at the same time: three (N, V) fp32 arrays; a narrower matmul dtype adds
    the logits and their gradient in that dtype.
    """
    extra = 2 * dtype_bytes if dtype_bytes < 4 else 0
    return tokens * vocab * (3 * 4 + extra)


@contextlib.contextmanager
def _autocast_off(device_type: str):
    # Inside the Function the dtypes are chosen explicitly; autocast would re-cast them per op.
    with torch.autocast(device_type, enabled=False):
        yield


def _matmul_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return torch.promote_types(hidden.dtype, weight.dtype)


def _fresh_logits(w: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether the fp32 logits come from oneDNN, which writes a fresh (C, V) tensor and takes no buffer."""
    return (w.dtype == torch.float32 and w.device.type == "cpu" and (bias is None or bias.dtype == torch.float32)
            and products.fp32_library() == "onednn")


def _chunk_logits(h: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor | None) -> torch.Tensor:
    """(C, V) fp32 <- h (C, H) @ w (V, H)^T + bias, with the matmul in w's dtype: in ``out`` when given, else
    a fresh tensor (_fresh_logits)."""
    if w.dtype == torch.float32 and (bias is None or bias.dtype == torch.float32):
        # Writing straight into the reused buffer saves a (C, V) allocation and its page faults per chunk.
        z = products.mm_nt(h.to(torch.float32), w, bias, out=out)  # (C, V)
        return z if out is None or z is out else out.copy_(z)
    out = torch.empty(h.shape[0], w.shape[0], device=h.device) if out is None else out
    out.copy_(torch.mm(h.to(w.dtype), w.t()))  # (C, V) narrow matmul, widened to fp32
    if bias is not None:
        out.add_(bias)  # bias added in fp32, after the narrow matmul
    return out


class LossWorkspace:
    """The chunked loss's (C, V) fp32 buffer, and under bf16 autocast its (C, V) bf16 one (the product, then the
    gradient cast down), kept between calls on CPU (module docstring).

    Its owner decides how long the memory stays: a LinearHead's lives as long as the model. Only the calls
    that keep it (a training call of one chunk) size it, so what it holds is the training step's buffer, which
    the planner counts (memory/estimate.head_bytes); a larger call without grad (an evaluation batch) gets
    a fresh buffer.
    Elsewhere than on CPU (CUDA, whose caching allocator reuses freed blocks anyway) every call gets a fresh
    buffer and nothing is held. One workspace serves one call at a time; a copy of its owner (deepcopy)
    starts with an empty one.
    """

    def __init__(self):
        self._buffers: dict[str, torch.Tensor] = {}

    def take(self, name: str, shape: tuple[int, int], device: torch.device, keep: bool = True,
             dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The buffer ``name`` of ``shape`` and ``dtype``, uninitialised: the kept one when it is large enough."""
        size = shape[0] * shape[1]
        kept = self._buffers.get(name)
        if device.type == "cpu" and kept is not None and kept.dtype == dtype and kept.numel() >= size:
            return kept[:size].view(shape)
        if device.type != "cpu" or not keep:
            return torch.empty(shape, dtype=dtype, device=device)
        self._buffers.pop(name, None)  # the old one goes before the larger one is made
        self._buffers[name] = torch.empty(size, dtype=dtype)
        return self._buffers[name].view(shape)

    def kept(self, name: str = "logits") -> torch.Tensor | None:
        """The buffer ``name`` held now, if any: "logits" (fp32), under autocast "narrow" (the product and the
        gradient cast down), "rows" (a block of fp32 rows), "weight" (the weight cast down) and "partial" (the
        weight gradient's product)."""
        return self._buffers.get(name)

    @property
    def held_bytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self._buffers.values())

    def release(self) -> None:
        self._buffers = {}

    def __deepcopy__(self, memo) -> "LossWorkspace":
        return LossWorkspace()


def _keeps_buffers(device: str, tokens: int, chunk: int) -> bool:
    """Whether a training call keeps its buffers for the next one: on CPU, when it runs as one chunk."""
    return device == "cpu" and tokens <= chunk


def kept_buffer_bytes(device: str, tokens: int, chunk: int, vocab: int, fresh_logits: bool = False,
                      narrow_bytes: int = 0, hidden: int = 0) -> int:
    """Bytes a LossWorkspace keeps from one training call of ``tokens`` rows to the next: the buffers of a call
    that runs as one chunk, on CPU (module docstring): the fp32 logits, unless oneDNN makes them
    (``fresh_logits``, fresh_logits_used); under a matmul narrower than fp32 (``narrow_bytes`` an element, 0 for
    fp32) the narrow product, a block of fp32 rows, and the (V, ``hidden``) weight copy and partial product.
    The planner's estimates call this too."""
    if not _keeps_buffers(device, tokens, chunk):
        return 0
    if narrow_bytes:
        return (tokens * vocab * narrow_bytes + min(block_rows(vocab), tokens) * vocab * 4
                + 2 * vocab * hidden * narrow_bytes)
    return 0 if fresh_logits else tokens * vocab * 4


def fresh_logits_used(device: str, precision: str) -> bool:
    """Whether a training call on ``device`` in ``precision`` gets its fp32 logits fresh from oneDNN (no kept
    buffer; the weight gradient's (V, H) partial product fresh per chunk too): the planner's view of
    _fresh_logits."""
    return device == "cpu" and precision == "fp32" and products.fp32_library() == "onednn"


# The softmax and gradient passes walk a chunk in row blocks of about this many fp32 bytes, which stay in cache.
ROW_BLOCK_BYTES = 4 * 2**20


def block_rows(vocab: int) -> int:
    """Rows of one cache-sized block of fp32 logits (ROW_BLOCK_BYTES), a multiple of 8, at least 8."""
    rows = ROW_BLOCK_BYTES // (4 * max(vocab, 1))
    return max(8, rows - rows % 8)


# Below this a target's probability has lost fp32 precision (denormals start at 1.2e-38): its -log is
# taken from the row's log-sum-exp instead.
_TINY_PROB = 1e-30


def _softmax_in_place(z: torch.Tensor) -> None:
    """z (c, V) <- softmax(z) over the last dim, without a second (c, V) buffer.

    PyTorch's CPU softmax kernel reads and writes one row at a time, so its out= may be its input: one pass
    over the rows while each is in cache, 1.7x faster than max, subtract, exp, sum and divide as five in-place
    passes (700 x 18,000 fp32 on 2 cores: 9.0 vs 15.4 ms; the tests compare it with F.cross_entropy). Other
    devices, not measured, and a PyTorch without that entry point take the five passes.
    """
    if z.device.type == "cpu" and hasattr(torch, "_softmax"):
        torch._softmax(z, 1, False, out=z)
        return
    z.sub_(z.amax(1, keepdim=True)).exp_()
    z.div_(z.sum(1, keepdim=True))


def _target_nll(p: torch.Tensor, t: torch.Tensor, picked: torch.Tensor, h: torch.Tensor, w: torch.Tensor,
                bias: torch.Tensor | None) -> torch.Tensor:
    """-log softmax(z)[t] per row, from p = softmax(z) (c, V) and picked = z[t] (c,).

    Rows whose p(t) is below _TINY_PROB (a loss above 69 nats) recompute their logits and take lse - z[t].
    """
    p_t = p.gather(1, t[:, None]).squeeze(1)  # (c,)
    nll = -p_t.log()  # (c,)
    tiny = p_t < _TINY_PROB  # (c,)
    if bool(tiny.any()):
        rows = tiny.nonzero().squeeze(1)  # (r,)
        z = torch.mm(h[rows].to(w.dtype), w.t()).float()  # (r, V)
        if bias is not None:
            z += bias
        nll[rows] = torch.logsumexp(z, 1) - picked[rows]
    return nll


def _rows_loss(z: torch.Tensor, t: torch.Tensor, h: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None,
               smoothing: float, make_grad: bool, grad_b: torch.Tensor | None, arange: torch.Tensor) -> torch.Tensor:
    """Summed loss of a block of fp32 logits z (r, V) against t (r,); with ``make_grad`` z becomes d loss / d z
    in place and grad_b (V,) gains its column sums. ``arange``: 0..r-1 or longer, made once per call."""
    picked = z.gather(1, t[:, None]).squeeze(1)  # (r,) target logits
    mean_z = z.mean(1) if smoothing else None  # (r,)
    _softmax_in_place(z)  # (r, V)
    # -log p(t) = lse - z_t, read off the softmax; where p(t) underflows its rows are recomputed.
    nll = _target_nll(z, t, picked, h, w, bias)  # (r,)
    token_loss = (1.0 - smoothing) * nll
    if smoothing:
        # F.cross_entropy's smoothing: eps * mean over classes of -log p = eps * (lse - mean z).
        token_loss += smoothing * (picked + nll - mean_z)
    if make_grad:
        # d loss / d z = softmax(z) - (1 - eps) onehot(t) - eps / V, built in place.
        if smoothing:
            z.sub_(smoothing / z.shape[1])
        z[arange[: z.shape[0]], t] -= 1.0 - smoothing
        if grad_b is not None:
            grad_b += z.sum(0)  # (V,)
    return token_loss.sum()


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of hidden @ weight^T + bias against targets; no ignored rows inside.

    With ``with_grad`` the forward also builds the gradients while each chunk's logits are in cache (as
    Liger's fused linear cross-entropy does), so a step costs the three matmuls of full logits and no
    recompute; backward only scales them by the incoming scalar. The gradients wait in ctx from the loss's
    forward to its backward, the moment the backward would have made them anyway (the loss is the last op of
    a forward), so the peak is the same. Without ``with_grad`` (no grad mode) only the loss is computed.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk, smoothing, matmul_dtype, with_grad, workspace):
        n, vocab, width = hidden.shape[0], weight.shape[0], hidden.shape[1]
        f32, dev = torch.float32, hidden.device
        need_h, need_w, need_b = ctx.needs_input_grad[:3] if with_grad else (False, False, False)
        grad_h = torch.empty(n, width, dtype=f32, device=dev) if need_h else None  # (N, H)
        # (V, H), in the last step's gradient where the engine handed it back (nn/spare_grads.py): a narrow
        # matmul's first chunk overwrites it; the fp32 products accumulate into zeros
        grad_w = spare_grads.take(weight, (vocab, width), f32, dev) if need_w else None
        if grad_w is not None and matmul_dtype == f32:
            grad_w.zero_()
        grad_b = torch.zeros(vocab, dtype=f32, device=dev) if need_b else None  # (V,)
        with _autocast_off(dev.type):
            narrow = matmul_dtype != f32
            fresh = not narrow and _fresh_logits(weight, bias)
            keep = with_grad and _keeps_buffers(dev.type, n, chunk)
            workspace = workspace or LossWorkspace()
            c, rows = min(chunk, n), min(block_rows(vocab), chunk, n)
            if narrow:  # the narrow product, then the gradient cast down; fp32 work a row block at a time
                # (a fresh (V, H) bf16 copy of the weight faulted in 6.0 ms where a kept one is written in 0.3)
                w = workspace.take("weight", (vocab, width), dev, keep, matmul_dtype).copy_(weight)  # (V, H)
                nbuf = workspace.take("narrow", (c, vocab), dev, keep, matmul_dtype)  # (C, V)
                scratch = workspace.take("rows", (rows, vocab), dev, keep)  # (rows, V) fp32
                partial = workspace.take("partial", (vocab, width), dev, keep, matmul_dtype) if need_w else None
            else:  # (C, V) fp32, unless oneDNN makes it fresh
                w = weight
                buf = None if fresh else workspace.take("logits", (c, vocab), dev, keep)
            total = torch.zeros((), dtype=f32, device=dev)
            arange = torch.arange(rows, device=dev)  # (rows,) the target columns' row indices
            make_grads = need_h or need_w or need_b
            for s in range(0, n, chunk):
                z = zb = None  # fresh logits: the last chunk's (and views of them) go before the next's are made
                e = min(s + chunk, n)
                h = hidden[s:e].to(w.dtype)  # (c, H)
                if narrow:  # (c, V) narrow product; the gradient, cast down, overwrites it
                    z = torch.mm(h, w.t(), out=nbuf[: e - s])
                else:  # (c, V) fp32 logits, turned into their gradient in place
                    z = _chunk_logits(h, w, bias, None if fresh else buf[: e - s])
                # The elementwise work row block by row block, each in cache: a pass over the whole (c, V)
                # chunk per step of it went to memory each time (about half the loss's time under bf16).
                for r in range(0, e - s, rows):
                    q = min(r + rows, e - s)
                    zb = z[r:q]
                    if narrow:
                        zb = scratch[: q - r].copy_(zb)  # widened to fp32
                        if bias is not None:
                            zb.add_(bias)
                    total += _rows_loss(zb, targets[s + r:s + q], h[r:q], w, bias, smoothing, make_grads, grad_b,
                                        arange)
                    if narrow and make_grads:
                        z[r:q].copy_(zb)
                if not make_grads:
                    continue
                # z (c, V) now holds d loss / d logits: the backward products' operand
                if need_h:
                    if narrow:
                        grad_h[s:e] = torch.mm(z, w)  # (c, H)
                    else:
                        products.mm_nn(z, w, out=grad_h[s:e])  # (c, H)
                if need_w:
                    if narrow:  # (V, H): bf16 partial, fp32 accumulation across chunks
                        torch.mm(z.t(), h, out=partial)
                        if s == 0:
                            grad_w.copy_(partial)
                        else:
                            grad_w.add_(partial)
                    else:
                        products.mm_tn_into(grad_w, z, h)  # (V, H)
        ctx.grads = (grad_h, grad_w, grad_b)
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_total):
        if ctx.grads is None:
            raise SeqfitError("the chunked cross-entropy was backpropagated twice (retain_graph); it keeps its "
                              "gradients for one backward, scaled in place")
        # The incoming gradient is one scalar: scale the (N, H) and (V, H) results in place (a copy of the
        # (V, H) one would raise the peak by a weight matrix), not every (C, V) chunk.
        scale = grad_total.to(torch.float32)
        grads = tuple(None if g is None else g.mul_(scale).to(dtype) for g, dtype in zip(ctx.grads, ctx.dtypes))
        ctx.grads = None
        return (*grads, None, None, None, None, None, None)


def _resolve_chunk(chunk_tokens: int, vocab: int, tokens: int, matmul_dtype: torch.dtype) -> int:
    if chunk_tokens < 0:
        raise SeqfitError(f"chunk_tokens must be >= 0 (0: default_chunk_tokens), got {chunk_tokens}")
    if chunk_tokens:
        return chunk_tokens
    return default_chunk_tokens(vocab, tokens, torch.empty((), dtype=matmul_dtype).element_size())


def _check_targets(targets: torch.Tensor, vocab: int) -> None:
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= vocab):
        raise SeqfitError(f"target ids must lie in [0, {vocab}) (got {int(targets.min())}..{int(targets.max())}): "
                          f"was the data prepared with a different vocabulary?")


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                          targets: torch.Tensor, *, chunk_tokens: int = 0, ignore_index: int = -100,
                          label_smoothing: float = 0.0, reduction: str = "sum",
                          workspace: LossWorkspace | None = None) -> torch.Tensor:
    """F.cross_entropy(hidden @ weight.T + bias, targets) without the (N, V) logits; fp32 scalar.

    hidden (..., H), targets (...) int64, weight (V, H) (a tied embedding weight works as is: autograd adds
    its two gradients), bias (V,) or None. chunk_tokens rows per chunk, 0 = default_chunk_tokens.
    Rows whose target is ignore_index contribute nothing; reduction "mean" divides by the kept rows, as
    F.cross_entropy does. ``workspace`` keeps the chunk buffer for the next call (LossWorkspace).
    """
    if reduction not in ("sum", "mean"):
        raise SeqfitError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise SeqfitError(f"label_smoothing must lie in [0, 1], got {label_smoothing}")
    hidden = hidden.reshape(-1, hidden.shape[-1])  # (N, H)
    targets = targets.reshape(-1)  # (N,)
    if hidden.shape[0] != targets.shape[0] or hidden.shape[1] != weight.shape[1]:
        raise SeqfitError(f"shapes do not match: hidden {tuple(hidden.shape)}, targets {tuple(targets.shape)}, "
                          f"weight {tuple(weight.shape)}")
    keep = targets != ignore_index  # (N,)
    if not bool(keep.all()):
        # Padding costs nothing downstream: drop its rows once here (autograd scatters the gradient back).
        hidden, targets = hidden[keep], targets[keep]  # (M, H), (M,)
    vocab = weight.shape[0]
    _check_targets(targets, vocab)
    matmul_dtype = _matmul_dtype(hidden, weight)
    if targets.numel() == 0:
        total = hidden.sum() * 0.0 + weight.sum() * 0.0  # keeps the graph so backward still runs
        return total.float()
    chunk = _resolve_chunk(chunk_tokens, vocab, targets.shape[0], matmul_dtype)
    # The gradients are built in the forward, so only when a backward can follow (not under no_grad).
    with_grad = torch.is_grad_enabled()
    total = _ChunkedCrossEntropy.apply(hidden, weight, bias, targets, chunk, float(label_smoothing), matmul_dtype,
                                       with_grad, workspace)
    return total / targets.shape[0] if reduction == "mean" else total


@torch.no_grad()
def chunked_log_softmax(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *,
                        chunk_tokens: int = 0) -> torch.Tensor:
    """(N, V) fp32 log-probabilities of hidden (N, H), one chunk of rows at a time, without grad.

    The result is written in place chunk by chunk, so besides the (N, V) answer only one chunk's
    temporaries exist (F.log_softmax(F.linear(...)) holds the logits and the answer together).
    """
    hidden = hidden.reshape(-1, hidden.shape[-1])  # (N, H)
    matmul_dtype = _matmul_dtype(hidden, weight)
    n, vocab = hidden.shape[0], weight.shape[0]
    chunk = _resolve_chunk(chunk_tokens, vocab, n, matmul_dtype)
    out = torch.empty(n, vocab, dtype=torch.float32, device=hidden.device)  # (N, V)
    with _autocast_off(hidden.device.type):
        w = weight.to(matmul_dtype)  # (V, H)
        for s in range(0, n, chunk):
            e = min(s + chunk, n)
            z = _chunk_logits(hidden[s:e], w, bias, out[s:e])  # (c, V)
            z.sub_(torch.logsumexp(z, dim=1, keepdim=True))  # (c, V) log-probabilities
    return out



class ChunkedCrossEntropy(torch.nn.Module):
    """chunked_cross_entropy as a module: ``loss(hidden, weight, bias, targets)``, e.g. with an output
    nn.Linear ``out``: ``loss(h, out.weight, out.bias, y)`` in place of ``F.cross_entropy(out(h), y)``.

    On CPU it keeps its (C, V) chunk buffer between calls (LossWorkspace; ``keep_buffer=False``: a fresh one
    each call, nothing held); ``release()`` gives it back."""

    def __init__(self, *, chunk_tokens: int = 0, ignore_index: int = -100, label_smoothing: float = 0.0,
                 reduction: str = "mean", keep_buffer: bool = True):
        super().__init__()
        self.chunk_tokens, self.ignore_index = chunk_tokens, ignore_index
        self.label_smoothing, self.reduction = label_smoothing, reduction
        self.workspace = LossWorkspace() if keep_buffer else None

    def release(self) -> None:
        if self.workspace is not None:
            self.workspace.release()

    def forward(self, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                targets: torch.Tensor) -> torch.Tensor:
        return chunked_cross_entropy(hidden, weight, bias, targets, chunk_tokens=self.chunk_tokens,
                                     ignore_index=self.ignore_index, label_smoothing=self.label_smoothing,
                                     reduction=self.reduction, workspace=self.workspace)
