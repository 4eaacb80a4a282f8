"""Make the C allocator give freed tensor memory back to the kernel, so resident memory tracks live tensors.

PyTorch's CPU allocator is plain ``posix_memalign``/``free`` (glibc malloc). glibc serves requests
above its mmap threshold (128 KiB at start) with fresh ``mmap``s that ``free`` unmaps, but it *raises*
that threshold to the size of every mmapped block freed, up to 32 MiB (mallopt(3), "M_MMAP_THRESHOLD":
"dynamic mmap threshold"). After the first training step most activation tensors (64 KiB .. 32 MiB)
therefore land in the heap, and the holes they leave stay resident: measured here, a 1-layer LSTM step
peaked 5-25% higher than its live tensors and drifted upwards from step to step by up to 10%.

Fixing the threshold with ``mallopt(M_MMAP_THRESHOLD, 64 KiB)`` turns the dynamic adjustment off:
every tensor of 64 KiB or more gets its own mapping and returns to the kernel when freed. Resident
memory then equals live memory plus the runtime's small-object heap, which makes the planner's peak
predictable and keeps the watchdog's readings honest. The price is a page fault per fresh page of a
large tensor: with 4 KiB pages, a 2x200 LSTM on WikiText-2 (V = 18k, 700 tokens a step) took 68k faults
a step, a quarter of its CPU time, mostly the four logits-sized (N, V) tensors of the loss.

So large tensors are also backed by 2 MiB transparent huge pages: PyTorch (>= 2.2) madvises every CPU
allocation of 2 MiB or more with MADV_HUGEPAGE when ``THP_MEM_ALLOC_ENABLE=1``, which it reads at its
first CPU allocation. Each mapping then faults once per 2 MiB, and is still unmapped on free. On the
LSTM above: 11k faults a step, steps 1.29x faster, resident memory between steps unchanged (386 MiB)
and its peak 1% higher (518 vs 512 MiB); results are bit-identical (alignment stays >= 64 bytes).
Where THP is "never" it changes nothing; ``THP_MEM_ALLOC_ENABLE=0`` in the environment opts out.
Keeping freed memory in the heap instead (a huge threshold and M_TRIM_THRESHOLD) was faster still
(1.5x) but raised the peak by 25-45%, by an amount that varied from run to run.

It must run before the first tensor is made (it changes where later allocations go, not earlier ones);
`seqfit train` calls it at start on CPU, and the planner's probes do the same so that their
measurements describe the run they plan.

A run cut into time chunks (exact checkpointing, truncated chunks) is different: it allocates and frees
the same few chunk-sized buffers (the fused kernel's workspace, gates, outputs) once per chunk, T/k
times a step, forward and again in the recomputation. Fresh mappings for each made a 32 x 16,000
classifier in exact mode take 790k page faults and 3 s of system time a step (4.5 s in all; bare
nn.LSTM forward + backward: 2.8 s). ``use_buffer_pool`` raises the threshold to glibc's maximum
(32 MiB) so those buffers come from the heap and are reused from chunk to chunk, and bounds the free
memory kept at the heap's top (M_TRIM_THRESHOLD). Measured on that classifier: 12k faults and 0.1 s
of system time a step, 2.1 s a step, and a peak 50 MiB higher (a chunk's buffers held free between
uses), which the planner counts (memory/pool_plan.py). Whole-sequence buffers (larger
than 32 MiB) are still mapped and unmapped, so a full-BPTT run is not affected; it keeps the pinned
threshold, as its few large buffers left the heap fragmented (peaks 25-45% higher) for no speed.
A language model's step is the other case. It makes and frees the same medium buffers every step (the fused
recurrent kernels' workspaces and gates, a few MiB each at 20 x 35 tokens), and on a machine where a fresh
mapping is dear they dominate: on a Zen 5 guest (THP on, 2 cores) a 2 x 200 LSTM LM in bf16 spent a third of its
step in the kernel, 7k page faults a step. Its plan asks for the "window" pool: buffers under 2 MiB from the heap,
at most 8 MiB kept free at its top, larger ones still mapped. Measured there: no faults left in the recurrent
layers, the step 1.2-1.4x faster (58-73 ms -> 46-52 ms), and peaks 0-30 MB (0-6%) higher over 22 LM configs,
which the planner counts (memory/pool_plan.py). The chunk pool's 32 MiB threshold gave the same speed but peaks
5-38% higher; 8 MiB / 32 MiB, 15-24% on some.

The pool settles after a warm-up: a small allocation that lands beside a freed buffer makes glibc set that
memory aside, so the heap may first grow by a few buffers (0 to 8 of one 8 MiB buffer across 31 processes,
only in the first iterations; tests/test_allocator.py), varying with the process's layout.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

__all__ = ["MMAP_THRESHOLD", "POOL_THRESHOLD", "POOL_TRIM", "WINDOW_POOL_THRESHOLD", "WINDOW_POOL_TRIM",
           "configure_allocator", "allocator_pinned", "use_buffer_pool", "buffer_pool_active"]

MMAP_THRESHOLD = 64 * 1024  # bytes; tensors at least this large are mmapped and unmapped on free
POOL_THRESHOLD = 32 * 1024 * 1024  # glibc's largest mmap threshold (HEAP_MAX_SIZE / 2 on 64-bit)
POOL_TRIM = 64 * 1024 * 1024  # free memory the heap's top may keep for reuse before it is given back
# The window pool of a language model (module docstring): its step's medium buffers from the heap, the large ones mapped
WINDOW_POOL_THRESHOLD = 2 * 1024 * 1024
WINDOW_POOL_TRIM = 8 * 1024 * 1024
_POOLS = {"chunk": (POOL_THRESHOLD, POOL_TRIM), "window": (WINDOW_POOL_THRESHOLD, WINDOW_POOL_TRIM)}
_DEFAULT_TRIM = 128 * 1024  # glibc's M_TRIM_THRESHOLD at start
_M_TRIM_THRESHOLD = -1  # from glibc's <malloc.h>
_M_MMAP_THRESHOLD = -3
_THP_ENV = "THP_MEM_ALLOC_ENABLE"  # PyTorch's switch for huge pages under CPU tensors >= 2 MiB
_pinned = 0  # the threshold configure_allocator pinned (0: not pinned)
_pooled = False


def _mallopt(option: int, value: int) -> bool:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    return bool(libc.mallopt(option, int(value)))


def configure_allocator(threshold: int = MMAP_THRESHOLD) -> bool:
    """Pin glibc's mmap threshold and ask for huge pages (see the module docstring); False where this is not glibc."""
    global _pinned
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    os.environ.setdefault(_THP_ENV, "1")  # a user's explicit 0 wins
    try:
        ok = _mallopt(_M_MMAP_THRESHOLD, threshold)
    except (OSError, AttributeError):
        return False
    if ok:
        _pinned = int(threshold)
    return ok


