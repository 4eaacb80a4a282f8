"""PNG plots of a run: memory over time, loss, throughput, a forecaster's forecasts.

Figures are built with matplotlib's object API on the Agg canvas, never pyplot: no display is
needed and no global backend is switched under whoever imported us.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from seqfit.errors import SeqfitError

__all__ = ["plot_memory_timeline", "plot_loss", "plot_throughput", "plot_forecast", "timeline_columns"]

_SIZE = (8.0, 4.2)  # inches; at 110 dpi about 880x460 px, legible embedded in a report
_DPI = 110
_UNITS = (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10), ("B", 1))


def _figure() -> Figure:
    fig = Figure(figsize=_SIZE, dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _unit(largest: float) -> tuple[str, int]:
    return next(((name, size) for name, size in _UNITS if largest >= size), ("B", 1))


def timeline_columns(timeline: Sequence[Any]) -> dict[str, list[float]]:
    """Samples as (t, rss, anon[, cuda]) tuples or dicts -> {"t": [...], "rss": [...], "anon": [...], "cuda": [...]}."""
    cols: dict[str, list[float]] = {"t": [], "rss": [], "anon": [], "cuda": []}
    for sample in timeline:
        if isinstance(sample, dict):
            values = (sample.get("t", sample.get("time", 0.0)), sample.get("rss", 0), sample.get("anon", 0),
                      sample.get("cuda", sample.get("cuda_allocated", 0)))
        else:
            values = (tuple(sample) + (0, 0, 0))[:4]
        for key, value in zip(("t", "rss", "anon", "cuda"), values):
            cols[key].append(float(value or 0))
    return cols


def plot_memory_timeline(timeline: Sequence[Any], path: Path | str, *, budget_bytes: int | None = None,
                         predicted_peak_bytes: int | None = None, title: str = "",
                         spans: Sequence[tuple[str, float, float]] | None = None) -> Path:
    """RSS and anonymous memory (and CUDA allocated, where any) over time, with the budget and the
    planner's predicted peak as horizontal lines; ``spans`` (phase, start s, end s) shade phases."""
    cols = timeline_columns(timeline)
    if not cols["t"]:
        raise SeqfitError("no memory samples to plot")
    lines = [("rss", "resident (RSS)", "tab:blue"), ("anon", "anonymous (tensors, heap)", "tab:green")]
    if any(cols["cuda"]):
        lines.append(("cuda", "CUDA allocated", "tab:purple"))
    largest = max([max(cols[k]) for k, _, _ in lines] + [budget_bytes or 0, predicted_peak_bytes or 0])
    unit, scale = _unit(largest)
    t0 = cols["t"][0]
    times = [t - t0 for t in cols["t"]]

    fig = _figure()
    ax = fig.add_subplot()
    if spans:
        colours: dict[str, str] = {}
        palette = ("#fde8c8", "#d9ecf7", "#e5f5dc", "#f3dff0", "#eeeeee")
        for name, start, end in spans:
            label = None if name in colours else name  # one legend entry per phase
            colour = colours.setdefault(name, palette[len(colours) % len(palette)])
            ax.axvspan(start - t0, end - t0, color=colour, lw=0, label=label)
    for key, label, colour in lines:
        values = [v / scale for v in cols[key]]
        peak = max(values)
        ax.plot(times, values, color=colour, lw=1.4, label=f"{label}, peak {peak:.3g} {unit}")
    if budget_bytes:
        ax.axhline(budget_bytes / scale, color="tab:red", ls="--", lw=1.2, label=f"budget {budget_bytes / scale:.3g} {unit}")
    if predicted_peak_bytes:
        ax.axhline(predicted_peak_bytes / scale, color="tab:orange", ls=":", lw=1.6,
                   label=f"predicted peak {predicted_peak_bytes / scale:.3g} {unit}")
    ax.set_xlabel("seconds")
    ax.set_ylabel(unit)
    ax.set_ylim(bottom=0, top=largest / scale * 1.12)
    ax.grid(alpha=0.3)
    # below the axes: memory curves fill the plot, and a legend inside would hide some of them
    fig.legend(loc="outside lower center", ncols=3 if spans else 2, fontsize="small", frameon=False)
    ax.set_title(title or "memory over time")
    return _save(fig, path)


def _first(record: dict[str, Any], keys: Sequence[str]) -> float | None:
    for key in keys:
        value = record.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def _series(records: Sequence[dict], kind: str, keys: Sequence[str]) -> tuple[list[float], list[float]]:
    steps, values = [], []
    for record in records:
        if record.get("kind", "train") != kind or "step" not in record:
            continue
        value = _first(record, keys)
        if value is not None and math.isfinite(value):
            steps.append(float(record["step"]))
            values.append(value)
    return steps, values


_VALID_METRICS = (  # (label, keys); the first one present is drawn on the right axis
    ("validation perplexity", ("ppl", "valid_ppl")),
    ("validation accuracy", ("accuracy", "acc", "valid_accuracy", "valid_acc")),
)


