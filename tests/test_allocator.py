"""The allocator settings (memory/allocator.py), each in a fresh process: glibc's options are per process and
must be set before the tensors they govern."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="glibc's malloc options")

# Pins the allocator as `seqfit train` does, then times nothing: it counts the page faults of a chunk's workspace
# (8 MiB), made and freed n times, once per chunk.
_PINNED = """
import resource
from seqfit.memory import allocator
assert allocator.configure_allocator()
import torch

def faults_per_buffer(n=20, nbytes=8 << 20):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        torch.empty(nbytes // 4).fill_(1.0)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / n
"""


def _run(body: str, before: str = "") -> str:
    out = subprocess.run([sys.executable, "-c", before + _PINNED + body], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_the_buffer_pool_reuses_a_chunk_sized_buffer_instead_of_mapping_it_afresh():
    out = _run("""
faults_per_buffer(2)
mapped = faults_per_buffer()
assert allocator.use_buffer_pool() and allocator.buffer_pool_active()
faults_per_buffer(2)
pooled = faults_per_buffer()
print(mapped, pooled)
""", before="""
from seqfit.memory import allocator
assert allocator.use_buffer_pool() is False  # never before the allocator is pinned
""")
    mapped, pooled = map(float, out.split())
    # pinned: each 8 MiB buffer is a fresh mapping, faulted in page by page (or huge page by huge page)
    assert mapped >= 4
    assert pooled <= mapped / 10


def test_a_run_without_the_pool_turns_it_off_again():
    out = _run("""
assert allocator.use_buffer_pool(True)
faults_per_buffer(2)
assert faults_per_buffer(10) < 4
assert allocator.use_buffer_pool(False) is False and not allocator.buffer_pool_active()
assert faults_per_buffer(10) >= 4  # mapped afresh again, as a run without the pool expects
print("ok")
""")
    assert out.strip() == "ok"
