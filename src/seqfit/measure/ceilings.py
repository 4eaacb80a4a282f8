"""The matrix-product ceilings of this machine, measured once and cached: what a step's FLOP/s is read against.

What a CPU's arithmetic units can give depends on the library as much as on the chip: on an AMD EPYC
(Zen 5) MKL's fp32 GEMM runs its AVX2 path (~200 GFLOP/s on 2 cores) where oneDNN uses AVX-512 (~435),
and bf16 runs ~2x fp32 with AVX512-BF16 (~6x with AMX) but is emulated, ~100x slower, without them
(issue 18). So each path is timed here rather than guessed from the vendor:

    cpu   fp32_mkl     torch.mm on fp32 tensors
          fp32_onednn  torch._C._nn.mkldnn_linear on .to_mkldnn() tensors (where this build has oneDNN)
          bf16         torch.mm on bf16 tensors -- only where a short check finds bf16 no slower than fp32;
                       otherwise left out, and ``skipped`` says why
    cuda  fp32, bf16, fp16   torch.mm

Each is the best of up to eight products of SIZE^3 after a warm-up (a few seconds in all): on a shared
virtual machine a second of another guest's work must not become the ceiling every later run is read
against; the host's steal time over the measurement is recorded too ("host_steal", /proc/stat). The result
is cached in $SEQFIT_CACHE_DIR (default ~/.cache/seqfit, beside the memory calibration) as
ceilings-<torch>-<device>-<hash>.json, the hash over what decides the numbers: CPU (or GPU) model, the
CPU flags for AVX-512/bf16/AMX, torch's version and the thread count. ``refresh=True`` measures again.
A path measured faster later (a benchmark times it beside its rows) raises its cached ceiling
(``raise_ceiling``; `seqfit profile --time` measures its path again after its steps, ``ceilings_now``): a
first measurement in another guest's busy minute read 98 GFLOP/s on an AVX2-only
EPYC where the same product ran at 123-150 beside the rows an hour later, and flattered every row read
against it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from pathlib import Path
from typing import Callable

from seqfit.atomic import write_text_atomic
from seqfit.cache import cache_dir
from seqfit.cpu import cpu_key
from seqfit.measure.machine import cpu_jiffies, jiffies_since, steal_share

__all__ = ["cache_dir", "ceilings_key", "ceilings_path", "load_ceilings", "measure_ceilings", "measure_cpu_path",
           "best_ceiling", "raise_ceiling", "ceilings_now"]

CPU_SIZE, CUDA_SIZE = 2048, 8192
BF16_CHECK_SIZE = 512  # the emulation check: bf16 vs fp32 at this size
BF16_MIN_RATIO = 0.9  # bf16 slower than this times fp32 is emulated (native runs it 2-6x faster)


def ceilings_key(device: str = "cpu") -> dict:
    """What the ceilings depend on: a cache written under another key is measured again."""
    import torch

    if device == "cuda":
        return {"device": device, "torch": torch.__version__, "threads": torch.get_num_threads(),
                "gpu": torch.cuda.get_device_name()}
    return {"device": device, **cpu_key()}


def ceilings_path(key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir() / f"ceilings-{key['torch']}-{key['device']}-{digest}.json"


def load_ceilings(device: str = "cpu", *, refresh: bool = False, echo: Callable[[str], None] | None = None) -> dict:
    """{"key", "gflops": {path: GFLOP/s}, "skipped": {path: why}, "size", "seconds"}: cached, or measured now."""
    key = ceilings_key(device)
    path = ceilings_path(key)
    if not refresh:
        try:
            cached = json.loads(path.read_text())
            if cached.get("key") == key:
                return cached
        except (OSError, ValueError):
            pass
    if echo:
        echo(f"measuring matrix-product ceilings ({device}, {key['threads']} threads; cached in {path})")
    result = {"key": key, **measure_ceilings(device)}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(result, indent=1))
    return result


def raise_ceiling(ceilings: dict, path: str, gflops: float) -> dict:
    """``ceilings`` (as load_ceilings returns them) with ``path`` raised to ``gflops`` where that beats its figure,
    written back to their cache; a path they skipped or lack stays as it is. Returns the ceilings now in force."""
    known = ceilings.get("gflops", {})
    if path in known and gflops > known[path]:
        ceilings = {**ceilings, "gflops": {**known, path: round(float(gflops), 1)}}
        write_text_atomic(ceilings_path(ceilings["key"]), json.dumps(ceilings, indent=1))
    return ceilings


def ceilings_now(device: str, precision: str, ceilings: dict) -> dict:
    """``ceilings`` with the CPU path a run of ``precision`` is read against measured once more now (about a
    second) and raised where that beats the cache, as a benchmark does beside its rows; unchanged on CUDA or
    where the precision has no measured path."""
    best = best_ceiling(ceilings, precision) if device == "cpu" else None
    now = measure_cpu_path(best[0], budget_s=1.0) if best else None
    return raise_ceiling(ceilings, best[0], now) if now else ceilings


def best_ceiling(ceilings: dict, precision: str) -> tuple[str, float] | None:
    """(path, GFLOP/s) of the fastest measured path for ``precision`` (fp32, bf16, fp16); None if none was."""
    gflops = ceilings.get("gflops", {})
    found = [(name, v) for name, v in gflops.items() if name == precision or name.startswith(precision + "_")]
    return max(found, key=lambda item: item[1]) if found else None


def measure_ceilings(device: str = "cpu") -> dict:
    """Time each path of ``device`` now (seconds; see the module docstring)."""
    import torch

    started, jiffies = time.perf_counter(), cpu_jiffies()
    gflops, skipped = {}, {}
    if device == "cuda":
        size = CUDA_SIZE
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
            a, b = (torch.randn(size, size, device="cuda", dtype=dtype) for _ in range(2))  # (n, n) each
            gflops[name] = _best_gflops(lambda: torch.mm(a, b), size, repeats=10, sync=torch.cuda.synchronize)
            del a, b
    else:
        size = CPU_SIZE
        why = _bf16_emulated()
        for path in ("fp32_mkl", "fp32_onednn", "bf16"):
            if path == "bf16" and why:
                skipped["bf16"] = why
                continue
            got = measure_cpu_path(path)
            if got is None:
                skipped[path] = "this torch build has no oneDNN linear (torch._C._nn.mkldnn_linear)"
            else:
                gflops[path] = got
    steal = steal_share([jiffies_since(jiffies)])
    return {"gflops": {k: round(v, 1) for k, v in gflops.items()}, "skipped": skipped, "size": size,
            "seconds": round(time.perf_counter() - started, 2),
            "host_steal": None if steal is None else round(steal, 3)}


def measure_cpu_path(path: str, *, repeats: int = 8, budget_s: float = 2.0) -> float | None:
    """GFLOP/s of one CPU path ("fp32_mkl", "fp32_onednn", "bf16") now, as measure_ceilings times it; None where
    this build lacks it. A benchmark reads a row against this measured beside it, when other guests' work
    moves the machine's speed from minute to minute."""
    import torch

    size = CPU_SIZE
    a, b = torch.randn(size, size), torch.randn(size, size)  # (n, n) fp32
    if path == "fp32_mkl":
        run = functools.partial(torch.mm, a, b)
    elif path == "fp32_onednn":
        run = _onednn_linear(a, b)
        if run is None:
            return None
    elif path == "bf16":
        run = functools.partial(torch.mm, a.bfloat16(), b.bfloat16())
    else:
        raise ValueError(f"unknown CPU path {path!r}")
    return _best_gflops(run, size, repeats=repeats, budget_s=budget_s)


