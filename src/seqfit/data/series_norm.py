"""How forecast windows are normalised (--normalize): each window's rows are mapped with a (mean, scale) per
column, x_n = (x - mean) * scale, and its forecasts mapped back with the same, y = y_n / scale + mean.

    global   one mean and std per column: the train split's over every series (meta.json "stats")
    series   each series' own: its train split statistics (prepare writes them per split and series, one
             Welford pass); a series the train split lacks (a new one in another store at predict) uses its
             statistics in the split read, which at predict are its history. A store of one series (no
             --group-field) is the same series in every split.
    window   the window's lookback rows' own mean and std, computed on the fly; the horizon is mapped with
             the lookback's statistics (never its own, which would leak the future)

A std of 0 (a constant column, or a flat lookback) leaves the column unscaled. Memory is O(series x columns).
"""

from __future__ import annotations

import numpy as np

from seqfit.data.series import SeriesSplit
from seqfit.errors import SeqfitError

__all__ = ["NORMALIZE", "WindowNorm"]

NORMALIZE = ("global", "series", "window")


def _scale(std: np.ndarray) -> np.ndarray:
    return (1.0 / np.where(std > 0, std, 1.0)).astype(np.float32)


class WindowNorm:
    """(mean, scale) of windows of ``split``; ``reference`` is the run's train split (series mode's lookup)."""

    def __init__(self, mode: str, split: SeriesSplit, reference: SeriesSplit | None = None):
        if mode not in NORMALIZE:
            raise SeqfitError(f"--normalize must be one of {', '.join(NORMALIZE)}, got {mode!r}")
        self.mode, self.split = mode, split
        if mode == "series":
            self.means, self.scales = self._per_series(split, reference or split)  # (S, F) each

    @staticmethod
    def _per_series(split: SeriesSplit, ref: SeriesSplit) -> tuple[np.ndarray, np.ndarray]:
        own, known = split.series_stats, ref.series_stats
        if own is None or known is None:
            raise SeqfitError(f"--normalize series needs per-series statistics, which {split.dir} lacks (prepared "
                              "by an older seqfit): re-run `seqfit prepare`, or use --normalize global")
        mean, std = own[0].copy(), own[1].copy()  # (S, F): a series' own, where the train split lacks it
        at = split.positions_in(ref)
        hit = at >= 0
        mean[hit], std[hit] = known[0][at[hit]], known[1][at[hit]]
        return mean.astype(np.float32), _scale(std)

    def of(self, starts, raw: np.ndarray, lookback: int) -> tuple[np.ndarray, np.ndarray]:
        """(mean, scale), each (B, 1, F) float32, of windows starting at ``starts`` whose raw rows are ``raw``
        (B, >= lookback, F)."""
        if self.mode == "global":
            return self.split.mean[None, None], self.split.scale[None, None]
        if self.mode == "series":
            i = self.split.series_of(starts)  # (B,)
            return self.means[i][:, None], self.scales[i][:, None]
        past = raw[:, :lookback].astype(np.float64)  # (B, L, F)
        return past.mean(1, keepdims=True).astype(np.float32), _scale(past.std(1, keepdims=True))

    def apply(self, starts, raw: np.ndarray, lookback: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(normalised rows (B, n, F) float32, mean, scale) of raw windows (B, n, F)."""
        mean, scale = self.of(starts, raw, lookback)
        return ((raw - mean) * scale).astype(np.float32), mean, scale
