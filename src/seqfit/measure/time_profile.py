"""Per-phase time profile of training steps: where does the time go?

The memory profiler's phases (data, forward, loss, backward, optimizer; measure/profile.py), timed:
wall seconds, the process's CPU seconds in user space and in the kernel (all threads: an intra-op
pool's work counts), and its page faults -- minor ones are the kernel handing out fresh pages, which
seqfit's allocator settings trade for a bounded resident size (README, "Allocator"), so their system
time is part of a step's cost. The step itself is timed too: ``other`` is its time outside any phase.

A phase can be cut into parts by ``switch(label)`` calls from inside it (engine/time_run.py does so
from module and gradient hooks: embedding, recurrent, output), each part timed the same way. The
first part of a phase is labelled by ``first_part`` (default "other").

    prof = TimeProfiler("cpu")
    for batch in batches:
        with prof.step():
            with prof.phase("forward"): out = model(x)
            ...
    print(prof.format_table())

Nothing here samples memory or resets counters: the memory profile's sampler thread and VmHWM resets
would be timed with the step.

On a virtual machine the host may run other guests on our cores: each step also reads the machine's
"steal" time (/proc/stat), the share of CPU time the hypervisor took away. A step timed while steal was
high measured the neighbours, not the code.
"""

from __future__ import annotations

import resource
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Iterator

import torch

from seqfit.measure import machine
from seqfit.measure.machine import NOISY_STEAL, steal_share
from seqfit.measure.profile import PHASES

__all__ = ["Times", "TimeProfiler", "FIRST_PARTS", "format_phases", "format_time_report"]

FIRST_PARTS = {"backward": "output"}  # a backward starts with the output layer's and the loss's gradients


@dataclass(frozen=True)
class Times:
    """A span, or the readings it is the difference of: seconds and page-fault counts."""

    wall: float = 0.0
    user: float = 0.0  # CPU seconds in user space, every thread of the process
    system: float = 0.0  # CPU seconds in the kernel: page faults, mmap/munmap, thread wake-ups
    minflt: int = 0  # minor page faults (a fresh or reclaimed page mapped in, no disk read)
    majflt: int = 0  # major page faults (a page read from disk: memory-mapped data not yet resident)

    @staticmethod
    def now() -> "Times":
        r = resource.getrusage(resource.RUSAGE_SELF)
        return Times(time.perf_counter(), r.ru_utime, r.ru_stime, r.ru_minflt, r.ru_majflt)

    def __sub__(self, other: "Times") -> "Times":
        return Times(self.wall - other.wall, self.user - other.user, self.system - other.system,
                     self.minflt - other.minflt, self.majflt - other.majflt)

    def __add__(self, other: "Times") -> "Times":
        return Times(self.wall + other.wall, self.user + other.user, self.system + other.system,
                     self.minflt + other.minflt, self.majflt + other.majflt)


def _mean(spans: list[Times]) -> dict:
    n = max(1, len(spans))
    total = sum(spans, Times())
    return {"seconds": total.wall / n, "user_s": total.user / n, "system_s": total.system / n,
            "minflt": round(total.minflt / n), "majflt": round(total.majflt / n)}


