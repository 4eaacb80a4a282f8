"""fp32 matrix products on CPU through the faster of the two libraries PyTorch carries (issue 18).

``torch.mm`` runs fp32 products through MKL, and MKL takes its AVX2 path on AMD CPUs even where they
have AVX-512; oneDNN (``torch.ops.mkldnn._linear_pointwise``, dense tensors in and out) uses AVX-512
there. Measured on a 2-core AMD EPYC (Zen 5, AVX-512), the chunked loss's three products at
700 x 200 x 18,000: MKL 158-190 GFLOP/s, oneDNN 336-445. On an AVX2-only EPYC (Zen 3) it was the
other way round: oneDNN 51-58 ms where MKL took 32 at the same shape. So the library is chosen by
timing one product of each, not by vendor name: ROUNDS rounds that time both in turn, each library read at
its best (about 50 ms in all), and only a clear win (PREFER_RATIO) moves fp32 products away from MKL. The
choice is cached per machine, torch and thread count in $SEQFIT_CACHE_DIR (products-<torch>-<hash>.json,
beside the memory calibration), so every later process on the machine makes the same one: timed afresh
in each process, a burst of another guest's work during the 20 ms probe sent one of four identical runs to
MKL (94 vs 142 ms a step). ``SEQFIT_FP32_PRODUCTS=onednn|blas`` fixes it (reproducing a run exactly on a
machine where the two are close); ``use_library`` does the same in a test.

The three products of a linear layer's forward and backward, x @ w^T, g @ w and g^T @ x, take every
operand as it lies (transposes are strided views, never copies of a chunk); oneDNN's outputs are
fresh tensors (it has no out=), the callers add them where they accumulate.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time

import torch

from seqfit.atomic import write_text_atomic
from seqfit.cache import cache_dir
from seqfit.cpu import cpu_key

__all__ = ["LIBRARIES", "fp32_library", "use_library", "mm_nt", "mm_nn", "mm_tn_into", "PREFER_RATIO"]

LIBRARIES = ("onednn", "blas")
PREFER_RATIO = 1.25  # oneDNN must be this much faster than MKL on the probe to take the fp32 products
ROUNDS = 5  # probe rounds, each timing both libraries once
_PROBE = (256, 256, 4096)  # rows, width, outputs: a chunk of the loss, small enough to time in ~20 ms
_ENV = "SEQFIT_FP32_PRODUCTS"
_chosen: dict[int, str] = {}  # thread count -> library
_forced: list[str] = []


def _linear():
    op = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None
    return op


def fp32_library() -> str:
    """"onednn" or "blas": where this process runs fp32 products on CPU (module docstring)."""
    if _forced:
        return _forced[-1]
    wanted = os.environ.get(_ENV, "auto").strip().lower()
    if wanted in LIBRARIES:
        return wanted if wanted == "blas" or _linear() is not None else "blas"
    threads = torch.get_num_threads()
    if threads not in _chosen:
        _chosen[threads] = _cached_choice()
    return _chosen[threads]


def _cache_path():
    digest = hashlib.sha256(json.dumps(cpu_key(), sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir() / f"products-{torch.__version__}-{digest}.json"


def _cached_choice() -> str:
    """The library this machine chose before, or a fresh measurement, kept for the next process."""
    path = _cache_path()
    try:
        cached = json.loads(path.read_text()).get("fp32")
        if cached in LIBRARIES:
            return cached
    except (OSError, ValueError, AttributeError):
        pass
    chosen = _measure()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps({"fp32": chosen}))
    except OSError:  # a read-only home: measure again next time
        pass
    return chosen


@contextlib.contextmanager
def use_library(name: str):
    """Run fp32 products through ``name`` ("onednn" or "blas") inside the block."""
    if name not in LIBRARIES:
        raise ValueError(f"library must be one of {LIBRARIES}, got {name!r}")
    if name == "onednn" and _linear() is None:
        raise RuntimeError("this torch build has no oneDNN linear (torch.ops.mkldnn._linear_pointwise)")
    _forced.append(name)
    try:
        yield
    finally:
        _forced.pop()


def _seconds(run) -> float:
    t0 = time.perf_counter()
    run()
    return time.perf_counter() - t0


def _best_seconds(runs: dict, rounds: int = ROUNDS) -> dict:
    """Each run's best time over ``rounds`` rounds that call every run once, in turn (after one call each, which
    builds and caches the kernels): a burst of other work slows one call of each, not all of one."""
    for run in runs.values():
        run()
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(rounds):
        for name, run in runs.items():
            best[name] = min(best[name], _seconds(run))
    return best


def _measure() -> str:
    linear = _linear()
    if linear is None:
        return "blas"
    rows, width, outputs = _PROBE
    x, w = torch.randn(rows, width), torch.randn(outputs, width)  # (C, H), (V, H)
    out = torch.empty(rows, outputs)  # (C, V)
    try:
        best = _best_seconds({"onednn": lambda: linear(x, w, None, "none", [], ""),
                              "blas": lambda: torch.mm(x, w.t(), out=out)})
    except RuntimeError:  # a build whose oneDNN cannot make the primitive
        return "blas"
    return "onednn" if best["onednn"] * PREFER_RATIO <= best["blas"] else "blas"


def _onednn(*tensors: torch.Tensor) -> bool:
    return all(t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors) and fp32_library() == "onednn"


def mm_nt(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None,
          out: torch.Tensor | None = None) -> torch.Tensor:
    """x (M, K) @ w (N, K)^T (+ bias (N,)): a linear layer's forward. ``out`` is used on the MKL path only
    (oneDNN returns a fresh tensor), so take the result from the return value."""
    if _onednn(x, w) and (bias is None or bias.dtype == torch.float32):
        return _linear()(x, w, bias, "none", [], "")
    if bias is None:
        return torch.mm(x, w.t(), out=out) if out is not None else torch.mm(x, w.t())
    return torch.addmm(bias, x, w.t(), out=out) if out is not None else torch.addmm(bias, x, w.t())


def mm_nn(g: torch.Tensor, w: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """g (M, N) @ w (N, K): the input gradient of a linear layer, written into ``out`` when given (an (M, K)
    copy on the oneDNN path, small beside the product); w is read transposed, not copied."""
    if _onednn(g, w):
        product = _linear()(g, w.t(), None, "none", [], "")
        return product if out is None else out.copy_(product)
    return torch.mm(g, w, out=out) if out is not None else torch.mm(g, w)


def mm_tn_into(acc: torch.Tensor, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """acc (N, K) += g (M, N)^T @ x (M, K): a linear layer's weight gradient, accumulated in place.

    oneDNN's product is taken as x^T @ g, (K, N), read transposed: its output is a fresh contiguous tensor
    that is added into ``acc``; the (M, N) operand is never copied."""
    if _onednn(g, x, acc):
        return acc.add_(_linear()(x.t(), g.t(), None, "none", [], "").t())
    return acc.addmm_(g.t(), x)
