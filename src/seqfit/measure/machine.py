"""What machine a measurement ran on: CPU model and the flags that decide bf16 speed, torch's version and
threads, and the measured matrix-product ceilings in fp32 and bf16.

Benchmarks differ by machine more than by code: a bf16 matrix product runs ~2x fp32 with AVX512-BF16
and ~6x with AMX, and is emulated (often slower than fp32) on an AVX2-only CPU. So every benchmark
result carries this block, and a number is read next to the ceiling it could reach.
"""

from __future__ import annotations

import functools
import os
import platform
import time

from seqfit.cpu import FLAGS, cpu_flags, cpu_model

__all__ = ["machine_info", "describe_machine", "cpu_model", "cpu_flags", "cpu_jiffies", "jiffies_since", "steal_share",
           "gemm_gflops", "FLAGS", "NOISY_STEAL"]

NOISY_STEAL = 0.01  # a host steal share from which reports say the timings were taken with neighbours busy


def cpu_jiffies() -> tuple[int, int] | None:
    """The machine's (steal, total) CPU time in clock ticks since boot, all CPUs (/proc/stat); None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice: already counted in user and nice]
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def jiffies_since(start: tuple[int, int] | None) -> tuple[int, int] | None:
    """(steal, total) ticks from ``start`` (a cpu_jiffies() reading) to now; None where either reading is missing."""
    end = cpu_jiffies()
    return (end[0] - start[0], end[1] - start[1]) if start and end else None


def steal_share(spans: list[tuple[int, int] | None]) -> float | None:
    """The share of the machine's CPU time the hypervisor took over ``spans`` (jiffies_since results); None
    when none was read or no tick passed (ticks are 10 ms)."""
    read = [s for s in spans if s]
    total = sum(t for _, t in read)
    return sum(s for s, _ in read) / total if total else None


def gemm_gflops(dtype, size: int = 1024, seconds: float = 0.5) -> float:
    """Sustained GFLOP/s of torch.mm on (size, size) matrices, repeated for about ``seconds`` after one warm-up."""
    import torch

    a = torch.randn(size, size).to(dtype)  # (size, size)
    b = torch.randn(size, size).to(dtype)
    started = time.perf_counter()
    torch.mm(a, b)  # warm-up: oneDNN picks and caches its kernel on the first call
    elapsed = time.perf_counter() - started
    if elapsed >= seconds:  # emulated bf16 can take seconds per product: the warm-up is the measurement
        return 2 * size**3 / elapsed / 1e9
    runs, started = 0, time.perf_counter()
    while True:
        torch.mm(a, b)
        runs += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return 2 * size**3 * runs / elapsed / 1e9


@functools.cache
def _static() -> dict:
    import torch

    from seqfit.nn.precision import cpu_bf16_rnn_supported

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "flags": cpu_flags(),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "bf16_rnn_kernels": cpu_bf16_rnn_supported(),
            "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform()}


@functools.cache
def _ceilings(size: int, seconds: float, threads: int) -> dict:
    import torch

    fp32 = gemm_gflops(torch.float32, size, seconds)
    bf16 = gemm_gflops(torch.bfloat16, size, seconds)  # emulated (slow) without avx512_bf16/amx: still worth knowing
    return {"size": size, "fp32_gflops": round(fp32, 2), "bf16_gflops": round(bf16, 2),
            "bf16_over_fp32": round(bf16 / fp32, 3)}


def machine_info(measure_ceilings: bool = True, *, size: int = 1024, seconds: float = 0.5) -> dict:
    """The machine this process runs on; the ceilings are measured once per process (per size and thread count)."""
    import torch

    threads = torch.get_num_threads()
    info = {**_static(), "threads": threads}
    if measure_ceilings:
        info["gemm"] = dict(_ceilings(size, seconds, threads))
    return info


def describe_machine(info: dict) -> str:
    """One line: 'AMD EPYC, 2 cores; avx2 (no avx512f, ...); torch 2.13.0, 1 thread; GEMM fp32 95 GFLOP/s, bf16 12 (0.13x)'."""
    have = [k for k, v in info["flags"].items() if v]
    lack = [k for k, v in info["flags"].items() if v is False]
    flags = " ".join(have) or "none of " + ", ".join(FLAGS)
    if have and lack:
        flags += f" (no {', '.join(lack)})"
    line = (f"{info['cpu']}, {info['cores']} cores; {flags}; torch {info['torch']}, "
            f"{info['threads']} thread{'s' if info['threads'] != 1 else ''}")
    if "gemm" in info:
        g = info["gemm"]
        line += (f"; GEMM {g['size']}^3 fp32 {_num(g['fp32_gflops'])} GFLOP/s, bf16 {_num(g['bf16_gflops'])} "
                 f"({g['bf16_over_fp32']:.2f}x)")
    return line


def _num(x: float) -> str:
    return f"{x:,.0f}" if x >= 10 else f"{x:.2g}"
