"""Forecasts out of a trained forecaster for `seqfit predict` and `seqfit detect`.

* ``forecast_from_end``: the forecast of the next H rows of each series from its last --lookback rows in a
  split (the forecast origin is the series' end in the split). A run with --future-covariates needs their values
  on the forecast rows: its origin is the series' end minus --horizon, and it forecasts the last --horizon rows
  of the data, whose future columns provide those values (--calendar alone extrapolates the times instead).
* ``one_step``: every row t of each series from its row L on forecast one step ahead from rows t-L .. t-1
  (the first horizon step), for anomaly detection; ``robust_scale`` turns its errors into robust z-scores.
  With --future-covariates it reads rows t .. t+h-1's future values too; past a series' end, the last row's.

* ``context_split``: a held-out tail (valid, test, or DATA continuing the run's series) with up to --lookback
  rows of each series' earlier history in front (seqfit.engine.forecast_context), so its first rows are
  forecast and scored too; ``series_scales``: the error scale of each series of a split (detect).

A split holds one series or many (seqfit.data.series); windows never reach across two.

DATA may be another prepared store than the one the run trained on: it must hold the same columns, and it
is normalised as the run was (--normalize: the run's train statistics, each series' train statistics by
name, or each window's own; seqfit.data.series_norm), and forecasts de-normalised with the same.
"""

from __future__ import annotations

from pathlib import Path
from statistics import NormalDist

import numpy as np
import torch

from seqfit.data.series import SeriesSplit, SeriesStore
from seqfit.errors import SeqfitError

__all__ = ["open_series", "default_split", "context_split", "forecast_from_end", "one_step", "robust_scale",
           "series_scales", "future_times", "write_table", "clean_rescore", "point_and_sigma", "MAD_SIGMA",
           "MIN_SERIES_POINTS"]

MAD_SIGMA = 1.4826  # MAD x this = the std of a normal distribution
MIN_SERIES_POINTS = 30  # calibration errors a series needs for a scale of its own (else the global one)


def open_series(run, data: str | Path) -> SeriesStore:
    """DATA as a series store with the run's columns, normalised by the run's train statistics."""
    data = Path(data)
    if not (data / "meta.json").is_file():
        raise SeqfitError(f"{data} is not a prepared data directory (no meta.json)")
    store = SeriesStore(data)
    if store.columns != run.store.columns:
        raise SeqfitError(f"{data} holds columns {', '.join(store.columns)}; the run trained on "
                          f"{', '.join(run.store.columns)}: prepare DATA with the same --columns")
    store.mean, store.std = run.store.mean, run.store.std  # splits opened from here normalise as in training
    return store


def default_split(store: SeriesStore, name: str | None) -> str:
    if name:
        return name
    return next((s for s in ("test", "valid", "train") if store.has_split(s)), "train")


def context_split(run, store: SeriesStore, split: SeriesSplit) -> tuple[SeriesSplit, int]:
    """(``split`` with up to --lookback rows of each series' history in front (a ContextSplit), the number of
    series that borrowed any). History: DATA's earlier splits, then the run's own data when DATA is another
    store (seqfit.engine.forecast_context)."""
    from seqfit.engine.forecast_context import with_context

    same = Path(store.dir).resolve() == Path(run.store.dir).resolve()
    view, borrowed = with_context(split, store, None if same else run.store, run.task.lookback)
    return (view, borrowed) if borrowed else (split, 0)


@torch.no_grad()
def _forecast(task, model, split: SeriesSplit, starts: np.ndarray, precision, batch: int):
    """Yield forecasts in original units (B, h, T, Q) from the L rows (and, with future columns, the h) after
    each start."""
    model.eval()
    for i in range(0, len(starts), batch):
        raw = _windows(task, split, starts[i:i + batch])  # (B, L [+ h], F)
        yield _on_raw(task, model, split, starts[i:i + batch], raw, precision)


def _windows(task, split: SeriesSplit, starts) -> np.ndarray:
    """Raw rows (B, L + the run's future rows, F) from each start; rows past a series' end repeat its last."""
    n = task.lookback + task.future_rows
    if not task.future_rows:
        return split.windows(starts, n, normalize=False)
    ends = split.offsets[split.series_of(starts) + 1]
    parts = [split.read(int(s), int(min(n, e - s)), normalize=False) for s, e in zip(starts, ends)]
    return np.stack([np.concatenate([r, np.repeat(r[-1:], n - len(r), 0)]) for r in parts])


