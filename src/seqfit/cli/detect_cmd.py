"""`seqfit detect`: anomalies of a series, scored against a trained forecaster's one-step-ahead forecasts."""

from __future__ import annotations

from pathlib import Path

import click

from seqfit.cli.common import emit, json_flag
from seqfit.errors import SeqfitError

__all__ = ["detect"]


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
    from seqfit.engine.detect import detect_anomalies
    from seqfit.engine.forecast_output import default_split, open_series, write_table
    from seqfit.engine.run_dir import load_run

    if not Path(data).exists():
        raise SeqfitError(f"{data} does not exist")
    run = load_run(run_dir, data_dir=data_dir, device=device, task="forecast")
    store = open_series(run, data)
    name = default_split(store, split_name)
    found = detect_anomalies(run, store, name, threshold=threshold, per_series=scale_by == "series", context=context)
    write_table(Path(out), found.table)
    own, scored_series, borrowed = found.series_own_scale, found.scored_series, found.context_series
    result = {"out": str(out), "split": name, "series": found.series, "scored": found.scored,
              "anomalies": found.anomalies, "threshold": threshold, "scale_from": found.scale_from, "scale": scale_by,
              "series_own_scale": own, "series_global_scale": scored_series - own, "context_series": borrowed}
    how = (f"each series' own error scale ({own:,} of {scored_series:,} series; the rest the global one)"
           if scale_by == "series" else "one error scale")
    emit(result, as_json, f"{found.scored:,} points scored in the {name} split, {found.anomalies:,} anomalies flagged "
                          f"(score > {threshold:g}, {how} from the {found.scale_from}"
                          + (f"; {borrowed:,} series forecast from their earlier rows at the start" if borrowed else "")
                          + f"); written to {out}")
