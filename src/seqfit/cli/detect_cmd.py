"""`seqfit detect`: anomalies of a series, scored against a trained forecaster's one-step-ahead forecasts."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from seqfit.cli.common import emit, json_flag
from seqfit.errors import SeqfitError

__all__ = ["detect"]

CALIBRATION_ROWS = 5000  # rows of the train split's tail that set the error scale when DATA has no valid split


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
    Each row t >= --lookback of the split is forecast one step ahead from the --lookback rows before it.
    score = |error - m| / (1.4826 x MAD): the error against the model's own error scale, m and MAD the
    median and median absolute deviation of its one-step errors on DATA's valid split (else the last
    5,000 rows of the train split). A quantile model first divides each error by the point's own predicted
    spread, sigma = (q_hi - q_lo) / (z(q_hi) - z(q_lo)) of its outer quantiles, then scales the same way
    (so a band too narrow or too wide everywhere is corrected). anomaly = score > --threshold
    (default 4: about 1 in 16,000 normal points). Writes one row per scored point and target: series (the
    target column), time (the --time-field's value, else the row index in the split), value, forecast,
    score, anomaly (0/1). A flagged point is replaced by its forecast in the windows after it, so a spike is
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
    rows, values, pred = one_step(run, split)
    if not len(rows):
        raise SeqfitError(f"the {name} split has {len(split)} rows, no more than --lookback {task.lookback}: "
                          "nothing to score")
    quantile = bool(task.quantiles)
    if name != "valid" and store.has_split("valid") and len(store.split("valid")) > task.lookback:
        _, cv, cp = one_step(run, store.split("valid"))
        calib = "valid split"
    else:
        train = store.split("train")
        _, cv, cp = one_step(run, train, first=len(train) - CALIBRATION_ROWS)
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
    pred, score = clean_rescore(run, split, rows, values, pred, score_of, threshold)
    point = task._point(pred)
    flagged = score > threshold
    times = store.times(name)
    when = times[rows] if times is not None else rows
    T = len(task.targets)
    table = {"series": np.repeat(np.asarray(task.targets, dtype=str)[None], len(rows), 0).ravel(),
             "time": np.repeat(when, T), "value": values.ravel(), "forecast": point.ravel(), "score": score.ravel(),
             "anomaly": flagged.ravel().astype(np.int64)}
    write_table(Path(out), table)
    result = {"out": str(out), "split": name, "scored": int(score.size), "anomalies": int(flagged.sum()),
              "threshold": threshold, "scale_from": calib}
    emit(result, as_json, f"{score.size:,} points scored in the {name} split, {int(flagged.sum()):,} anomalies flagged "
                          f"(score > {threshold:g}, error scale from the {calib}); written to {out}")