def _on_raw(task, model, split: SeriesSplit, starts, raw: np.ndarray, precision) -> np.ndarray:
    """Forecasts in original units (B, h, T, Q) of raw (unnormalised) windows (B, L, F) starting at ``starts``."""
    return task.forecast_raw(model, split, starts, raw, precision)[1]


def forecast_from_end(run, split: SeriesSplit, horizon: int, *, batch: int = 256) -> np.ndarray:
    """(series, horizon, T, Q) forecasts, original units, of the rows after each series' last --lookback rows."""
    task = run.task
    lengths, need = np.diff(split.offsets), task.lookback + task.future_rows
    if (short := np.flatnonzero(lengths < need)).size:
        i = int(short[0])
        who = f"series {split.names[i]!r} has" if split.num_series > 1 else "the split has"
        more = f" (and {len(short) - 1} more series)" if len(short) > 1 else ""
        why = (f" + --horizon {task.horizon} (with --future-covariates the last --horizon rows are forecast and "
               "provide the future values)" if task.future_rows else "")
        raise SeqfitError(f"{who} {int(lengths[i])} rows in the {split.name} split{more}, fewer than the run's "
                          f"--lookback {task.lookback}{why}")
    starts = split.offsets[1:] - need
    return np.concatenate(list(_forecast(task, run.model, split, starts, run.precision, batch)))[:, :horizon]


def one_step(run, split: SeriesSplit, *, tail: int = 0, batch: int = 256) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(rows t (split-wide) of each series from its row L on, or of its last ``tail`` rows only; the series of
    each; their values (N, T); one-step forecasts (N, T, Q)), original units."""
    task = run.task
    L = task.lookback
    parts = []
    for first, end in zip(split.offsets[:-1].tolist(), split.offsets[1:].tolist()):
        parts.append(np.arange(max(first + L, end - tail) if tail else first + L, end, dtype=np.int64))
    rows = np.concatenate(parts)
    series = np.repeat(np.arange(len(parts)), [len(r) for r in parts])
    if not len(rows):
        return rows, series, np.empty((0, len(task.target_idx))), np.empty((0, len(task.target_idx), 1))
    preds = [p[:, 0] for p in _forecast(task, run.model, split, rows - L, run.precision, batch)]
    values = np.concatenate([_values(split, r, task.target_idx) for r in parts if len(r)])
    return rows, series, values.astype(np.float64), np.concatenate(preds).astype(np.float64)


def _values(split: SeriesSplit, rows: np.ndarray, idx: list[int], chunk: int = 1 << 16) -> np.ndarray:
    """Raw target values of the contiguous rows (rows[0] .. rows[-1]), a chunk at a time."""
    out = []
    for s in range(int(rows[0]), int(rows[-1]) + 1, chunk):
        n = min(chunk, int(rows[-1]) + 1 - s)
        out.append(split.read(s, n, normalize=False)[:, idx])
    return np.concatenate(out)


def clean_rescore(run, split: SeriesSplit, rows: np.ndarray, values: np.ndarray, pred: np.ndarray, score_of,
                  threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Rescore the contiguous ``rows`` of one series so that an anomaly does not echo: a flagged point is replaced by its forecast in the windows of
    the points after it (so the next point is not judged against a forecast made from the spike), unless
    the next point is flagged in the same direction too, which makes it a lasting change (a level shift):
    then the real values stand. ``score_of(values, pred)`` -> scores (N, T). Returns (pred, scores)."""
    task = run.task
    L, tgt = task.lookback, task.target_idx
    pred, score = pred.copy(), score_of(values, pred)
    replaced: dict[int, np.ndarray] = {}  # index into rows -> target values standing in for the real ones
    lasting: set[int] = set()
    sign0 = np.sign(values - task._point(pred))  # each point's error direction before any cleaning

    def recompute(lo: int) -> None:  # rows lo .. lo + L - 1 from the current replacements
        idx = np.arange(lo, min(lo + L, len(rows)))
        if not len(idx):
            return
        raw = _windows(task, split, rows[idx] - L)  # (B, L [+ h], F)
        for k, v in replaced.items():  # rows are contiguous: row k sits at position k - j + L of window j
            for j in np.flatnonzero((idx - L <= k) & (k < idx)):
                raw[j, k - idx[j] + L, tgt] = v
        pred[idx] = _on_raw(task, run.model, split, rows[idx] - L, raw, run.precision)[:, 0]
        score[idx] = score_of(values[idx], pred[idx])

    i = 0
    while i < len(rows):
        if not (score[i] > threshold).any():
            i += 1
            continue
        prev = i - 1
        if prev in replaced and (np.sign(values[i] - task._point(pred[i:i + 1])[0]) == sign0[prev]).any():
            del replaced[prev]  # two in a row, same direction: a lasting change, not a spike
            lasting.add(prev)
            recompute(prev + 1)
            continue  # re-judge row i against the real values
        if prev not in lasting and prev not in replaced:
            replaced[i] = task._point(pred[i:i + 1])[0]
            recompute(i + 1)
        elif prev in lasting:
            lasting.add(i)
        i += 1
    return pred, score


