"""The forecast plots of `seqfit report` for a forecast run: history, forecast and quantile interval of a few series.

The forecasts come out of the same path as `seqfit predict` (seqfit.engine.forecast_output: ``open_series``,
``default_split``, ``context_split``, ``forecast_from_end``, ``future_times``), on the run's own data and the same default split
(test, else valid, else train), so the plotted values are the ones `seqfit predict RUN DATA` writes.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from seqfit.errors import SeqfitError

__all__ = ["forecast_plots", "MAX_SERIES"]

MAX_SERIES = 4  # series plotted when none is named: a report stays readable


def _pick(names: list[str], wanted: tuple[str, ...], limit: int) -> list[int]:
    if not wanted:
        return list(range(min(limit, len(names))))
    where = {n: i for i, n in enumerate(names)}
    missing = [w for w in wanted if w not in where]
    if missing:
        have = ", ".join(repr(n) for n in names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise SeqfitError(f"no series {missing[0]!r} in the split (it has {have})")
    return [where[w] for w in dict.fromkeys(wanted)]


def _axis(values: list | np.ndarray) -> np.ndarray:
    """Times as something matplotlib can place: numbers stay, ISO strings become datetime64, else row numbers."""
    values = np.asarray(values)
    if values.dtype.kind in "iuf":
        return values
    try:
        return values.astype("datetime64[ns]")
    except ValueError:
        return np.arange(len(values))


def forecast_plots(run_dir: str | Path, *, series: tuple[str, ...] = (), limit: int = MAX_SERIES,
                   split_name: str | None = None, history: int | None = None, device: str = "cpu") -> list[dict]:
    """Write RUN_DIR/plots/forecast-<series>.png for the named series (default: the first ``limit``) and
    return what each drew: plot_forecast's dict plus "series", "split", "time" (the forecast rows' times)."""
    from seqfit.engine.forecast_output import context_split, default_split, forecast_from_end, future_times, open_series
    from seqfit.engine.run_dir import load_run
    from seqfit.measure.plots import plot_forecast

    run_dir = Path(run_dir)
    run = load_run(run_dir, device=device, task="forecast")
    task = run.task
    store = open_series(run, run.store.dir)
    name = default_split(store, split_name)
    split = store.split(name)
    chosen = _pick(split.names, tuple(series), limit)
    source = split  # a short tail borrows its history, exactly as predict does
    if (np.diff(split.offsets) < task.lookback + task.future_rows).any():
        source = context_split(run, store, split)[0]
    pred = forecast_from_end(run, source, task.horizon)  # (S, h, T, Q): every series, exactly as predict does
    times = store.times(name)
    n_hist = history or max(task.lookback, 3 * task.horizon)
    qs = task.quantiles
    band = f"q{qs[0]:g}-q{qs[-1]:g}" if len(qs) >= 2 else ""
    out, used = [], set()
    for i in chosen:
        first, end = int(split.offsets[i]), int(split.offsets[i + 1]) - task.future_rows  # end: the forecast origin
        n = min(n_hist, end - first)
        values = split.read(end - n, n, normalize=False)[:, task.target_idx]  # (n, T) raw
        mine = None if times is None else times[first:end]
        past = _axis(mine[-n:]) if mine is not None else np.arange(end - first - n, end - first)
        when = future_times(mine, end - first - 1, np.arange(1, task.horizon + 1))
        future = _axis(when) if mine is not None else np.asarray(when)
        if future.dtype != past.dtype:  # times that could not be extrapolated: fall back to row numbers
            past, future = np.arange(end - first - n, end - first), np.arange(end - first, end - first + task.horizon)
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", split.names[i]).strip("._") or "series"
        stem = safe if safe not in used else f"{safe}-{i}"
        used.add(stem)
        drawn = plot_forecast(past, values, future, task._point(pred[i]), run_dir / "plots" / f"forecast-{stem}.png",
                              lower=pred[i, :, :, 0] if band else None, upper=pred[i, :, :, -1] if band else None,
                              targets=task.targets, band=band,
                              title=(f"{split.names[i]}: " if split.num_series > 1 else "")
                              + f"{task.horizon} steps from the end of the {name} split")
        out.append({**drawn, "series": split.names[i], "split": name, "time": when})
    return out
