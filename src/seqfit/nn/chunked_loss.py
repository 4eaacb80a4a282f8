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
"""

from __future__ import annotations

import contextlib

import torch

from seqfit.errors import SeqfitError

__all__ = ["chunked_cross_entropy", "ChunkedCrossEntropy", "chunked_log_softmax", "chunk_tokens_for_budget",
           "default_chunk_tokens", "balanced_chunk", "full_logits_peak_bytes", "DEFAULT_CHUNK_ROWS",
           "DEFAULT_CHUNK_BUDGET"]

# Every chunk re-reads the (V, H) weight and reads and writes its (V, H) gradient, while its matmuls
# grow with the C rows, so the overhead is ~1/C whatever V is. Measured when the backward still recomputed
# the logits (a fourth matmul), on 2 CPU cores at V=250k, H=512 (N=2048): 1.58x / 1.28x / 1.06x / 1.03x the
# time of full logits at C = 64 / 256 / 512 / 1024 rows; at V=100k, H=256, N=3200: 1.40x / 1.10x / 1.03x /
# 1.01x / 1.01x at C = 256 / 512 / 800 / 1024 / 2048. With the gradients made in the forward, the default
# C = 1024 takes 0.57-0.97x full logits' time at V = 10k-250k (benchmarks/bench_loss.py, 2 threads).
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


def _chunk_logits(h: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor:
    """out (C, V) fp32 <- h (C, H) @ w (V, H)^T + bias, with the matmul in w's dtype."""
    if w.dtype == torch.float32 and (bias is None or bias.dtype == torch.float32):
        h = h.to(torch.float32)
        # Writing straight into the reused buffer saves a (C, V) allocation and its page faults per chunk.
        if bias is None:
            return torch.mm(h, w.t(), out=out)  # (C, V)
        return torch.addmm(bias, h, w.t(), out=out)  # (C, V)
    out.copy_(torch.mm(h.to(w.dtype), w.t()))  # (C, V) narrow matmul, widened to fp32
    if bias is not None:
        out.add_(bias)  # bias added in fp32, after the narrow matmul
    return out


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of hidden @ weight^T + bias against targets; no ignored rows inside.

    With ``with_grad`` the forward also builds the gradients while each chunk's logits are in cache (as
    Liger's fused linear cross-entropy does), so a step costs the three matmuls of full logits and no
    recompute; backward only scales them by the incoming scalar. The gradients wait in ctx from the loss's
    forward to its backward, the moment the backward would have made them anyway (the loss is the last op of
    a forward), so the peak is the same. Without ``with_grad`` (no grad mode) only the loss is computed.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk, smoothing, matmul_dtype, with_grad):
        n, vocab, width = hidden.shape[0], weight.shape[0], hidden.shape[1]
        f32, dev = torch.float32, hidden.device
        need_h, need_w, need_b = ctx.needs_input_grad[:3] if with_grad else (False, False, False)
        grad_h = torch.empty(n, width, dtype=f32, device=dev) if need_h else None  # (N, H)
        grad_w = torch.zeros(vocab, width, dtype=f32, device=dev) if need_w else None  # (V, H)
        grad_b = torch.zeros(vocab, dtype=f32, device=dev) if need_b else None  # (V,)
        with _autocast_off(dev.type):
            w = weight.to(matmul_dtype)  # (V, H); a copy only when the matmul is narrower
            narrow = w.dtype != f32
            total = torch.zeros((), dtype=f32, device=dev)
            buf = torch.empty(min(chunk, n), vocab, dtype=f32, device=dev)  # (C, V) reused
            rows = torch.arange(min(chunk, n), device=dev)  # (C,)
            for s in range(0, n, chunk):
                e = min(s + chunk, n)
                h = hidden[s:e].to(w.dtype)  # (c, H)
                z = _chunk_logits(h, w, bias, buf[: e - s])  # (c, V)
                t = targets[s:e]  # (c,)
                picked = z.gather(1, t[:, None]).squeeze(1)  # (c,) target logits
                token_loss = -(1.0 - smoothing) * picked  # (c,)
                if smoothing:
                    # F.cross_entropy's smoothing: eps * mean over classes of -log p = eps * (lse - mean z).
                    token_loss -= smoothing * z.mean(1)
                top = z.amax(1)  # (c,)
                z.sub_(top[:, None]).exp_()  # (c, V) in place: torch.logsumexp would allocate another (C, V)
                total_exp = z.sum(1)  # (c,)
                total += (token_loss + top + total_exp.log()).sum()
                if not (need_h or need_w or need_b):
                    continue
                # d loss / d z = softmax(z) - (1 - eps) onehot(t) - eps / V, built in place in the buffer.
                z.div_(total_exp[:, None])  # (c, V) softmax
                if smoothing:
                    z.sub_(smoothing / vocab)
                z[rows[: e - s], t] -= 1.0 - smoothing
                g = z.to(w.dtype) if narrow else z  # (c, V) matmul operand
                if need_h:
                    if narrow:
                        grad_h[s:e] = torch.mm(g, w)  # (c, H)
                    else:
                        torch.mm(g, w, out=grad_h[s:e])  # (c, H)
                if need_w:
                    if narrow:
                        grad_w += torch.mm(g.t(), h)  # (V, H): bf16 partial, fp32 accumulation across chunks
                    else:
                        grad_w.addmm_(g.t(), h)  # (V, H)
                if need_b:
                    grad_b += z.sum(0)  # (V,)
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
        return (*grads, None, None, None, None, None)


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
                          label_smoothing: float = 0.0, reduction: str = "sum") -> torch.Tensor:
    """F.cross_entropy(hidden @ weight.T + bias, targets) without the (N, V) logits; fp32 scalar.

    hidden (..., H), targets (...) int64, weight (V, H) (a tied embedding weight works as is: autograd adds
    its two gradients), bias (V,) or None. chunk_tokens rows per chunk, 0 = default_chunk_tokens.
    Rows whose target is ignore_index contribute nothing; reduction "mean" divides by the kept rows, as
    F.cross_entropy does.
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
                                       with_grad)
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
    nn.Linear ``out``: ``loss(h, out.weight, out.bias, y)`` in place of ``F.cross_entropy(out(h), y)``."""

    def __init__(self, *, chunk_tokens: int = 0, ignore_index: int = -100, label_smoothing: float = 0.0,
                 reduction: str = "mean"):
        super().__init__()
        self.chunk_tokens, self.ignore_index = chunk_tokens, ignore_index
        self.label_smoothing, self.reduction = label_smoothing, reduction

    def forward(self, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                targets: torch.Tensor) -> torch.Tensor:
        return chunked_cross_entropy(hidden, weight, bias, targets, chunk_tokens=self.chunk_tokens,
                                     ignore_index=self.ignore_index, label_smoothing=self.label_smoothing,
                                     reduction=self.reduction)