class TimeProfiler:
    """Time, CPU time and page faults of each phase (and its parts) of a training step, over steps."""

    def __init__(self, device: torch.device | str = "cpu", first_part: dict[str, str] | None = None):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.first_part = FIRST_PARTS if first_part is None else first_part
        self.steps: list[dict] = []  # {"step": Times, "phases": {name: Times}, "parts": {name: {label: Times}}}
        self._order: list[str] = []  # phases not in PHASES, in the order first seen
        self.current: str | None = None  # the phase running now
        self._step: dict | None = None
        self._part: tuple[str, Times] | None = None  # (label, start) of the running part

    def _now(self) -> Times:
        if self.cuda:
            torch.cuda.synchronize(self.device)  # queued kernels belong to the span that launched them
        return Times.now()

    @contextmanager
    def step(self) -> Iterator[None]:
        self._step = {"phases": {}, "parts": {}}
        jiffies, start = machine.cpu_jiffies(), self._now()
        try:
            yield
        finally:
            self._step["step"] = self._now() - start
            self._step["jiffies"] = machine.jiffies_since(jiffies)
            self.steps.append(self._step)
            self._step = None

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if self.current is not None:
            raise RuntimeError(f"phase {name!r} started inside phase {self.current!r}; phases do not nest")
        start = self._now()
        self.current, self._part = name, (self.first_part.get(name, "other"), start)
        try:
            yield
        finally:
            end = self._now()
            self._close_part(end)
            self.current = None
            if self._step is not None:
                phases = self._step["phases"]
                phases[name] = phases[name] + (end - start) if name in phases else end - start
                if name not in PHASES and name not in self._order:
                    self._order.append(name)

    def switch(self, label: str) -> None:
        """Inside a phase: the running part ends here and part ``label`` begins (outside a phase: nothing)."""
        if self.current is None:
            return
        now = self._now()
        self._close_part(now)
        self._part = (label, now)

    def _close_part(self, now: Times) -> None:
        if self._part is None or self._step is None:
            return
        label, start = self._part
        self._part = None
        parts = self._step["parts"].setdefault(self.current, {})
        parts[label] = parts[label] + (now - start) if label in parts else now - start

    # -- results ----------------------------------------------------------------------------------

    def phases(self) -> list[str]:
        seen = {name for s in self.steps for name in s["phases"]}
        return [p for p in PHASES if p in seen] + [p for p in self._order if p in seen]

    def table(self) -> dict[str, dict]:
        """Per phase, means over the steps: seconds, user_s, system_s, minflt, majflt, share (of the step), and
        "parts" where the phase was cut into some; "other" is the step outside any phase; "step" the whole."""
        steps = [s["step"] for s in self.steps]
        step_wall = _mean(steps)["seconds"] or float("nan")
        out = {}
        for name in self.phases():
            row = _mean([s["phases"].get(name, Times()) for s in self.steps])
            labels = list(dict.fromkeys(lab for s in self.steps for lab in s["parts"].get(name, {})))
            if len(labels) > 1:  # one part is the phase itself: no news
                row["parts"] = {lab: _mean([s["parts"].get(name, {}).get(lab, Times()) for s in self.steps])
                                for lab in labels}
            out[name] = row
        outside = [s["step"] - sum(s["phases"].values(), Times()) for s in self.steps]
        out["other"] = _mean(outside)
        out["step"] = _mean(steps)
        for row in out.values():
            for r in [row, *row.get("parts", {}).values()]:
                r["share"] = r["seconds"] / step_wall
        return out

    def step_seconds(self) -> list[float]:
        """Each timed step's wall seconds, in order."""
        return [s["step"].wall for s in self.steps]

    def host_steal(self) -> float | None:
        """The share of the machine's CPU time the hypervisor took during the timed steps (None: not known;
        0 on bare metal). Ticks are 10 ms: steps shorter than that read as a few ticks or none."""
        return steal_share([s.get("jiffies") for s in self.steps])

    def to_json(self) -> dict:
        return {"device": str(self.device), "steps": len(self.steps), "phases": self.table(),
                "host_steal": self.host_steal(),
                "per_step": [{"step": asdict(s["step"]), "phases": {k: asdict(v) for k, v in s["phases"].items()},
                              "parts": {k: {lab: asdict(t) for lab, t in v.items()} for k, v in s["parts"].items()}}
                             for s in self.steps]}

    def format_table(self) -> str:
        return format_phases(self.table())


def format_phases(rows: dict[str, dict]) -> str:
    """TimeProfiler.table() (or a report's "phases") as aligned text, parts indented under their phase."""
    if len(rows) <= 2:
        return "no phases recorded (run steps inside prof.step())"
    header = ["phase", "ms", "share", "user ms", "sys ms", "minflt", "majflt"]
    body = []
    for name, row in rows.items():
        body.append(_cells(name, row))
        for label, part in row.get("parts", {}).items():
            body.append(_cells(f"  {name}.{label}", part))
    widths = [max(len(line[i]) for line in [header] + body) for i in range(len(header))]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return "\n".join([fmt(header)] + [fmt(b) for b in body])


def _cells(name: str, row: dict) -> list[str]:
    return [name, f"{row['seconds'] * 1000:.1f}", f"{row['share']:.0%}", f"{row['user_s'] * 1000:.1f}",
            f"{row['system_s'] * 1000:.1f}", f"{row['minflt']:,}", f"{row['majflt']:,}"]


def format_time_report(report: dict) -> str:
    """engine.time_run.time_report's dict as the table `seqfit profile --time` prints, and what it adds up to."""
    lines = [format_phases(report["phases"])]
    step = report["phases"]["step"]
    rate = report.get("tokens_per_second")
    median = report.get("median") or {}
    lines.append(f"{report['steps']} steps on {report['device']} ({report['precision']}): "
                 f"{step['seconds'] * 1000:.1f} ms a step" + (f", {rate:,.0f} tokens/s" if rate else "")
                 + (f" (median step {median['seconds'] * 1000:.1f} ms)" if median.get("seconds") else ""))
    steal = report.get("host_steal")
    if steal is not None and steal >= NOISY_STEAL:
        lines.append(f"host steal: {steal:.0%} of the machine's CPU time went to other guests: the timings are noisy")
    gflops = report["ceilings"].get("gflops", {})
    skipped = report["ceilings"].get("skipped", {})
    ceil = ", ".join(f"{k} {v:,.0f}" for k, v in gflops.items()) or "none measured"
    ceiling_steal = report["ceilings"].get("host_steal") or 0.0
    lines.append(f"ceilings (GFLOP/s, {report['ceilings'].get('size')}^3 products): {ceil}"
                 + "".join(f"; {k}: {why}" for k, why in skipped.items())
                 + (f"; measured with {ceiling_steal:.0%} host steal (--recalibrate on a quiet machine)"
                    if ceiling_steal >= NOISY_STEAL else ""))
    if report.get("achieved_flops") is None:
        lines.append("model FLOPs: not counted for this task")
    elif report.get("ceiling") is None:
        lines.append(f"model FLOP/s {report['achieved_flops'] / 1e9:,.1f} G; no {report['precision']} ceiling measured")
    else:
        c = report["ceiling"]
        lines.append(f"model FLOP/s {report['achieved_flops'] / 1e9:,.1f} G = {report['fraction_of_ceiling']:.1%} "
                     f"of {c['path']} ({c['gflops']:,.0f} G)")
    return "\n".join(lines)
