"""Full-logits cross-entropy for mixed precision: logits kept in the narrow dtype, softmax in fp32.

Under autocast, ``F.cross_entropy(F.linear(h, W, b).float(), t)`` computes the (N, V) logits in bf16,
widens them to fp32, keeps an fp32 log-softmax for backward, makes an fp32 gradient of it and casts
that back to bf16: ~14 bytes and five passes over memory per logit around the three matmuls. With a
large vocabulary those passes, not the matmuls, decided how much bf16 gained. Here:

    forward   logits = h @ W^T             one narrow GEMM; the (N, V) narrow logits are kept
              lse = logsumexp(logits + b)  fp32, a few cache-sized row blocks at a time
    backward  dz = softmax - onehot        fp32 per row block, written over the kept logits (narrow)
              dh = dz @ W, dW = dz^T @ h   two narrow GEMMs over all rows at once

so the only vocabulary-sized tensor is the narrow logits (2 bytes per logit for bf16), and the
log-sum-exp, the softmax and the bias gradient stay fp32 ("loss and its reductions in fp32").
Measured on WikiText-2 (V = 18k, 64 x 35 tokens, H = 650, 2 CPU cores with AVX512-BF16): the whole
bf16 training step went from 1.71x to 2.07x the speed of fp32 (benchmarks/bench_precision.py).
The chunked loss (nn/chunked_loss.py) recomputes the logits instead of keeping them: less memory,
one more GEMM.
"""

from __future__ import annotations

import torch

from seqfit.nn.chunked_loss import _check_targets

__all__ = ["narrow_logits_cross_entropy", "narrow_autocast"]

# fp32 bytes per softmax pass: small enough to stay in a CPU core's cache between the passes over a
# row block; large on a GPU, where each pass is a kernel launch.
_PASS_BYTES = {"cpu": 4 * 2**20}
_PASS_BYTES_OTHER = 256 * 2**20


def narrow_autocast(x: torch.Tensor) -> torch.dtype | None:
    """The autocast dtype for x's device when autocast is on and narrower than fp32, else None."""
    device_type = x.device.type
    if not torch.is_autocast_enabled(device_type):
        return None
    dtype = torch.get_autocast_dtype(device_type)
    return dtype if dtype != torch.float32 else None


def _widen(narrow: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor:
    """out (r, V) fp32 <- narrow (r, V) + bias, in one pass."""
    return torch.add(narrow, bias, out=out) if bias is not None else out.copy_(narrow)


class _NarrowLogitsCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of hidden @ weight^T + bias; no ignored rows inside."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, matmul_dtype, smoothing):
        f32, dev = torch.float32, hidden.device
        with torch.autocast(dev.type, enabled=False):  # dtypes are chosen explicitly below
            h, w = hidden.to(matmul_dtype), weight.to(matmul_dtype)  # (N, H), (V, H)
            logits = torch.mm(h, w.t())  # (N, V) narrow, kept for backward
            n, vocab = logits.shape
            rows = max(8, _PASS_BYTES.get(dev.type, _PASS_BYTES_OTHER) // (4 * vocab))
            lse = torch.empty(n, dtype=f32, device=dev)  # (N,)
            total = torch.zeros((), dtype=f32, device=dev)
            buf = torch.empty(min(rows, n), vocab, dtype=f32, device=dev)  # (R, V) reused
            for s in range(0, n, rows):
                e = min(s + rows, n)
                z = _widen(logits[s:e], bias, buf[: e - s])  # (r, V) fp32 logits
                t = targets[s:e]  # (r,)
                token_loss = -(1.0 - smoothing) * z.gather(1, t[:, None]).squeeze(1)  # (r,)
                if smoothing:
                    # F.cross_entropy's smoothing: eps * mean over classes of -log p = eps * (lse - mean z)
                    token_loss -= smoothing * z.mean(1)
                top = z.amax(1)  # (r,)
                lse[s:e] = top + z.sub_(top[:, None]).exp_().sum(1).log_()  # (r,)
                total += (token_loss + lse[s:e]).sum()
        ctx.save_for_backward(h, w, bias, targets, lse, logits)
        ctx.rows, ctx.smoothing, ctx.dtypes, ctx.spent = rows, smoothing, (hidden.dtype, weight.dtype), False
        return total

    @staticmethod
    def backward(ctx, grad_total):
        if ctx.spent:  # the first backward overwrote the kept logits with their gradient
            raise RuntimeError("narrow_logits_cross_entropy supports one backward pass (no retain_graph reuse)")
        ctx.spent = True
        h, w, bias, targets, lse, logits = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        rows, eps = ctx.rows, ctx.smoothing
        (n, vocab), f32, dev = logits.shape, torch.float32, logits.device
        grad_h = grad_w = grad_b = None
        with torch.autocast(dev.type, enabled=False):
            if need_b:
                grad_b = torch.zeros(vocab, dtype=f32, device=dev)  # (V,)
            buf = torch.empty(min(rows, n), vocab, dtype=f32, device=dev)  # (R, V)
            index = torch.arange(min(rows, n), device=dev)  # (R,)
            for s in range(0, n, rows):
                e = min(s + rows, n)
                # d loss / d z = softmax(z) - (1 - eps) onehot(t) - eps / V, in fp32
                z = _widen(logits[s:e], bias, buf[: e - s]).sub_(lse[s:e, None]).exp_()  # (r, V)
                if eps:
                    z.sub_(eps / vocab)
                z[index[: e - s], targets[s:e]] -= 1.0 - eps
                if need_b:
                    grad_b += z.sum(0)
                logits[s:e] = z  # (r, V) the gradient replaces the logits, rounded to the narrow dtype
            # The incoming gradient is one scalar: scale the (N, H) and (V, H) results, not the (N, V) one.
            g = grad_total.to(f32)
            if need_h:
                grad_h = torch.mm(logits, w).to(f32).mul_(g).to(ctx.dtypes[0])  # (N, H)
            if need_w:
                grad_w = torch.mm(logits.t(), h).to(f32).mul_(g).to(ctx.dtypes[1])  # (V, H)
            if need_b:
                grad_b = grad_b.mul_(g).to(bias.dtype)
        return grad_h, grad_w, grad_b, None, None, None


def narrow_logits_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                                targets: torch.Tensor, *, matmul_dtype: torch.dtype | None = None,
                                ignore_index: int = -100, label_smoothing: float = 0.0) -> torch.Tensor:
    """Summed F.cross_entropy(hidden @ weight.T + bias, targets) as an fp32 scalar; see the module docstring.

    hidden (..., H), targets (...) int64, weight (V, H) (a tied embedding weight works as is), bias (V,) or
    None. matmul_dtype: None = the autocast dtype if autocast is on, else fp32 (exact, for tests).
    Rows whose target is ignore_index contribute nothing.
    """
    hidden = hidden.reshape(-1, hidden.shape[-1])  # (N, H)
    targets = targets.reshape(-1)  # (N,)
    keep = targets != ignore_index  # (N,)
    if not bool(keep.all()):
        hidden, targets = hidden[keep], targets[keep]  # (M, H), (M,): padding costs nothing downstream
    _check_targets(targets, weight.shape[0])
    if targets.numel() == 0:
        return (hidden.sum() * 0.0 + weight.sum() * 0.0).float()  # keeps the graph so backward still runs
    dtype = matmul_dtype or narrow_autocast(hidden) or torch.float32
    return _NarrowLogitsCrossEntropy.apply(hidden, weight, bias, targets, dtype, float(label_smoothing))