def _best_gflops(run: Callable[[], object], size: int, *, repeats: int = 8, budget_s: float = 2.0,
                 sync: Callable[[], None] | None = None) -> float:
    """Best GFLOP/s of ``run`` (one size^3 product) over up to ``repeats`` timed calls after a warm-up (the
    first call picks and caches a kernel); fewer calls once ``budget_s`` is spent."""
    run()
    if sync:
        sync()
    best, spent = float("inf"), 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        if sync:
            sync()
        took = time.perf_counter() - t0
        best, spent = min(best, took), spent + took
        if spent > budget_s:
            break
    return 2 * size**3 / best / 1e9


def _onednn_linear(a, b) -> Callable[[], object] | None:
    """a @ b through oneDNN's inner product (weight given as (out, in), so b transposed), or None."""
    import torch

    linear = getattr(torch._C._nn, "mkldnn_linear", None)
    if linear is None or not torch.backends.mkldnn.is_available():
        return None
    try:
        x, w = a.to_mkldnn(), b.t().contiguous().to_mkldnn()  # (n, n) each, oneDNN layout
        linear(x, w, None)  # builds once: a build without the primitive raises here
    except (RuntimeError, AttributeError):
        return None
    return lambda: linear(x, w, None)


def _bf16_emulated() -> str:
    """Why bf16 products are not timed here ("" when the CPU runs them natively).

    PyTorch's fused bf16 recurrent kernels need AVX-512 (seqfit.nn.precision.cpu_bf16_rnn_supported), and
    a bf16 product slower than fp32 is emulated; either rules bf16 out. Without avx512_bf16 or AMX but
    with AVX-512, oneDNN converts on the fly: timed, and kept when no slower than fp32.
    """
    import torch

    from seqfit.nn.precision import cpu_bf16_rnn_supported

    if not cpu_bf16_rnn_supported():
        return "no bf16 recurrent kernels on this CPU (oneDNN needs AVX-512): bf16 would be emulated"
    n = BF16_CHECK_SIZE
    a = torch.randn(n, n)
    fp32 = _best_gflops(lambda: torch.mm(a, a), n, repeats=2)
    a16 = a.bfloat16()
    bf16 = _best_gflops(lambda: torch.mm(a16, a16), n, repeats=2)
    if bf16 < BF16_MIN_RATIO * fp32:
        return f"bf16 products emulated: {bf16:.0f} GFLOP/s vs fp32 {fp32:.0f} at {n}^3"
    return ""