def allocator_pinned() -> bool:
    """Whether configure_allocator succeeded in this process."""
    return bool(_pinned)


def use_buffer_pool(on: bool | str = True) -> bool:
    """On (True or "chunk"): serve buffers under POOL_THRESHOLD from glibc's heap, keeping at most POOL_TRIM bytes
    free at its top, for a run that reuses chunk-sized buffers; "window": the same under WINDOW_POOL_THRESHOLD and
    WINDOW_POOL_TRIM, for a language model's step (module docstring). Off (False, None): back to
    configure_allocator's pinned threshold (one process may build runs of several kinds, e.g. tests). Only after
    configure_allocator: a process that never pinned the allocator (a user's own loop) is left alone. Returns
    whether a pool is now on."""
    global _pooled
    if not _pinned:
        return False
    kind = "chunk" if on is True else on or None
    if kind is not None and kind not in _POOLS:
        raise ValueError(f"buffer pool must be one of {sorted(_POOLS)}, got {on!r}")
    threshold, trim = _POOLS[kind] if kind else (_pinned, _DEFAULT_TRIM)
    # the trim threshold first: from then on the heap gives back only what exceeds it
    ok = _mallopt(_M_TRIM_THRESHOLD, trim) and _mallopt(_M_MMAP_THRESHOLD, threshold)
    _pooled = bool(kind) and ok
    return _pooled


def buffer_pool_active() -> bool:
    """Whether use_buffer_pool is in effect in this process."""
    return _pooled
