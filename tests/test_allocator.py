"""The allocator settings (memory/allocator.py), each in a fresh process: glibc's options are per process and
must be set before the tensors they govern."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="glibc's malloc options")

_FAULTS = """
import resource, sys
from seqfit.memory import allocator
assert allocator.use_buffer_pool() is False  # never before the allocator is pinned
assert allocator.configure_allocator()
import torch

def faults_per_buffer(n=20, nbytes=8 << 20):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):  # a chunk's workspace, made and freed once per chunk
        torch.empty(nbytes // 4).fill_(1.0)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / n

faults_per_buffer(2)
mapped = faults_per_buffer()
assert allocator.use_buffer_pool() and allocator.buffer_pool_active()
faults_per_buffer(2)
pooled = faults_per_buffer()
print(mapped, pooled)
"""


def test_the_buffer_pool_reuses_a_chunk_sized_buffer_instead_of_mapping_it_afresh():
    out = subprocess.run([sys.executable, "-c", _FAULTS], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    mapped, pooled = map(float, out.stdout.split())
    # pinned: each 8 MiB buffer is a fresh mapping, faulted in page by page (or huge page by huge page)
    assert mapped >= 4
    assert pooled <= mapped / 10


_OFF_AGAIN = """
import resource
from seqfit.memory import allocator
assert allocator.configure_allocator()
import torch

def faults_per_buffer(n=10, nbytes=8 << 20):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        torch.empty(nbytes // 4).fill_(1.0)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / n

assert allocator.use_buffer_pool(True)
faults_per_buffer(2)
assert faults_per_buffer() < 4
assert allocator.use_buffer_pool(False) is False and not allocator.buffer_pool_active()
assert faults_per_buffer() >= 4  # mapped afresh again, as a run without the pool expects
print("ok")
"""


def test_a_run_without_the_pool_turns_it_off_again():
    out = subprocess.run([sys.executable, "-c", _OFF_AGAIN], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
