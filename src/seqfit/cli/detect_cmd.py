"""`seqfit detect`: anomalies of a series, scored against a trained forecaster's one-step-ahead forecasts."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from seqfit.cli.common import emit, json_flag
from seqfit.errors import SeqfitError

__all__ = ["detect"]

CALIBRATION_ROWS = 5000  # rows of the train split's tail (shared by its series) that set the error scale without a valid split


@click.command(epilog="""\b
Examples:
  seqfit detect runs/sens data/sens --out anomalies.csv              # the test split (else valid, else train)
  seqfit detect runs/sens data/sens --split valid --threshold 5 --out a.parquet --json""")
@click.argument("run_dir", type=click.Path())
@click.argument("data", type=click.Path())
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="CSV to write, or Parquet (.parquet)")
@click.option("--split", "split_name", default=None, help="split of DATA to score (default: test, else valid, else train)")
@click.option("--threshold", type=click.FloatRange(min=0, min_open=True), default=4.0, show_default=True,
              help="flag points whose robust z-score exceeds this")
@click.option("--data", "data_dir", default=None, help="training data directory (default: the one the run trained on)")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@json_flag
def detect(run_dir, data, out, split_name, threshold, data_dir, device, as_json) -> None:
    """Flag anomalies in a series with a trained forecaster (--task forecast).

    \b
    Each row t of each series of the split, from its row --lookback on, is forecast one step ahead from the
    --lookback rows before it. score = |error - m| / (1.4826 x MAD): the error against the model's own error
    scale, m and MAD the median and median absolute deviation of its one-step errors on DATA's valid split
    (else the last 5,000 rows of the train split, shared among its series). A quantile model first divides each error by the point's own predicted
    spread, sigma = (q_hi - q_lo) / (z(q_hi) - z(q_lo)) of its outer quantiles, then scales the same way
    (so a band too narrow or too wide everywhere is corrected). anomaly = score > --threshold
    (default 4: about 1 in 16,000 normal points). Writes one row per scored point (and target): series (its
    --group-field value; a store of one series: the split's name, as predict writes), then target (the
    column, only when the run has several), time (the --time-field's value, else the row index in the
    series' part of the split), value, forecast, score, anomaly (0/1). A flagged point is replaced by its forecast in the windows after it, so a spike is
    not flagged twice; two flags in a row in one direction count as a lasting change (the real values stand)."""
    from seqfit.engine.forecast_output import (clean_rescore, default_split, one_step, open_series, point_and_sigma,
                                               robust_scale, write_table)
    from seqfit.engine.run_dir import load_run

    if not Path(data).exists():
        raise SeqfitError(f"{data} does not exist")
    run = load_run(run_dir, data_dir=data_dir, device=device, task="forecast")
    task = run.task
    store = open_series(run, data)
    name = default_split(store, split_name)
    split = store.split(name)
    rows, series, values, pred = one_step(run, split)
    if not len(rows):
        raise SeqfitError(f"the {name} split has {len(split)} rows, no more than --lookback {task.lookback}"
                          + (" in each series" if split.num_series > 1 else "") + ": nothing to score")
    quantile = bool(task.quantiles)
    valid = store.split("valid") if name != "valid" and store.has_split("valid") else None
    _, _, cv, cp = one_step(run, valid) if valid is not None else (None, None, [], None)
    calib = "valid split"
    if not len(cv):
        train = store.split("train")
        _, _, cv, cp = one_step(run, train, tail=-(-CALIBRATION_ROWS // train.num_series))
        calib = "train split's tail"
        if not len(cv):
            cv, cp, calib = values, pred, f"{name} split itself"

    def raw_score(v, p):  # the error, in units of the point's own predicted spread for a quantile model
        point, sigma = point_and_sigma(task, p)
        err = v - point
        return err / np.maximum(sigma, 1e-9 * np.maximum(1.0, np.abs(v))) if quantile else err

    centre, scale = robust_scale(raw_score(cv, cp))

    def score_of(v, p):
        return np.abs(raw_score(v, p) - centre) / scale
    bounds = np.searchsorted(series, np.arange(split.num_series + 1))  # each series' points: one contiguous run
    cleaned = [clean_rescore(run, split, rows[a:b], values[a:b], pred[a:b], score_of, threshold)
               for a, b in zip(bounds[:-1], bounds[1:]) if a < b]
    pred, score = np.concatenate([c[0] for c in cleaned]), np.concatenate([c[1] for c in cleaned])
    point = task._point(pred)
    flagged = score > threshold
    times = store.times(name)
    when = times[rows] if times is not None else rows - split.offsets[series]
    T = len(task.targets)
    table = {"series": np.repeat(np.asarray(split.names, dtype=str)[series], T)}
    if T > 1:
        table["target"] = np.tile(np.asarray(task.targets, dtype=str), len(rows))
    table |= {"time": np.repeat(when, T), "value": values.ravel(), "forecast": point.ravel(), "score": score.ravel(),
              "anomaly": flagged.ravel().astype(np.int64)}
    write_table(Path(out), table)
    result = {"out": str(out), "split": name, "series": split.num_series, "scored": int(score.size), "anomalies": int(flagged.sum()),
              "threshold": threshold, "scale_from": calib}
    emit(result, as_json, f"{score.size:,} points scored in the {name} split, {int(flagged.sum()):,} anomalies flagged "
                          f"(score > {threshold:g}, error scale from the {calib}); written to {out}")