def plot_loss(records: Sequence[dict], path: Path | str, *, title: str = "") -> Path:
    """Training loss (and validation loss) over steps; validation perplexity or accuracy on the right axis."""
    train_steps, train_loss = _series(records, "train", ("loss", "train_loss"))
    valid_steps, valid_loss = _series(records, "valid", ("loss", "valid_loss"))
    metric = next(((label, _series(records, "valid", keys)) for label, keys in _VALID_METRICS
                   if _series(records, "valid", keys)[0]), None)
    if not train_steps and not valid_steps and metric is None:
        raise SeqfitError("no loss values in the metrics to plot")
    fig = _figure()
    ax = fig.add_subplot()
    handles = []
    if train_steps:
        handles += ax.plot(train_steps, train_loss, color="tab:blue", lw=1.2, label="train loss")
    if valid_steps:
        handles += ax.plot(valid_steps, valid_loss, "o-", color="tab:orange", lw=1.4, ms=4, label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    if metric is not None:
        label, (steps, values) = metric
        right = ax.twinx()
        handles += right.plot(steps, values, "s--", color="tab:green", lw=1.2, ms=4, label=label)
        right.set_ylabel(label.removeprefix("validation "))
        if "perplexity" in label and min(values) > 0 and max(values) / min(values) > 20:
            right.set_yscale("log")  # early perplexities are orders of magnitude above the final one
            plain = FuncFormatter(lambda v, _: f"{v:,.0f}")  # 300, not 3x10^2
            right.yaxis.set_major_formatter(plain)
            right.yaxis.set_minor_formatter(plain)
    ax.legend(handles=handles, loc="upper right", fontsize="small", framealpha=0.9)
    ax.set_title(title or "loss")
    return _save(fig, path)


def _moving_average(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_throughput(records: Sequence[dict], path: Path | str, *, title: str = "") -> Path:
    """Training tokens per second over steps, raw and smoothed, with the median as a line."""
    steps, rate = _series(records, "train", ("tokens_per_s", "tok_s"))
    if not steps:
        raise SeqfitError("no tokens_per_s values in the metrics to plot")
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot(steps, rate, color="tab:blue", alpha=0.35, lw=1, marker="." if len(steps) < 50 else None, label="tokens/s")
    if len(steps) >= 5:
        window = max(2, len(steps) // 20)
        ax.plot(steps, _moving_average(rate, window), color="tab:blue", lw=1.8, label=f"moving average ({window})")
    median = sorted(rate)[len(rate) // 2]
    ax.axhline(median, color="tab:gray", ls="--", lw=1, label=f"median {median:,.0f}")
    ax.set_xlabel("step")
    ax.set_ylabel("tokens / s")
    ax.set_ylim(bottom=0, top=max(rate) * 1.15)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small", framealpha=0.9)
    ax.set_title(title or "throughput")
    return _save(fig, path)


def plot_forecast(history_x: Sequence, history: Any, future_x: Sequence, point: Any, path: Path | str, *,
                  lower: Any = None, upper: Any = None, targets: Sequence[str] = ("y",), band: str = "",
                  title: str = "") -> dict[str, Any]:
    """One series: its history (n, T), the point forecast (h, T) and, when given, the interval lower..upper
    (h, T), one panel per target. Returns what was drawn, read back from the figure's lines: {"path",
    "history", "forecast" (lists of T arrays), "lower", "upper"}, so a test can check the pixels' data."""
    import numpy as np

    history, point = np.asarray(history, dtype=np.float64), np.asarray(point, dtype=np.float64)
    T = point.shape[1]
    fig = Figure(figsize=(_SIZE[0], max(_SIZE[1], 2.6 * T)), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(T, 1, squeeze=False)[:, 0]
    drawn: dict[str, Any] = {"history": [], "forecast": [], "lower": [], "upper": []}
    for j, ax in enumerate(axes):
        (h_line,) = ax.plot(history_x, history[:, j], color="tab:blue", lw=1.2, label="history")
        # join the forecast to the last observed point so the eye reads one curve (the join is not a forecast)
        ax.plot([history_x[-1], future_x[0]], [history[-1, j], point[0, j]], color="tab:orange", lw=1, ls=":")
        (f_line,) = ax.plot(future_x, point[:, j], "o-", color="tab:orange", lw=1.5, ms=3, label="forecast")
        drawn["history"].append(np.asarray(h_line.get_ydata(), dtype=np.float64))
        drawn["forecast"].append(np.asarray(f_line.get_ydata(), dtype=np.float64))
        if lower is not None and upper is not None:
            lo, hi = np.asarray(lower, dtype=np.float64)[:, j], np.asarray(upper, dtype=np.float64)[:, j]
            ax.fill_between(future_x, lo, hi, color="tab:orange", alpha=0.25, lw=0, label=band or "interval")
            drawn["lower"].append(lo)
            drawn["upper"].append(hi)
        ax.set_ylabel(targets[j] if j < len(targets) else f"target {j}")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize="small", framealpha=0.9)
    axes[0].set_title(title or "forecast")
    drawn["path"] = _save(fig, path)
    return drawn
