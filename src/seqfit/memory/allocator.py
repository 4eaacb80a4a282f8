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
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

__all__ = ["MMAP_THRESHOLD", "configure_allocator", "allocator_pinned"]

MMAP_THRESHOLD = 64 * 1024  # bytes; tensors at least this large are mmapped and unmapped on free
_M_MMAP_THRESHOLD = -3  # from glibc's <malloc.h>
_THP_ENV = "THP_MEM_ALLOC_ENABLE"  # PyTorch's switch for huge pages under CPU tensors >= 2 MiB
_pinned = False


def configure_allocator(threshold: int = MMAP_THRESHOLD) -> bool:
    """Pin glibc's mmap threshold and ask for huge pages (see the module docstring); False where this is not glibc."""
    global _pinned
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    os.environ.setdefault(_THP_ENV, "1")  # a user's explicit 0 wins
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold)))
    except (OSError, AttributeError):
        return False
    _pinned = _pinned or ok
    return ok


def allocator_pinned() -> bool:
    """Whether configure_allocator succeeded in this process."""
    return _pinned
