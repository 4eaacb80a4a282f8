"""fp32 products through oneDNN or MKL (nn/products.py): the same numbers either way, and the choice."""

import pytest
import torch

from seqfit.memory.estimate import head_bytes
from seqfit.nn import products
from seqfit.nn.chunked_loss import block_rows

HAS_ONEDNN = products._linear() is not None
LIBRARIES = [pytest.param(lib, marks=pytest.mark.skipif(lib == "onednn" and not HAS_ONEDNN,
                                                       reason="no oneDNN linear in this torch"))
             for lib in products.LIBRARIES]


def close(got: torch.Tensor, want: torch.Tensor) -> bool:
    return float((got.double() - want).norm() / want.norm()) < 1e-6


@pytest.mark.parametrize("library", LIBRARIES)
def test_the_three_products_of_a_linear_layer_match_float64(library):
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(37, 24, generator=g), torch.randn(53, 24, generator=g)  # (M, K), (N, K)
    grad = torch.randn(37, 53, generator=g)  # (M, N)
    bias = torch.randn(53, generator=g)
    acc = torch.randn(53, 24, generator=g)  # (N, K), accumulated into
    want_acc = acc.double() + grad.double().t() @ x.double()
    with products.use_library(library):
        assert products.fp32_library() == library
        assert close(products.mm_nt(x, w), x.double() @ w.double().t())
        assert close(products.mm_nt(x, w, bias), x.double() @ w.double().t() + bias.double())
        out = torch.full((37, 53), float("nan"))
        assert close(products.mm_nt(x, w, out=out), x.double() @ w.double().t())  # take the return value
        assert close(products.mm_nn(grad, w), grad.double() @ w.double())
        into = torch.full((37, 24), float("nan"))
        assert products.mm_nn(grad, w, out=into) is into and close(into, grad.double() @ w.double())
        assert products.mm_tn_into(acc, grad, x) is acc and close(acc, want_acc)
        # strided operands (a slice of rows, a transposed view) are read as they lie
        wide = torch.randn(80, 53, generator=g)[10:47]  # (37, 53) rows of a larger buffer
        assert close(products.mm_nn(wide, w), wide.double() @ w.double())


def test_narrow_dtypes_stay_on_torch_mm():
    x, w = torch.randn(8, 16).bfloat16(), torch.randn(12, 16).bfloat16()
    with products.use_library("onednn" if HAS_ONEDNN else "blas"):
        got = products.mm_nt(x, w)
    assert got.dtype == torch.bfloat16 and torch.equal(got, torch.mm(x, w.t()))


def test_the_environment_fixes_the_library_and_use_library_overrides_it(monkeypatch):
    monkeypatch.setenv("SEQFIT_FP32_PRODUCTS", "blas")
    assert products.fp32_library() == "blas"
    if HAS_ONEDNN:
        monkeypatch.setenv("SEQFIT_FP32_PRODUCTS", "onednn")
        assert products.fp32_library() == "onednn"
        with products.use_library("blas"):
            assert products.fp32_library() == "blas"
        assert products.fp32_library() == "onednn"
    with pytest.raises(ValueError):
        with products.use_library("openblas"):
            pass


@pytest.mark.skipif(not HAS_ONEDNN, reason="no oneDNN linear in this torch")
@pytest.mark.parametrize("onednn_s,blas_s,want", [(0.010, 0.020, "onednn"), (0.010, 0.0125, "onednn"),
                                                  (0.010, 0.012, "blas"), (0.020, 0.010, "blas")])
def test_onednn_takes_the_products_only_on_a_clear_win(monkeypatch, onednn_s, blas_s, want):
    timings = iter([onednn_s, blas_s])  # _measure times oneDNN first, then MKL
    monkeypatch.setattr(products, "_best_seconds", lambda run, repeats=3: next(timings))
    assert products._measure() == want


def test_a_machine_measures_once_per_thread_count(monkeypatch):
    monkeypatch.delenv("SEQFIT_FP32_PRODUCTS", raising=False)
    monkeypatch.setattr(products, "_chosen", {})
    calls = []
    monkeypatch.setattr(products, "_measure", lambda: calls.append(1) or "blas")
    assert products.fp32_library() == "blas" and products.fp32_library() == "blas"
    assert len(calls) == 1


@pytest.mark.skipif(not HAS_ONEDNN, reason="no oneDNN linear in this torch")
def test_the_planner_counts_fresh_logits_and_the_fp32_partial_product():
    n, vocab, hidden, chunk = 700, 1800, 20, 1024  # one chunk: MKL's call keeps its buffer between steps
    with products.use_library("blas"):
        blas = head_bytes("chunked", n, vocab, hidden, "fp32", chunk, None, "cpu")
    with products.use_library("onednn"):
        onednn = head_bytes("chunked", n, vocab, hidden, "fp32", chunk, None, "cpu")
        bf16 = head_bytes("chunked", n, vocab, hidden, "bf16", chunk, None, "cpu")
    assert blas["held"] == n * vocab * 4 and onednn["held"] == 0
    # oneDNN: the (C, V) logits made during the call, not held; plus a (V, H) fp32 partial per chunk
    assert onednn["fwd"] == n * vocab * 4 + vocab * hidden * 4
    assert blas["fwd"] == 0
    # the bf16 path writes into its kept buffers on any library: the bf16 product / gradient cast, and a block of
    # fp32 rows
    assert bf16["held"] == n * vocab * 2 + block_rows(vocab) * vocab * 4 + 2 * vocab * hidden * 2
    assert block_rows(vocab) < n
