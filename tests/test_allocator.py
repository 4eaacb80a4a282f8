"""The allocator settings (memory/allocator.py), each in a fresh process: glibc's options are per process and
must be set before the tensors they govern.

The tests read where glibc serves a chunk-sized buffer from (mallinfo2: its heap, or a mapping of its own)
rather than counting page faults; the faults the pool saves are measured in the speed benchmark.

With the pool on, the heap may first grow by a few buffers before it settles on reusing one: glibc leaves
a freed buffer's memory aside when a small allocation lands next to it. Measured here over 31 processes of
the first test: 0 to 8 buffers of growth (0 in a third of them), always in the first iterations, and none
after. A CI machine counted exactly that as page faults (155 a buffer over 20 buffers: 6 of them mapped
afresh), so the tests allow the warm-up and require that it ends."""

from __future__ import annotations

import ctypes
import os
import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc"
    or not hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2"),
    reason="glibc's malloc options and mallinfo2 (glibc >= 2.33)")

# Pins the allocator as `seqfit train` does. `buffer()` makes and frees one chunk's workspace (8 MiB) and
# reports, in MiB, how glibc's heap (its size and the part handed out) and its own mappings changed while the
# buffer lived and after it was freed.
_PINNED = """
import ctypes, json
from seqfit.memory import allocator
assert allocator.configure_allocator()
import torch

class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

_libc = ctypes.CDLL("libc.so.6")
_libc.mallinfo2.restype = _Mallinfo2

def _held():
    info = _libc.mallinfo2()
    return {"heap": info.arena / 2**20, "used": info.uordblks / 2**20, "mapped": info.hblkhd / 2**20}

def buffer(nbytes=8 << 20):
    before = _held()
    t = torch.empty(nbytes // 4)
    t.fill_(1.0)
    alive, address = _held(), t.data_ptr()
    del t
    after = _held()
    return {"address": address,
            **{f"{where}_alive": alive[where] - before[where] for where in ("heap", "used", "mapped")},
            **{f"{where}_after": after[where] - before[where] for where in ("heap", "mapped")}}
"""


def _run(body: str, before: str = "") -> dict:
    out = subprocess.run([sys.executable, "-c", before + _PINNED + body], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _mapped_afresh(b: dict) -> bool:
    """glibc mapped the buffer on its own and unmapped it on free (the pinned threshold)."""
    return b["mapped_alive"] >= 8 and b["mapped_after"] == 0


def test_the_buffer_pool_serves_a_chunk_sized_buffer_from_the_heap_and_keeps_it_for_the_next_chunk():
    out = _run("""
pinned = buffer()
assert allocator.use_buffer_pool() and allocator.buffer_pool_active()
first = buffer()
again = [buffer() for _ in range(40)]
print(json.dumps({"pinned": pinned, "first": first, "again": again}))
""", before="""
from seqfit.memory import allocator
assert allocator.use_buffer_pool() is False  # never before the allocator is pinned
""")
    assert _mapped_afresh(out["pinned"]), out
    first = out["first"]
    # pooled: handed out from the heap, never a mapping, and the heap keeps its memory once freed
    # (M_TRIM_THRESHOLD). The heap grows by the buffer less any free space at its top (a CI run: 7.99 MiB).
    assert first["mapped_alive"] == 0 and first["used_alive"] >= 8, out
    assert first["heap_after"] == first["heap_alive"], out
    assert all(b["mapped_alive"] == 0 and b["mapped_after"] == 0 for b in out["again"]), out
    # ... so after the warm-up each chunk gets the same memory back: no growth, the same address
    settled = out["again"][20:]
    assert all(b["heap_alive"] == 0 and b["heap_after"] == 0 for b in settled), out
    assert len({b["address"] for b in settled}) == 1, out


def test_a_run_without_the_pool_turns_it_off_again():
    out = _run("""
assert allocator.use_buffer_pool(True)
pooled = [buffer() for _ in range(3)]
assert allocator.use_buffer_pool(False) is False and not allocator.buffer_pool_active()
print(json.dumps({"pooled": pooled, "off": [buffer() for _ in range(3)]}))
""")
    assert all(b["mapped_alive"] == 0 for b in out["pooled"]), out
    assert all(_mapped_afresh(b) for b in out["off"]), out  # mapped afresh again, as a run without the pool expects


def test_the_window_pool_keeps_a_step_sized_buffer_in_the_heap_and_maps_a_large_one():
    out = _run("""
assert allocator.use_buffer_pool("window") and allocator.buffer_pool_active()
medium = [buffer(1 << 20) for _ in range(30)]  # 1 MiB: under the window threshold
large = buffer(8 << 20)  # 8 MiB: over it
print(json.dumps({"medium": medium, "large": large}))
""")
    assert all(b["mapped_alive"] == 0 and b["used_alive"] >= 1 for b in out["medium"]), out
    settled = out["medium"][10:]
    assert all(b["heap_alive"] == 0 and b["heap_after"] == 0 for b in settled), out  # reused, not regrown
    assert _mapped_afresh(out["large"]), out


def test_an_unknown_pool_is_refused():
    _run("""
try:
    allocator.use_buffer_pool("everything")
except ValueError:
    print("{}")
""")


def _thp_possible() -> bool:
    try:
        return "[never]" not in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not _thp_possible(), reason="transparent huge pages are off on this kernel")
def test_training_asks_for_huge_pages_before_the_planner_makes_any_tensor(tmp_path):
    """PyTorch reads THP_MEM_ALLOC_ENABLE at its first CPU allocation; under --budget the planner's first use on a
    machine times the fp32 product library (tensors), so training must configure the allocator before it."""
    code = f"""
import json, os
from pathlib import Path
from seqfit.config import RunCfg, merge
from seqfit.engine.loop import train
from seqfit.memory.synthetic import write_synthetic_store
import torch
data = write_synthetic_store(Path({str(tmp_path)!r}) / "data", 500, 20_000)
cfg = merge(RunCfg(), {{"model": {{"cell": "lstm", "layers": 1, "hidden": 16, "embed": 8}},
                        "train": {{"batch_size": 4, "bptt": 10, "max_steps": 1, "epochs": 1}},
                        "memory": {{"device": "cpu", "budget": "2GB"}}}})
train(cfg, data, Path({str(tmp_path)!r}) / "run", echo=lambda *a, **k: None)
x = torch.ones((64 << 20) // 4)  # 64 MiB: backed by huge pages if PyTorch saw the switch
huge = [int(l.split()[1]) for l in open("/proc/self/smaps_rollup") if l.startswith("AnonHugePages")]
print(json.dumps({{"huge_kb": huge[0]}}))
"""
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    env["SEQFIT_CACHE_DIR"] = str(tmp_path / "cache")  # nothing cached: the planner measures here
    env["SEQFIT_NO_CALIBRATE"] = "1"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1])["huge_kb"] >= 32 * 1024
