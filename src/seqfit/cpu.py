"""Which CPU this is: its model name and the flags that decide how fast fp32 and bf16 matrix products run.

The keys of everything seqfit measures once per machine and caches (memory calibration, product ceilings, the
fp32 product library) are made of these.
"""

from __future__ import annotations

import platform

__all__ = ["FLAGS", "cpu_model", "cpu_flags", "cpu_key"]

FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")  # the ones that decide fp32/bf16 matmul speed


def _cpuinfo_field(name: str) -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(name):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_model() -> str:
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_flags() -> dict[str, bool | None]:
    """Each of FLAGS: present or not (None where /proc/cpuinfo is unreadable, e.g. macOS)."""
    flags = set(_cpuinfo_field("flags").split())
    return {name: (name in flags) if flags else None for name in FLAGS}


def cpu_key() -> dict:
    """What a CPU timing depends on: the CPU and its flags, torch's version, the kernels it picked for this CPU
    and its thread count. A cache of timings written under another key is measured again."""
    import torch

    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": cpu_model(), "flags": cpu_flags(),
            "capability": torch.backends.cpu.get_cpu_capability()}
