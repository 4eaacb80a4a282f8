"""Per-phase memory profile of training steps: where does the memory go?

Each step is cut into phases (data, forward, loss, backward, optimizer). For every phase we keep
the reading at its start and end and its peak in between:

- CPU: the peak resident size comes from the kernel's high-water mark (VmHWM), reset at each phase
  start through /proc/self/clear_refs, so no spike is missed however short. A sampler thread (every
  ``interval`` seconds) splits the peak into anonymous (tensors, heap) and file-backed (memory maps)
  pages; where clear_refs is not allowed the sampler alone gives the peak and can miss short spikes.
- CUDA: torch.cuda.max_memory_allocated / max_memory_reserved, reset at each phase start.

Resetting VmHWM also resets getrusage's ru_maxrss, and the CUDA peak counters are reset too: do
not read either for a whole-run peak in a process that profiles (take max over the phase peaks).

``rise`` is peak minus the phase's start (what the phase needed on top of what was there),
``delta`` is end minus start (what the phase left behind: forward keeps activations, backward
frees them). A phase run several times in one step (gradient accumulation) is folded into one
record per step: max of peaks and rises, sum of deltas and seconds. Over steps the profile keeps
the max peak and rise and the mean delta and seconds.

    prof = PhaseProfiler(device)          # before the model is built: its reading is the baseline
    for batch in batches:
        with prof.phase("data"): x, y = next(it)
        with prof.phase("forward"): out = model(x)
        ...
        prof.step_done()
    print(prof.format_table(predicted))
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Iterator

import torch

from seqfit.measure.memory import (
    MemoryReading, format_bytes, read_cuda_peak, read_memory, read_peak_rss, read_resident, reset_cuda_peak,
    reset_peak_rss,
)

__all__ = ["PHASES", "PhaseRecord", "PhaseProfiler"]

PHASES = ("data", "forward", "loss", "backward", "optimizer")


@dataclass(frozen=True)
class PhaseRecord:
    """One phase in one step (bytes; cuda_* are 0 on CPU)."""

    seconds: float
    start_rss: int
    peak_rss: int
    end_rss: int
    start_anon: int
    peak_anon: int
    end_anon: int
    peak_file: int
    start_cuda: int = 0
    peak_cuda: int = 0  # max allocated by live tensors during the phase
    end_cuda: int = 0
    peak_cuda_reserved: int = 0  # max held by the caching allocator during the phase

    def fold(self, later: "PhaseRecord") -> "PhaseRecord":
        """The same phase run again in the same step: max peaks, start of the first, end of the last."""
        return PhaseRecord(
            seconds=self.seconds + later.seconds,
            start_rss=self.start_rss, peak_rss=max(self.peak_rss, later.peak_rss), end_rss=later.end_rss,
            start_anon=self.start_anon, peak_anon=max(self.peak_anon, later.peak_anon), end_anon=later.end_anon,
            peak_file=max(self.peak_file, later.peak_file),
            start_cuda=self.start_cuda, peak_cuda=max(self.peak_cuda, later.peak_cuda), end_cuda=later.end_cuda,
            peak_cuda_reserved=max(self.peak_cuda_reserved, later.peak_cuda_reserved),
        )


class _Peaks:
    """Resident peaks seen by the sampler thread since the last reset (guarded by the profiler's lock)."""

    def __init__(self, rss: int = 0, anon: int = 0, file: int = 0):
        self.rss, self.anon, self.file = rss, anon, file

    def see(self, rss: int, anon: int, file: int) -> None:
        self.rss, self.anon, self.file = max(self.rss, rss), max(self.anon, anon), max(self.file, file)


class PhaseProfiler:
    """Peak and change of memory in each phase of a training step, aggregated over steps."""

    def __init__(self, device: torch.device | str = "cpu", interval: float = 0.002, keep_timeline: bool = False):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.interval = interval
        self.keep_timeline = keep_timeline
        self.hwm = reset_peak_rss()  # False: the sampler alone gives CPU peaks
        self.baseline = read_memory()  # before the model: interpreter, torch, libraries
        self.start_time = time.perf_counter()
        self.timeline: list[tuple[float, int, int, int]] = []  # (seconds, rss, anon, cuda_allocated), in phases
        self.spans: list[tuple[str, float, float]] = []  # (phase, start s, end s), for plots
        self.steps: list[dict[str, PhaseRecord]] = []
        self._step: dict[str, PhaseRecord] = {}
        self._order: list[str] = []  # phases not in PHASES, in the order first seen
        self._current: str | None = None
        self._lock = threading.Lock()
        self._generation = 0  # bumped at each phase start and end: a sample that straddles one is dropped
        self._peaks = _Peaks()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- sampling ---------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                generation, active = self._generation, self._current is not None
            if not active:
                continue
            rss, anon, file = read_resident()
            cuda = torch.cuda.memory_allocated(self.device) if self.cuda and self.keep_timeline else 0
            with self._lock:
                if generation != self._generation:
                    continue  # the phase ended (or a new one began) while we read: not ours
                self._peaks.see(rss, anon, file)
                if self.keep_timeline:
                    self.timeline.append((time.perf_counter() - self.start_time, rss, anon, cuda))

    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, daemon=True, name="seqfit-profile")
            self._thread.start()

    def close(self) -> None:
        """Stop the sampler thread (a later phase starts it again)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._thread = None
        self._stop = threading.Event()

    def __enter__(self) -> "PhaseProfiler":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- phases -----------------------------------------------------------------------------------

    def _read(self) -> MemoryReading:
        if self.cuda:
            torch.cuda.synchronize(self.device)  # kernels still queued have not allocated yet
        return read_memory() if not self.cuda else MemoryReading(
            *read_resident(), torch.cuda.memory_allocated(self.device), torch.cuda.memory_reserved(self.device))

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if self._current is not None:
            raise RuntimeError(f"phase {name!r} started inside phase {self._current!r}; phases do not nest")
        self._ensure_thread()
        if self.cuda:
            torch.cuda.synchronize(self.device)  # earlier work must not count in this phase's peak
            reset_cuda_peak(self.device)
        if self.hwm:
            reset_peak_rss()
        start = self._read()
        with self._lock:
            self._generation += 1
            self._current = name
            self._peaks = _Peaks(start.rss, start.anon, start.file)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - t0
            end = self._read()
            hwm = read_peak_rss() if self.hwm else 0
            with self._lock:
                self._generation += 1
                self._current = None
                peaks = self._peaks
            peaks.see(end.rss, end.anon, end.file)
            peak_rss = max(peaks.rss, hwm)
            # At the RSS peak, anon = peak_rss - file there >= peak_rss - (most file pages seen): exact
            # when file-backed pages hold still, as they do outside the data phase.
            peak_anon = max(peaks.anon, peak_rss - peaks.file)
            cuda_peak, cuda_reserved = read_cuda_peak(self.device) if self.cuda else (0, 0)
            record = PhaseRecord(
                seconds=seconds,
                start_rss=start.rss, peak_rss=peak_rss, end_rss=end.rss,
                start_anon=start.anon, peak_anon=peak_anon, end_anon=end.anon, peak_file=peaks.file,
                start_cuda=start.cuda_allocated, peak_cuda=max(cuda_peak, end.cuda_allocated),
                end_cuda=end.cuda_allocated, peak_cuda_reserved=max(cuda_reserved, end.cuda_reserved),
            )
            self._step[name] = self._step[name].fold(record) if name in self._step else record
            if name not in PHASES and name not in self._order:
                self._order.append(name)
            self.spans.append((name, t0 - self.start_time, t0 + seconds - self.start_time))

    def step_done(self) -> None:
        """Close the current step (phases seen since the last call)."""
        if self._step:
            self.steps.append(self._step)
        self._step = {}

    # -- results ----------------------------------------------------------------------------------

    def phases(self) -> list[str]:
        seen = {name for step in self.steps for name in step}
        return [p for p in PHASES if p in seen] + [p for p in self._order if p in seen]

    def table(self, predicted: dict[str, int] | None = None) -> list[dict]:
        """One row per phase, bytes. ``over_base`` is the phase's peak above the profiler's baseline
        (anon on CPU, allocated on CUDA): the memory the run itself added, which is what ``predicted``
        (phase -> bytes from the planner) is compared with."""
        rows = []
        for name in self.phases():
            recs = [step[name] for step in self.steps if name in step]
            n = len(recs)
            row = {
                "phase": name,
                "steps": n,
                "seconds": sum(r.seconds for r in recs) / n,
                "peak_rss": max(r.peak_rss for r in recs),
                "rise_rss": max(r.peak_rss - r.start_rss for r in recs),
                "delta_rss": round(sum(r.end_rss - r.start_rss for r in recs) / n),
                "peak_anon": max(r.peak_anon for r in recs),
                "rise_anon": max(r.peak_anon - r.start_anon for r in recs),
                "delta_anon": round(sum(r.end_anon - r.start_anon for r in recs) / n),
                "peak_file": max(r.peak_file for r in recs),
            }
            if self.cuda:
                row |= {
                    "peak_cuda": max(r.peak_cuda for r in recs),
                    "rise_cuda": max(r.peak_cuda - r.start_cuda for r in recs),
                    "delta_cuda": round(sum(r.end_cuda - r.start_cuda for r in recs) / n),
                    "peak_cuda_reserved": max(r.peak_cuda_reserved for r in recs),
                }
                row["over_base"] = row["peak_cuda"] - self.baseline.cuda_allocated
            else:
                row["over_base"] = row["peak_anon"] - self.baseline.anon
            if predicted is not None and name in predicted:
                row["predicted"] = int(predicted[name])
                row["ratio"] = row["over_base"] / predicted[name] if predicted[name] else float("nan")
            rows.append(row)
        return rows

    def peaks(self) -> dict[str, int]:
        """Whole-profile peaks (max over phases and steps), e.g. for summary.json."""
        rows = self.table()
        keys = ["peak_rss", "peak_anon"] + (["peak_cuda", "peak_cuda_reserved"] if self.cuda else [])
        return {key: max((r[key] for r in rows), default=0) for key in keys}

    def format_table(self, predicted: dict[str, int] | None = None) -> str:
        rows = self.table(predicted)
        if not rows:
            return "no phases recorded (call step_done() after each step)"
        if self.cuda:  # host memory matters less there: keep the line readable
            cols = ["peak_rss", "rise_rss", "peak_cuda", "rise_cuda", "delta_cuda", "peak_cuda_reserved"]
        else:
            cols = ["peak_rss", "rise_rss", "delta_rss", "peak_anon", "rise_anon", "delta_anon", "peak_file"]
        cols += ["over_base"] + (["predicted", "ratio"] if any("predicted" in r for r in rows) else [])
        header = ["phase", "ms"] + cols
        body = []
        for r in rows:
            cells = [r["phase"], f"{r['seconds'] * 1000:.1f}"]
            for c in cols:
                if c not in r:
                    cells.append("-")
                elif c == "ratio":
                    cells.append(f"{r[c]:.2f}")
                else:
                    cells.append(format_bytes(r[c]))
            body.append(cells)
        widths = [max(len(line[i]) for line in [header] + body) for i in range(len(header))]
        fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
        base = self.baseline
        foot = (f"{len(self.steps)} steps on {self.device}; baseline rss {format_bytes(base.rss)}, anon {format_bytes(base.anon)}"
                + ("" if self.hwm or self.cuda else f"; peaks sampled every {self.interval * 1000:g} ms (may miss short spikes)"))
        return "\n".join([fmt(header)] + [fmt(b) for b in body] + [foot])

    def to_json(self, predicted: dict[str, int] | None = None) -> dict:
        return {
            "device": str(self.device),
            "steps": len(self.steps),
            "interval_s": self.interval,
            "exact_cpu_peaks": self.hwm,
            "baseline": asdict(self.baseline),
            "peaks": self.peaks(),
            "phases": self.table(predicted),
            "per_step": [{name: asdict(rec) for name, rec in step.items()} for step in self.steps],
            "spans": [list(s) for s in self.spans],
        }
