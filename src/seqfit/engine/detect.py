"""Anomalies of a series split, scored against a trained forecaster's one-step-ahead forecasts (`seqfit detect`).

Each scored row's error is set against the model's own error scale: median m and MAD of its one-step errors
on a calibration split (the valid split, else the train split's tail, else the scored split itself), per
series or one for all; score = |error - m| / (1.4826 x MAD). A quantile model's errors are first divided by
each point's predicted spread. A flagged point is replaced by its forecast in the windows after it
(forecast_output.clean_rescore), so a spike is not flagged twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from seqfit.data.series import SeriesStore
from seqfit.engine.forecast_output import clean_rescore, context_split, one_step, point_and_sigma, series_scales
from seqfit.errors import SeqfitError

__all__ = ["Detection", "detect_anomalies", "CALIBRATION_ROWS", "SERIES_CALIBRATION_ROWS"]

CALIBRATION_ROWS = 5000  # without a valid split: rows of the train split's tail (shared by its series) set the scale
SERIES_CALIBRATION_ROWS = 100  # per-series scales: at least this many train rows of each series (a scale of its own)


@dataclass
class Detection:
    table: dict  # the columns `seqfit detect` writes, one row per scored point (and target)
    series: int  # series in the split
    scored: int  # points scored
    anomalies: int  # points flagged
    scale_from: str  # where the error scale came from ("valid split", ...)
    scored_series: int  # series with a scored point
    series_own_scale: int  # of those, the series judged against their own scale
    context_series: int  # series whose first rows were forecast from their earlier rows


def _calibration(run, store: SeriesStore, name: str, *, per_series: bool, context: bool):
    """(calibration split, its series, values and forecasts, where they came from), or None: nothing to calibrate on."""
    valid = store.split("valid") if name != "valid" and store.has_split("valid") else None
    if valid is not None and context:
        valid = context_split(run, store, valid)[0]
    if valid is not None:
        series, values, pred = one_step(run, valid)[1:]
        if len(values):
            return valid, series, values, pred, "valid split"
    train = store.split("train")
    share = -(-CALIBRATION_ROWS // train.num_series)
    series, values, pred = one_step(run, train, tail=max(share, SERIES_CALIBRATION_ROWS) if per_series else share)[1:]
    if len(values):
        return train, series, values, pred, "train split's tail"
    return None


def detect_anomalies(run, store: SeriesStore, name: str, *, threshold: float, per_series: bool = True,
                     context: bool = True) -> Detection:
    """Score every row of split ``name`` of ``store`` (module docstring); flag scores above ``threshold``."""
    task = run.task
    base = store.split(name)
    split, borrowed = context_split(run, store, base) if context else (base, 0)
    rows, series, values, pred = one_step(run, split)
    if not len(rows):
        raise SeqfitError(f"the {name} split has {len(base)} rows, no more than --lookback {task.lookback}"
                          + (" in each series" if base.num_series > 1 else "") + ": nothing to score")
    calibration = _calibration(run, store, name, per_series=per_series, context=context)
    cal, cs, cv, cp, calib = calibration or (split, series, values, pred, f"{name} split itself")
    quantile = bool(task.quantiles)

    def raw_score(v, p):  # the error, in units of the point's own predicted spread for a quantile model
        point, sigma = point_and_sigma(task, p)
        err = v - point
        return err / np.maximum(sigma, 1e-9 * np.maximum(1.0, np.abs(v))) if quantile else err

    centres, scales, own = series_scales(raw_score(cv, cp), cs, cal.positions_in(base), base.num_series,
                                         per_series=per_series)
    bounds = np.searchsorted(series, np.arange(split.num_series + 1))  # each series' points: one contiguous run
    cleaned = []
    for s, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        if a < b:
            score_of = lambda v, p, s=s: np.abs(raw_score(v, p) - centres[s]) / scales[s]
            cleaned.append(clean_rescore(run, split, rows[a:b], values[a:b], pred[a:b], score_of, threshold))
    pred, score = np.concatenate([c[0] for c in cleaned]), np.concatenate([c[1] for c in cleaned])
    flagged = score > threshold
    at = split.split_rows(rows) if split is not base else rows  # rows of the split itself
    times = store.times(name)
    when = times[at] if times is not None else at - base.offsets[series]
    T = len(task.targets)
    table = {"series": np.repeat(np.asarray(base.names, dtype=str)[series], T)}
    if T > 1:
        table["target"] = np.tile(np.asarray(task.targets, dtype=str), len(rows))
    table |= {"time": np.repeat(when, T), "value": values.ravel(), "forecast": task._point(pred).ravel(),
              "score": score.ravel(), "anomaly": flagged.ravel().astype(np.int64)}
    scored_series = np.unique(series)
    return Detection(table=table, series=base.num_series, scored=int(score.size), anomalies=int(flagged.sum()), scale_from=calib,
                     scored_series=int(len(scored_series)), series_own_scale=int(own[scored_series].sum()),
                     context_series=borrowed)