def point_and_sigma(task, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(point forecasts (N, T), per-point sigma from the outer quantiles' band (N, T), or None)."""
    point = task._point(pred)
    qs = task.quantiles
    if not qs:
        return point, None
    z = NormalDist().inv_cdf(qs[-1]) - NormalDist().inv_cdf(qs[0])
    return point, np.maximum(pred[..., -1] - pred[..., 0], 0) / z


def robust_scale(errors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column (centre, scale) of one-step errors (N, T): the median, and 1.4826 x MAD (tiny floor)."""
    centre = np.median(errors, 0)
    mad = np.median(np.abs(errors - centre), 0) * MAD_SIGMA
    floor = 1e-9 * np.maximum(1.0, np.abs(errors).max(0) if len(errors) else 1.0)
    return centre, np.maximum(mad, floor)


def series_scales(errors: np.ndarray, series: np.ndarray, at: np.ndarray, num_series: int, *,
                  per_series: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per series of a split (``num_series``), (centre (S, T), scale (S, T), own (S,) bool) of calibration errors
    (N, T) whose series (indices into the calibration split, non-decreasing) are ``series``; ``at``: each
    calibration series' index in the split, -1 where it has none (SeriesSplit.positions_in). With
    ``per_series`` a series with at least MIN_SERIES_POINTS errors gets its own robust_scale; the others
    (all, without it) the one of every error."""
    centre, scale = robust_scale(errors)
    centres, scales = np.tile(centre, (num_series, 1)), np.tile(scale, (num_series, 1))
    own = np.zeros(num_series, dtype=bool)
    if not per_series:
        return centres, scales, own
    bounds = np.searchsorted(series, np.arange(len(at) + 1))
    for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        if b - a >= MIN_SERIES_POINTS and at[k] >= 0:
            centres[at[k]], scales[at[k]] = robust_scale(errors[a:b])
            own[at[k]] = True
    return centres, scales, own


def future_times(times: np.ndarray | None, origin: int, steps: np.ndarray) -> list:
    """Times of rows origin + steps of one series (``times``: its rows' times): extrapolated from the last
    spacing of numeric or ISO times, else the row index within the series' part of the split."""
    if times is not None and origin >= 0:
        last = times[origin]
        prev = times[origin - 1] if origin >= 1 else None
        if times.dtype.kind in "if":
            step = (last - prev) if prev is not None else 1
            return [(last + k * step).item() for k in steps]
        try:
            t1 = np.datetime64(str(last))
            dt = t1 - np.datetime64(str(prev)) if prev is not None else None
        except ValueError:
            t1 = None
        if t1 is not None and dt is not None:
            return [str(t1 + int(k) * dt) for k in steps]
    return [int(origin + k) for k in steps]


def write_table(path: Path, columns: dict[str, list | np.ndarray]) -> None:
    """Columns to CSV, or to Parquet when the name ends .parquet/.pq; atomically."""
    from seqfit.atomic import atomic_path

    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            if path.suffix.lower() in (".parquet", ".pq"):
                import pyarrow as pa
                import pyarrow.parquet as pq

                pq.write_table(pa.table({k: (v if isinstance(v, np.ndarray) else list(v)) for k, v in columns.items()}), tmp)
            else:
                import csv

                with open(tmp, "w", newline="", encoding="utf-8") as f:
                    w = csv.writer(f)
                    w.writerow(list(columns))
                    cols = [v.tolist() if isinstance(v, np.ndarray) else list(v) for v in columns.values()]
                    w.writerows(zip(*cols))
    except OSError as e:
        raise SeqfitError(f"cannot write {path}: {e.strerror}") from None
