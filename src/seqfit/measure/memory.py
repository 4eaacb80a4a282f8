"""Process memory readings: resident memory split into anonymous and file-backed, and the CUDA allocator.

File-backed resident pages are mostly memory-mapped data the kernel can drop and re-read at will;
anonymous pages (tensors, Python objects) cannot be dropped without swap, so they are what a budget
governs on CPU.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import psutil

__all__ = [
    "MemoryReading", "read_memory", "read_resident", "read_peak_rss", "reset_peak_rss",
    "reset_cuda_peak", "read_cuda_peak", "MemorySampler", "format_bytes", "parse_bytes",
]


@dataclass(frozen=True)
class MemoryReading:
    rss: int  # resident set size, bytes
    anon: int  # anonymous resident bytes (heap, tensors)
    file: int  # file-backed resident bytes (memory maps, shared libraries)
    cuda_allocated: int = 0  # bytes held by live CUDA tensors
    cuda_reserved: int = 0  # bytes the CUDA caching allocator holds


def _rss_split() -> tuple[int, int, int]:
    """(rss, anon, file) from /proc/self/status on Linux; anon = rss elsewhere."""
    try:
        with open("/proc/self/status") as f:
            fields = dict(line.split(":", 1) for line in f if line.startswith("Rss"))
        kib = {k: int(v.split()[0]) * 1024 for k, v in fields.items()}
        anon = kib["RssAnon"]
        file = kib["RssFile"] + kib.get("RssShmem", 0)
        return anon + file, anon, file
    except (OSError, KeyError, ValueError):
        rss = psutil.Process().memory_info().rss
        return rss, rss, 0


def read_resident() -> tuple[int, int, int]:
    """(rss, anon, file) in bytes, without touching CUDA: cheap enough for a sampler thread."""
    return _rss_split()


def read_peak_rss() -> int:
    """The kernel's resident high-water mark (VmHWM) in bytes; 0 where /proc does not have it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS; False where the kernel does not allow it.

    Writing "5" to /proc/self/clear_refs (Linux >= 4.0, see proc(5)) resets only the high-water
    mark, so per-phase peaks miss no spike, however short, unlike a sampling thread. It resets
    getrusage's ru_maxrss too (the same counter): a whole-run peak must be kept by the caller.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return read_peak_rss() > 0


def reset_cuda_peak(device=None) -> None:
    """Start a new CUDA peak window (allocated and reserved) on ``device``."""
    import torch

    torch.cuda.reset_peak_memory_stats(device)


def read_cuda_peak(device=None) -> tuple[int, int]:
    """(peak allocated, peak reserved) bytes on ``device`` since the last reset_cuda_peak."""
    import torch

    return torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device)


def read_memory() -> MemoryReading:
    rss, anon, file = _rss_split()
    allocated = reserved = 0
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        allocated = torch.cuda.memory_allocated()
        reserved = torch.cuda.memory_reserved()
    return MemoryReading(rss, anon, file, allocated, reserved)


class MemorySampler:
    """Samples memory on a background thread; keeps the peak and (optionally) a timeline.

    Peak RSS from the kernel (ru_maxrss) misses nothing but cannot be reset, so a sampler at a few
    milliseconds gives per-phase peaks; short spikes between samples can be missed.

    The timeline holds at most ``max_points``: when full, neighbouring points are merged pairwise
    (keeping the one with more anonymous memory, so peaks survive) and later points are merged in
    the same strides. Unbounded, an hour at 50 ms grew the training process by ~15 MB (the soak
    benchmark's drift).
    """

    max_points = 20_000

    def __init__(self, interval: float = 0.01, keep_timeline: bool = False):
        self.interval = interval
        self.keep_timeline = keep_timeline
        self.timeline: list[tuple[float, int, int, int]] = []  # (seconds, rss, anon, cuda_allocated)
        self._stride, self._pending, self._pending_count = 1, None, 0
        self.start_time = time.perf_counter()
        self.peak_rss = 0
        self.peak_anon = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last = read_memory()

    def sample(self) -> MemoryReading:
        reading = read_memory()
        self.last = reading
        self.peak_rss = max(self.peak_rss, reading.rss)
        self.peak_anon = max(self.peak_anon, reading.anon)
        if self.keep_timeline:
            self._record((time.perf_counter() - self.start_time, reading.rss, reading.anon, reading.cuda_allocated))
        return reading

    def _record(self, point: tuple[float, int, int, int]) -> None:
        """Append one point of ``_stride`` samples (the one with the most anonymous memory)."""
        if self._pending is None or point[2] > self._pending[2]:
            self._pending = point
        self._pending_count += 1
        if self._pending_count < self._stride:
            return
        self.timeline.append(self._pending)
        self._pending, self._pending_count = None, 0
        if len(self.timeline) >= self.max_points:
            t = self.timeline
            self.timeline = [max(pair, key=lambda p: p[2]) for pair in zip(t[0::2], t[1::2])] + t[len(t) // 2 * 2:]
            self._stride *= 2

    def reset_peak(self) -> None:
        self.peak_rss = self.peak_anon = 0
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> "MemorySampler":
        self.sample()
        self._thread = threading.Thread(target=self._run, daemon=True, name="seqfit-memory")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()


_UNITS = {"": 1, "B": 1, "K": 1024, "KB": 1024, "KIB": 1024, "M": 1024**2, "MB": 1024**2, "MIB": 1024**2,
          "G": 1024**3, "GB": 1024**3, "GIB": 1024**3, "T": 1024**4, "TB": 1024**4, "TIB": 1024**4}


def parse_bytes(text: str) -> int:
    """'4GB' -> 4 * 2**30. Units are binary (GB == GiB), as memory is sold and reported."""
    cleaned = text.strip().upper().replace(" ", "")
    number = cleaned.rstrip("KMGTIB")
    unit = cleaned[len(number):]
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"not a memory size: {text!r} (try 4GB, 512MB)") from None
    if unit not in _UNITS or value <= 0:
        raise ValueError(f"not a memory size: {text!r} (try 4GB, 512MB)")
    return int(value * _UNITS[unit])


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"
