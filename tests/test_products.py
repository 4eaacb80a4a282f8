"""fp32 products through oneDNN or MKL (nn/products.py): the same numbers either way, and the choice."""

import time

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
    monkeypatch.setattr(products, "_best_seconds", lambda runs: {"onednn": onednn_s, "blas": blas_s})
    assert products._measure() == want


def test_each_library_is_read_at_its_best_round_so_a_burst_does_not_decide():
    calls = []
    slow = iter([0.0, 0.0, 0.05, 0.0, 0.0, 0.0, 0.0])  # one round of oneDNN hit by a burst

    def onednn():
        calls.append("onednn")
        time.sleep(next(slow, 0.0))

    best = products._best_seconds({"onednn": onednn, "blas": lambda: calls.append("blas")}, rounds=3)
    assert calls == ["onednn", "blas"] * 4  # a warm-up call each, then the rounds in turn
    assert best["onednn"] < 0.05


def test_a_machine_measures_once_and_later_processes_read_the_choice(monkeypatch, tmp_path):
    monkeypatch.delenv("SEQFIT_FP32_PRODUCTS", raising=False)
    monkeypatch.setenv("SEQFIT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(products, "_chosen", {})
    calls = []
    monkeypatch.setattr(products, "_measure", lambda: calls.append(1) or "blas")
    assert products.fp32_library() == "blas" and products.fp32_library() == "blas"
    assert len(calls) == 1
    assert [p.name.startswith("products-") for p in tmp_path.iterdir()] == [True]
    monkeypatch.setattr(products, "_chosen", {})  # a new process on the same machine: the cache answers
    assert products.fp32_library() == "blas" and len(calls) == 1
    next(tmp_path.iterdir()).write_text("not json")  # a damaged cache is measured again, not trusted
    monkeypatch.setattr(products, "_chosen", {})
    assert products.fp32_library() == "blas" and len(calls) == 2


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
