"""Chunked cross-entropy against F.cross_entropy on full logits: loss, gradients, memory."""

import copy
import gc

import pytest
import torch
import torch.nn.functional as F

from seqfit.errors import SeqfitError
from seqfit.measure.memory import read_memory
from seqfit.models.heads import LinearHead
from seqfit.nn import products
from seqfit.nn.chunked_loss import (LossWorkspace, chunk_tokens_for_budget, chunked_cross_entropy, chunked_log_softmax,
                                    full_logits_peak_bytes, kept_buffer_bytes)
from seqfit.nn.precision import cpu_bf16_rnn_supported

N, H, V = 60, 12, 97  # 60 rows: chunks of 16 leave a ragged last chunk, chunks of 20 divide evenly
# fp32 products through each library this torch has (nn/products.py), whichever this machine would pick
LIBRARIES = [pytest.param(lib, marks=pytest.mark.skipif(lib == "onednn" and products._linear() is None,
                                                       reason="no oneDNN linear in this torch"))
             for lib in products.LIBRARIES]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def make_problem(tied: bool, pad: bool, seed: int = 0):
    """hidden (N, H) computed from an embedding lookup, so a tied weight gets two gradient paths."""
    g = torch.Generator().manual_seed(seed)
    emb = torch.nn.Embedding(V, H)
    with torch.no_grad():
        emb.weight.copy_(torch.randn(V, H, generator=g))
    mix = torch.randn(H, H, generator=g, requires_grad=True)
    own_weight = torch.randn(V, H, generator=g).requires_grad_()
    bias = torch.randn(V, generator=g).requires_grad_()
    ids = torch.randint(0, V, (N,), generator=g)
    targets = torch.randint(0, V, (N,), generator=g)
    if pad:
        targets[::5] = -100
    weight = emb.weight if tied else own_weight
    leaves = [mix, emb.weight, bias] + ([] if tied else [own_weight])

    def run(loss_fn):
        hidden = torch.tanh(emb(ids) @ mix)  # (N, H)
        loss = loss_fn(hidden, weight, bias, targets)
        grads = torch.autograd.grad(loss, leaves)
        return loss, grads

    return run


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("pad", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("chunk", [16, 20, 1000])
@pytest.mark.parametrize("library", LIBRARIES)
def test_matches_full_cross_entropy(tied, pad, smoothing, chunk, library):
    run = make_problem(tied, pad)
    ref_loss, ref_grads = run(lambda h, w, b, t: F.cross_entropy(F.linear(h, w, b), t, reduction="sum",
                                                                    label_smoothing=smoothing))
    with products.use_library(library):
        loss, grads = run(lambda h, w, b, t: chunked_cross_entropy(h, w, b, t, chunk_tokens=chunk,
                                                                   label_smoothing=smoothing))
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert rel(loss, ref_loss) < 1e-5
    for got, want in zip(grads, ref_grads):
        assert rel(got, want) < 1e-5


def test_the_five_pass_softmax_where_the_one_pass_kernel_is_missing(monkeypatch):
    run = make_problem(tied=False, pad=True)
    ref_loss, ref_grads = run(lambda h, w, b, t: F.cross_entropy(F.linear(h, w, b), t, reduction="sum"))
    monkeypatch.delattr(torch, "_softmax")
    loss, grads = run(lambda h, w, b, t: chunked_cross_entropy(h, w, b, t, chunk_tokens=16))
    assert rel(loss, ref_loss) < 1e-5
    for got, want in zip(grads, ref_grads):
        assert rel(got, want) < 1e-5


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_a_target_whose_probability_underflows_keeps_its_exact_loss(smoothing):
    # Rows 0-3 put their target 150 nats below the rest (p = e^-150 underflows fp32), rows 4-7 are ordinary:
    # the loss is read off the softmax where it can be and recomputed from the logits where it cannot.
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(8, H, generator=g)
    weight = torch.randn(V, H, generator=g)
    targets = torch.randint(1, V, (8,), generator=g)
    hidden[:4] = 0.0
    hidden[:4, 0] = 1.0
    weight[:, 0] = 0.0
    weight[targets[:4], 0] = -150.0
    hidden.requires_grad_()
    weight.requires_grad_()
    loss = chunked_cross_entropy(hidden, weight, None, targets, chunk_tokens=5, label_smoothing=smoothing,
                                 reduction="sum")
    h64, w64 = hidden.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    ref = F.cross_entropy(h64 @ w64.t(), targets, reduction="sum", label_smoothing=smoothing)
    assert torch.isfinite(loss) and float(loss.detach()) > 4 * 140
    assert rel(loss, ref) < 1e-6
    got = torch.autograd.grad(loss, [hidden, weight])
    want = torch.autograd.grad(ref, [h64, w64])
    for a, b in zip(got, want):
        assert rel(a, b) < 1e-5


def test_mean_reduction_no_bias_and_scaled_gradient():
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(N, H, generator=g, requires_grad=True)
    weight = torch.randn(V, H, generator=g, requires_grad=True)
    targets = torch.randint(0, V, (N,), generator=g)
    targets[3:9] = -100
    ref = F.cross_entropy(hidden @ weight.t(), targets, label_smoothing=0.2)  # mean over kept rows
    got = chunked_cross_entropy(hidden, weight, None, targets, chunk_tokens=7, label_smoothing=0.2, reduction="mean")
    assert rel(got, ref) < 1e-5
    ref_grads = torch.autograd.grad(ref * 0.37, [hidden, weight])
    got_grads = torch.autograd.grad(got * 0.37, [hidden, weight])
    for a, b in zip(got_grads, ref_grads):
        assert rel(a, b) < 1e-5
    assert got_grads[0][3:9].abs().max() == 0  # padding rows get no gradient


def test_gradients_made_in_the_forward_follow_the_graph_and_grad_mode():
    """The forward builds the gradients (fused): only the inputs that need one get one, frozen weights
    included; under no_grad the same loss comes out; the scalar reaching backward scales them; a second
    backward through the same forward is refused rather than scaled twice."""
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(N, H, generator=g, requires_grad=True)
    weight = torch.randn(V, H, generator=g)  # frozen: no weight gradient is made
    bias = torch.randn(V, generator=g, requires_grad=True)
    targets = torch.randint(0, V, (N,), generator=g)
    ref = F.cross_entropy(F.linear(hidden, weight, bias), targets, reduction="sum")
    got = chunked_cross_entropy(hidden, weight, bias, targets, chunk_tokens=16)
    with torch.no_grad():
        assert torch.equal(chunked_cross_entropy(hidden, weight, bias, targets, chunk_tokens=16), got.detach())
    both = got * 2.0 + got.detach() * 5.0  # only the first term carries a gradient
    ref_grads = torch.autograd.grad(ref * 2.0, [hidden, bias])
    got_grads = torch.autograd.grad(both, [hidden, bias], retain_graph=True)
    for a, b in zip(got_grads, ref_grads):
        assert rel(a, b) < 1e-5
    with pytest.raises(SeqfitError, match="twice"):
        torch.autograd.grad(both, [hidden, bias])


def test_three_dim_features_are_flattened():
    hidden = torch.randn(4, 5, H, requires_grad=True)
    weight, targets = torch.randn(V, H), torch.randint(0, V, (4, 5))
    ref = F.cross_entropy(F.linear(hidden, weight).reshape(-1, V), targets.reshape(-1), reduction="sum")
    assert rel(chunked_cross_entropy(hidden, weight, None, targets, chunk_tokens=3), ref) < 1e-5


def test_all_targets_ignored_gives_zero_and_zero_gradient():
    hidden = torch.randn(8, H, requires_grad=True)
    weight = torch.randn(V, H, requires_grad=True)
    loss = chunked_cross_entropy(hidden, weight, None, torch.full((8,), -100))
    loss.backward()
    assert loss.item() == 0.0 and hidden.grad.abs().max() == 0 and weight.grad.abs().max() == 0


def test_bad_targets_raise():
    with pytest.raises(SeqfitError, match="target ids"):
        chunked_cross_entropy(torch.randn(4, H), torch.randn(V, H), None, torch.tensor([0, 1, V, 2]))
    with pytest.raises(SeqfitError, match="shapes"):
        chunked_cross_entropy(torch.randn(4, H), torch.randn(V, H + 1), None, torch.tensor([0, 1, 2, 3]))


def test_bf16_autocast_close_to_fp32_reference():
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(N, H, generator=g, requires_grad=True)
    weight = (0.3 * torch.randn(V, H, generator=g)).requires_grad_()
    bias = torch.randn(V, generator=g, requires_grad=True)
    targets = torch.randint(0, V, (N,), generator=g)
    targets[::4] = -100
    ref = F.cross_entropy(F.linear(hidden, weight, bias), targets, reduction="sum", label_smoothing=0.1)
    ref_grads = torch.autograd.grad(ref, [hidden, weight, bias])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = chunked_cross_entropy(hidden, weight, bias, targets, chunk_tokens=16, label_smoothing=0.1)
    assert got.dtype == torch.float32
    got_grads = torch.autograd.grad(got, [hidden, weight, bias])
    assert [t.dtype for t in got_grads] == [torch.float32] * 3
    assert rel(got, ref) < 1e-2
    for a, b in zip(got_grads, ref_grads):
        assert rel(a, b) < 3e-2
    # The matmul really ran narrow: the result differs from the fp32 one by more than fp32 rounding.
    assert rel(got, ref) > 1e-6


@pytest.fixture
def blas_products():
    with products.use_library("blas"):  # oneDNN writes fresh logits and keeps no buffer
        yield


def test_a_workspace_keeps_a_one_chunk_training_buffer_and_nothing_else(blas_products):
    g = torch.Generator().manual_seed(4)
    hidden = torch.randn(N, H, generator=g, requires_grad=True)
    weight = torch.randn(V, H, generator=g, requires_grad=True)
    targets = torch.randint(0, V, (N,), generator=g)

    def loss_and_grads(**kw):
        loss = chunked_cross_entropy(hidden, weight, None, targets, label_smoothing=0.1, **kw)
        return [loss.detach(), *torch.autograd.grad(loss, [hidden, weight])]

    plain = loss_and_grads(chunk_tokens=64)
    ws = LossWorkspace()
    first = loss_and_grads(chunk_tokens=64, workspace=ws)  # one chunk of 60 rows: kept
    assert ws.held_bytes == N * V * 4
    kept = ws.kept().data_ptr()
    ws.kept().fill_(float("nan"))  # whatever the last call left in it must not leak into the next
    second = loss_and_grads(chunk_tokens=64, workspace=ws)
    assert ws.kept().data_ptr() == kept and ws.held_bytes == N * V * 4
    for a, b, c in zip(plain, first, second):
        assert torch.equal(a, b) and torch.equal(a, c)
    ws.release()
    assert ws.held_bytes == 0
    loss_and_grads(chunk_tokens=16, workspace=ws)  # four chunks reuse one buffer already: nothing kept
    with torch.no_grad():  # an evaluation call is served, never sizes what is kept
        chunked_cross_entropy(hidden, weight, None, targets, chunk_tokens=64, workspace=ws)
    assert ws.held_bytes == 0
    head = LinearHead(H, V, chunked=True, chunk_tokens=64)
    head.loss(hidden, targets).backward()
    assert head.workspace.held_bytes == N * V * 4
    assert copy.deepcopy(head).workspace.held_bytes == 0  # a copy of the model does not copy the buffer


@pytest.mark.skipif(not cpu_bf16_rnn_supported(), reason="this CPU emulates bf16")
def test_a_bf16_workspace_keeps_both_buffers_and_nothing_leaks_between_calls():
    g = torch.Generator().manual_seed(5)
    hidden = torch.randn(N, H, generator=g, requires_grad=True)
    weight = torch.randn(V, H, generator=g, requires_grad=True)
    bias = torch.randn(V, generator=g, requires_grad=True)
    targets = torch.randint(0, V, (N,), generator=g)

    def loss_and_grads(**kw):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = chunked_cross_entropy(hidden, weight, bias, targets, chunk_tokens=64, **kw)
        return [loss.detach(), *torch.autograd.grad(loss, [hidden, weight, bias])]

    plain = loss_and_grads()
    ws = LossWorkspace()
    first = loss_and_grads(workspace=ws)
    assert ws.held_bytes == kept_buffer_bytes("cpu", N, 64, V, narrow_bytes=2, hidden=H) == N * V * 6 + 4 * V * H
    for name in ("narrow", "rows", "weight", "partial"):
        ws.kept(name).fill_(float("nan"))
    second = loss_and_grads(workspace=ws)
    for a, b, c in zip(plain, first, second):
        assert torch.equal(a, b) and torch.equal(a, c)


def test_forward_saves_no_vocabulary_sized_tensor():
    n, h, v = 512, 16, 20_000  # (N, V) fp32 would be 41 MB; hidden + weight are 1.3 MB
    hidden = torch.randn(n, h, requires_grad=True)
    weight = torch.randn(v, h, requires_grad=True)
    bias = torch.zeros(v, requires_grad=True)
    targets = torch.randint(0, v, (n,))
    targets[:7] = -100
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = chunked_cross_entropy(hidden, weight, bias, targets, chunk_tokens=64)
    logits_bytes = n * v * 4
    # Everything kept for backward: hidden rows, weight, bias, targets, row log-sum-exps, the padding mask.
    assert sum(saved) <= (n * h + v * h + v) * 4 + n * 8 * 3
    assert sum(saved) < logits_bytes / 10
    loss.backward()  # and the saved state suffices


def test_retained_memory_after_forward_is_not_n_by_v():
    n, h, v = 1024, 32, 100_000  # full fp32 logits: 410 MB
    hidden = torch.randn(n, h, requires_grad=True)
    weight = torch.randn(v, h, requires_grad=True)
    targets = torch.randint(0, v, (n,))
    gc.collect()
    before = read_memory().anon
    loss = chunked_cross_entropy(hidden, weight, None, targets, chunk_tokens=128)
    retained = read_memory().anon - before
    assert retained < n * v * 4 / 10, retained
    del loss


def test_log_softmax_matches_reference_and_normalises():
    hidden, weight, bias = torch.randn(N, H), torch.randn(V, H), torch.randn(V)
    got = chunked_log_softmax(hidden, weight, bias, chunk_tokens=16)
    ref = F.log_softmax(F.linear(hidden, weight, bias), dim=-1)
    assert got.shape == (N, V) and rel(got, ref) < 1e-5
    assert torch.allclose(got.exp().sum(1), torch.ones(N), atol=1e-5)


def test_chunk_tokens_for_budget():
    budget, v = 64 * 2**20, 50_000
    rows = chunk_tokens_for_budget(budget, v, 4)
    assert rows % 8 == 0 and rows * v * 4 <= budget < (rows + 8) * v * 4
    assert chunk_tokens_for_budget(budget, v, 2) < rows  # a narrow matmul needs extra buffers
    assert chunk_tokens_for_budget(1, 250_000, 4) == 1  # never zero rows
    assert chunk_tokens_for_budget(5 * 250_000 * 4, 250_000, 4) == 5
    with pytest.raises(SeqfitError):
        chunk_tokens_for_budget(0, v, 4)


def test_full_logits_peak_prediction_scales():
    assert full_logits_peak_bytes(12_800, 250_000) == 3 * 12_800 * 250_000 * 4
    assert full_logits_peak_bytes(100, 10, dtype_bytes=2) > full_logits_peak_bytes(100, 10)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fp32_and_bf16_autocast():
    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 comparison needs true fp32 matmuls
    g = torch.Generator(device=dev).manual_seed(3)
    n, h, v = 1000, 64, 5000
    hidden = torch.randn(n, h, device=dev, generator=g, requires_grad=True)
    weight = (0.3 * torch.randn(v, h, device=dev, generator=g)).requires_grad_()
    bias = torch.randn(v, device=dev, generator=g, requires_grad=True)
    targets = torch.randint(0, v, (n,), device=dev, generator=g)
    targets[::9] = -100
    ref = F.cross_entropy(F.linear(hidden, weight, bias), targets, reduction="sum", label_smoothing=0.1)
    ref_grads = torch.autograd.grad(ref, [hidden, weight, bias])
    got = chunked_cross_entropy(hidden, weight, bias, targets, chunk_tokens=300, label_smoothing=0.1)
    got_grads = torch.autograd.grad(got, [hidden, weight, bias])
    assert rel(got, ref) < 1e-5
    for a, b in zip(got_grads, ref_grads):
        assert rel(a, b) < 1e-5
    with torch.autocast("cuda", dtype=torch.bfloat16):
        low = chunked_cross_entropy(hidden, weight, bias, targets, chunk_tokens=300, label_smoothing=0.1)
    low_grads = torch.autograd.grad(low, [hidden, weight, bias])
    assert low.dtype == torch.float32 and rel(low, ref) < 1e-2
    for a, b in zip(low_grads, ref_grads):
        assert a.dtype == torch.float32 and rel(a, b) < 3e-2


def spy_chunk(monkeypatch, n: int, vocab: int, bf16: bool = False) -> int:
    """The rows per chunk chunked_cross_entropy picks by default for n rows: the Function is replaced by a spy."""
    import seqfit.nn.chunked_loss as cl

    seen = []
    monkeypatch.setattr(cl._ChunkedCrossEntropy, "apply", lambda *args: seen.append(args[4]) or torch.zeros(()))
    hidden, weight = torch.zeros(n, 4), torch.zeros(vocab, 4)  # H = 4: only the chunk is looked at
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        chunked_cross_entropy(hidden, weight, None, torch.zeros(n, dtype=torch.long))
    return seen[0]


@pytest.mark.parametrize("vocab,n", [(100_000, 3200), (18_000, 12_800)])
def test_default_chunk_is_rows_at_the_speed_knee_not_a_gigabyte(monkeypatch, vocab, n):
    # A 1 GiB byte budget gave 2,680 of 3,200 rows at V=100k and all 12,800 rows (the full logits) at V=18k.
    chunk = spy_chunk(monkeypatch, n, vocab)
    assert 512 <= chunk <= 1024
    chunks = -(-n // chunk)
    assert chunk % 8 == 0 and chunks * chunk - n < 8 * chunks  # balanced: no small ragged last chunk
