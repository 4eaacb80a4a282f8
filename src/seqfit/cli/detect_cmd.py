"""`seqfit detect`: anomalies of a series, scored against a trained forecaster's one-step-ahead forecasts."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from seqfit.cli.common import emit, json_flag
from seqfit.errors import SeqfitError

__all__ = ["detect"]

CALIBRATION_ROWS = 5000  # rows of the train split's tail (shared by its series) that set the error scale without a valid split
SERIES_CALIBRATION_ROWS = 100  # --scale series: at least this many train rows of each series (a scale of its own)


@click.command(epilog="""\b
Examples:
  seqfit detect runs/sens data/sens --out anomalies.csv              # the test split (else valid, else train)
  seqfit detect runs/sens data/sens --split valid --threshold 5 --out a.parquet --json
  seqfit detect runs/sens data/sens --scale global --no-context --out a.csv   # one scale; tails from row L on""")
@click.argument("run_dir", type=click.Path())
@click.argument("data", type=click.Path())
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="CSV to write, or Parquet (.parquet)")
@click.option("--split", "split_name", default=None, help="split of DATA to score (default: test, else valid, else train)")
@click.option("--threshold", type=click.FloatRange(min=0, min_open=True), default=4.0, show_default=True,
              help="flag points whose robust z-score exceeds this")
@click.option("--scale", "scale_by", type=click.Choice(["series", "global"]), default="series", show_default=True,
              help="error scale: each series' own (global for series with under 30 calibration points), or one")
@click.option("--context/--no-context", default=True, show_default=True,
              help="forecast a tail's first --lookback rows from the same series' earlier rows (earlier splits)")
@click.option("--data", "data_dir", default=None, help="training data directory (default: the one the run trained on)")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@json_flag
def detect(run_dir, data, out, split_name, threshold, scale_by, context, data_dir, device, as_json) -> None:
    """Flag anomalies in a series with a trained forecaster (--task forecast).

    \b
    Each row t of each series of the split is forecast one step ahead from the --lookback rows before it:
    with --context (the default) a tail's first rows borrow those from the same series' earlier rows (the
    splits before it in DATA, train < valid < test, then the run's own data when DATA is another store; by
    --group-field name; where both have --time-field values, only history that ends before the tail), so
    every row is scored; a series without history, or --no-context, is scored from its row --lookback on.
    score = |error - m| / (1.4826 x MAD): the error against the model's own error scale, m and MAD the
    median and median absolute deviation of its one-step errors on DATA's valid split (else the train
    split's tail: 5,000 rows shared among its series, at least 100 of each with --scale series). --scale
    series (the default) takes m and MAD of each series' own errors there, so a quiet series and a noisy
    one are each judged against their own noise; a series with fewer than 30 of them falls back to the
    scale of every series' errors (--scale global: that one scale for all). A quantile model first divides
    each error by the point's own predicted spread, sigma = (q_hi - q_lo) / (z(q_hi) - z(q_lo)) of its
    outer quantiles, then scales the same way (so a band too narrow or too wide everywhere is corrected).
    anomaly = score > --threshold (default 4: about 1 in 16,000 normal points). Writes one row per scored
    point (and target): series (its --group-field value; a store of one series: the split's name, as predict
    writes), then target (the column, only when the run has several), time (the --time-field's value, else
    the row index in the series' part of the split), value, forecast, score, anomaly (0/1). A flagged point
    is replaced by its forecast in the windows after it, so a spike is not flagged twice; two flags in a row
    in one direction count as a lasting change (the real values stand)."""
    from seqfit.engine.forecast_output import (clean_rescore, context_split, default_split, one_step, open_series,
                                               point_and_sigma, series_scales, write_table)
    from seqfit.engine.run_dir import load_run

    if not Path(data).exists():
        raise SeqfitError(f"{data} does not exist")
    run = load_run(run_dir, data_dir=data_dir, device=device, task="forecast")
    task = run.task
    store = open_series(run, data)
    name = default_split(store, split_name)
    base = store.split(name)
    split, borrowed = context_split(run, store, base) if context else (base, 0)
    rows, series, values, pred = one_step(run, split)
    if not len(rows):
        raise SeqfitError(f"the {name} split has {len(base)} rows, no more than --lookback {task.lookback}"
                          + (" in each series" if base.num_series > 1 else "") + ": nothing to score")
    quantile = bool(task.quantiles)
    valid = store.split("valid") if name != "valid" and store.has_split("valid") else None
    if valid is not None and context:
        valid = context_split(run, store, valid)[0]
    cal = valid
    cs, cv, cp = one_step(run, valid)[1:] if valid is not None else (None, [], None)
    calib = "valid split"
    if not len(cv):
        cal = store.split("train")
        share = -(-CALIBRATION_ROWS // cal.num_series)
        cs, cv, cp = one_step(run, cal, tail=max(share, SERIES_CALIBRATION_ROWS) if scale_by == "series" else share)[1:]
        calib = "train split's tail"
        if not len(cv):
            cal, cs, cv, cp, calib = split, series, values, pred, f"{name} split itself"

    def raw_score(v, p):  # the error, in units of the point's own predicted spread for a quantile model
        point, sigma = point_and_sigma(task, p)
        err = v - point
        return err / np.maximum(sigma, 1e-9 * np.maximum(1.0, np.abs(v))) if quantile else err

    centres, scales, own = series_scales(raw_score(cv, cp), cs, cal.positions_in(base),
                                         base.num_series, per_series=scale_by == "series")
    bounds = np.searchsorted(series, np.arange(split.num_series + 1))  # each series' points: one contiguous run
    cleaned = []
    for s, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        if a < b:
            score_of = lambda v, p, s=s: np.abs(raw_score(v, p) - centres[s]) / scales[s]
            cleaned.append(clean_rescore(run, split, rows[a:b], values[a:b], pred[a:b], score_of, threshold))
    pred, score = np.concatenate([c[0] for c in cleaned]), np.concatenate([c[1] for c in cleaned])
    point = task._point(pred)
    flagged = score > threshold
    at = split.split_rows(rows) if split is not base else rows  # rows of the split itself
    times = store.times(name)
    when = times[at] if times is not None else at - base.offsets[series]
    T = len(task.targets)
    table = {"series": np.repeat(np.asarray(base.names, dtype=str)[series], T)}
    if T > 1:
        table["target"] = np.tile(np.asarray(task.targets, dtype=str), len(rows))
    table |= {"time": np.repeat(when, T), "value": values.ravel(), "forecast": point.ravel(), "score": score.ravel(),
              "anomaly": flagged.ravel().astype(np.int64)}
    write_table(Path(out), table)
    scored_series = int(len(np.unique(series)))
    by_own = int(own[np.unique(series)].sum())
    result = {"out": str(out), "split": name, "series": base.num_series, "scored": int(score.size),
              "anomalies": int(flagged.sum()), "threshold": threshold, "scale_from": calib, "scale": scale_by,
              "series_own_scale": by_own, "series_global_scale": scored_series - by_own,
              "context_series": borrowed}
    how = (f"each series' own error scale ({by_own:,} of {scored_series:,} series; the rest the global one)"
           if scale_by == "series" else "one error scale")
    emit(result, as_json, f"{score.size:,} points scored in the {name} split, {int(flagged.sum()):,} anomalies flagged "
                          f"(score > {threshold:g}, {how} from the {calib}"
                          + (f"; {borrowed:,} series forecast from their earlier rows at the start" if borrowed else "")
                          + f"); written to {out}")
