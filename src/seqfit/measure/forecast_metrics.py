"""Forecast accuracy of a rolling-origin backtest: MAE, RMSE, sMAPE and MASE, pooled and per series.

MASE (Hyndman & Koehler 2006) divides a forecast's MAE by the in-sample MAE of the seasonal-naive forecast
y[t - m]. Over many series forecasters report the mean of each series' own MASE (the M4/M5 convention): a
series is judged against its own scale, so a few big series do not decide the figure. ``mase`` is that mean;
``mase_pooled`` divides the MAE over every series by one scale over every series (seqfit's figure before).
A series whose in-sample seasonal-naive error is 0 (constant over the train split), or which has no train
rows to scale by, has no MASE of its own: it is left out of the mean and counted in ``mase_skipped``.
With one series the two figures are the same number, bit for bit (the same sums in the same order).
"""

from __future__ import annotations

import numpy as np

from seqfit.data.series import SeriesSplit

__all__ = ["seasonal_scales", "SeriesErrors", "PER_SERIES_MAX"]

SCALE_CHUNK = 1 << 16  # rows read at a time for the train split's seasonal-naive scale
PER_SERIES_MAX = 50  # above this many series `seqfit evaluate --json` leaves out the per-series breakdown


def seasonal_scales(split: SeriesSplit, columns: list[int], season: int) -> tuple[np.ndarray, np.ndarray]:
    """(pooled (T,), per series (S, T)): the in-sample MAE of the seasonal-naive forecast y[t - m] over
    ``split`` (original units), differences taken within each series, read a chunk at a time. A series of
    no more than m rows has no scale (NaN)."""
    m = max(1, season)
    total, count = np.zeros(len(columns)), 0
    own = np.full((split.num_series, len(columns)), np.nan)
    for i, (first, end) in enumerate(zip(split.offsets[:-1].tolist(), split.offsets[1:].tolist())):
        mine, n_mine = np.zeros(len(columns)), 0
        for start in range(first + m, end, SCALE_CHUNK):
            n = min(SCALE_CHUNK, end - start)
            part = split.read(start - m, n + m, normalize=False)[:, columns].astype(np.float64)  # (n + m, T)
            err = np.abs(part[m:] - part[:-m]).sum(0)
            total += err
            mine += err
            count += n
            n_mine += n
        if n_mine:
            own[i] = mine / n_mine
    return total / max(1, count), own


class SeriesErrors:
    """Summed errors of point forecasts (original units) per target column, over every window and per series."""

    def __init__(self, targets: int, num_series: int):
        self.abs, self.sq, self.smape, self.count = np.zeros(targets), np.zeros(targets), np.zeros(targets), 0
        self.series_abs = np.zeros((num_series, targets))
        self.series_count = np.zeros(num_series, dtype=np.int64)

    def add(self, pred: np.ndarray, y: np.ndarray, series: np.ndarray) -> None:
        """pred, y (N, h, T); series (N,) each window's series."""
        err = np.abs(pred - y)
        denom = np.abs(pred) + np.abs(y)
        self.abs += err.sum((0, 1))
        self.sq += (err ** 2).sum((0, 1))
        self.smape += np.where(denom > 0, 2 * err / np.where(denom > 0, denom, 1), 0).sum((0, 1))
        self.count += y.shape[0] * y.shape[1]
        np.add.at(self.series_abs, series, err.sum(1))  # (N, T) into (S, T)
        np.add.at(self.series_count, series, y.shape[1])

    def series_mase(self, scale: np.ndarray) -> np.ndarray:
        """(S,) each series' MASE, averaged over targets; NaN where it has no windows or no scale (0 or NaN)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            mae = self.series_abs / self.series_count[:, None]  # (S, T)
            ok = (scale > 0) & (self.series_count[:, None] > 0)  # NaN scales compare False
            return np.where(ok, mae / np.where(ok, scale, 1), np.nan).mean(1)

    def result(self, scale: np.ndarray, series_scale: np.ndarray) -> dict:
        """The figures; ``scale`` (T,) pooled, ``series_scale`` (S, T) each series' own."""
        n = max(1, self.count)
        mae = self.abs / n
        pooled = np.where(scale > 0, mae / np.where(scale > 0, scale, 1), np.inf)
        own = self.series_mase(series_scale)
        scored = self.series_count > 0
        kept = scored & np.isfinite(own)
        return {"mae": float(mae.mean()), "rmse": float(np.sqrt(self.sq.sum() / (n * len(scale)))),
                "smape": float(100 * self.smape.sum() / (n * len(scale))),
                "mase": float(own[kept].mean()) if kept.any() else None,
                "mase_pooled": float(pooled.mean()) if np.isfinite(pooled).all() else None,
                "mase_series": int(kept.sum()), "mase_skipped": int((scored & ~kept).sum())}
