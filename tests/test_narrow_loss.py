"""narrow_logits_cross_entropy against F.cross_entropy on full fp32 logits."""

import pytest
import torch
import torch.nn.functional as F

import seqfit.nn.narrow_loss as narrow_loss
from seqfit.models.heads import make_output_head
from seqfit.nn.narrow_loss import narrow_autocast, narrow_logits_cross_entropy


def _inputs(n=30, hidden=6, vocab=37, bias=True, scale=1.0):
    torch.manual_seed(0)
    h = torch.randn(n, hidden, requires_grad=True)  # (N, H)
    w = (scale * torch.randn(vocab, hidden)).requires_grad_()  # (V, H)
    b = torch.randn(vocab, requires_grad=True) if bias else None  # (V,)
    t = torch.randint(0, vocab, (n,))  # (N,)
    return h, w, b, t


def _reference(h, w, b, t, smoothing=0.0):
    return F.cross_entropy(F.linear(h, w, b), t, reduction="sum", label_smoothing=smoothing)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("bias", [True, False])
def test_fp32_matmuls_equal_cross_entropy_with_padding(smoothing, bias, monkeypatch):
    monkeypatch.setitem(narrow_loss._PASS_BYTES, "cpu", 4 * 37 * 8)  # 8-row passes: several blocks, a short last one
    h, w, b, t = _inputs(bias=bias)
    t[3] = t[17] = -100  # padding: no loss, no gradient
    params = [h, w] + ([b] if bias else [])
    ref = _reference(h, w, b, t, smoothing)
    want = torch.autograd.grad(1.7 * ref, params)
    got = narrow_logits_cross_entropy(h, w, b, t, label_smoothing=smoothing)
    grads = torch.autograd.grad(1.7 * got, params)  # a non-unit incoming gradient scales every result
    assert got.dtype == torch.float32 and torch.allclose(got, ref, rtol=1e-5)
    for a, g in zip(want, grads):
        assert torch.allclose(a, g, rtol=1e-5, atol=1e-6)
    assert torch.equal(grads[0][3], torch.zeros(6))


def test_bf16_autocast_is_close_and_returns_fp32():
    h, w, b, t = _inputs(n=64, hidden=32, vocab=500, scale=0.3)
    ref = _reference(h, w, b, t)
    want = torch.autograd.grad(ref, [h, w, b])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert narrow_autocast(h) == torch.bfloat16
        got = narrow_logits_cross_entropy(h, w, b, t)
    grads = torch.autograd.grad(got, [h, w, b])
    assert got.dtype == torch.float32 and got.item() == pytest.approx(ref.item(), rel=5e-3)
    for a, g in zip(want, grads):
        assert g.dtype == torch.float32 and ((a - g).norm() / a.norm()).item() < 2e-2
    assert narrow_autocast(h) is None


def test_a_second_backward_is_refused():
    h, w, b, t = _inputs()
    loss = narrow_logits_cross_entropy(h, w, b, t)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="one backward pass"):
        loss.backward()


def test_all_padding_gives_zero_and_backward_runs():
    h, w, b, t = _inputs()
    loss = narrow_logits_cross_entropy(h, w, b, torch.full_like(t, -100))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(h.grad, torch.zeros_like(h))


@pytest.mark.parametrize("tied", [False, True])
def test_full_head_under_bf16_uses_it_and_stays_close_to_fp32(tied, monkeypatch):
    torch.manual_seed(0)
    emb = torch.nn.Embedding(200, 16) if tied else None
    head = make_output_head("full", 16, 200, tied_embedding=emb, label_smoothing=0.1)
    h = torch.randn(40, 16, requires_grad=True)  # (N, H)
    t = torch.randint(0, 200, (40,))  # (N,)
    ref = head.loss(h, t)
    want = torch.autograd.grad(ref, [h, head.output_weight()])
    calls = []
    original = narrow_loss._NarrowLogitsCrossEntropy.apply
    monkeypatch.setattr(narrow_loss._NarrowLogitsCrossEntropy, "apply",
                        lambda *a: calls.append(a[4]) or original(*a))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = head.loss(h, t)
    grads = torch.autograd.grad(got, [h, head.output_weight()])
    assert calls == [torch.bfloat16]
    assert got.item() == pytest.approx(ref.item(), rel=5e-3)
    for a, g in zip(want, grads):
        assert ((a - g).norm() / a.norm()).item() < 2e-2
