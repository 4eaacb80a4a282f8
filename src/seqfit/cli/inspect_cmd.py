"""`seqfit profile` and `seqfit report`: see where the memory (or, with --time, the time) goes."""

from __future__ import annotations

from pathlib import Path

import click

from seqfit.cli.common import emit, json_flag, say
from seqfit.cli.flags import config_options, pop_config_flags, resolve_config
from seqfit.errors import SeqfitError

__all__ = ["profile", "report"]


@click.command(epilog="""\b
Examples:
  seqfit profile data/wiki --steps 5 --hidden 650 --batch-size 64
  seqfit profile data/wiki --config run.toml --steps 3 --json --plot profile.png
  seqfit profile data/wiki --time --steps 5 --hidden 650 --batch-size 64   # seconds, page faults, % of ceiling""")
@click.argument("data_dir", type=click.Path())
@click.option("--steps", type=click.IntRange(min=1), default=5, show_default=True, help="training steps to measure")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None, help="write a memory timeline PNG")
@click.option("--time", "timed", is_flag=True,
              help="time each phase instead (wall, CPU user/system, page faults) and the step's FLOP/s against "
                   "this machine's measured matrix-product ceilings")
@click.option("--time-warmup", "warmup", type=click.IntRange(min=0), default=1, show_default=True,
              help="with --time: untimed steps first (kernel choice, first-touch page faults)")
@click.option("--recalibrate", is_flag=True, help="with --time: measure the ceilings again instead of using the cache")
@config_options
@json_flag
def profile(data_dir, steps, plot_path, timed, warmup, recalibrate, as_json, **kwargs) -> None:
    """Run a few training steps and measure memory per phase (data, forward, loss, backward, optimizer),
    or with --time where the time goes."""
    from seqfit.measure.plots import plot_memory_timeline
    from seqfit.engine.profile_run import profile_steps

    config_path, given = pop_config_flags(kwargs)
    cfg = resolve_config(config_path, given)
    if timed:
        if plot_path:
            raise click.UsageError("--plot draws the memory timeline; leave out --time")
        _profile_time(cfg, Path(data_dir), steps, warmup, recalibrate, as_json)
        return
    session, profiler = profile_steps(cfg, Path(data_dir), steps)
    base = profiler.baseline.cuda_allocated if profiler.cuda else profiler.baseline.anon
    predicted = _predicted_phases(cfg, Path(data_dir), session.plan, base)
    if plot_path:
        plot_memory_timeline(profiler.timeline, plot_path, spans=profiler.spans, title="seqfit profile")
        say(f"timeline: {plot_path}")
    emit({"plan": session.plan, **profiler.to_json(predicted)}, as_json, profiler.format_table(predicted))


def _profile_time(cfg, data_dir: Path, steps: int, warmup: int, recalibrate: bool, as_json: bool) -> None:
    from seqfit.engine.time_run import time_report, time_steps
    from seqfit.measure.ceilings import ceilings_now, load_ceilings
    from seqfit.measure.time_profile import format_time_report

    session, prof, stats = time_steps(cfg, data_dir, steps, warmup)
    ceilings = load_ceilings(session.device.type, refresh=recalibrate, echo=say)
    if not recalibrate:  # the run's path once more: a cache measured in a busy minute would flatter the run
        ceilings = ceilings_now(session.device.type, session.plan["precision"], ceilings)
    report = time_report(session, prof, stats, ceilings)
    emit(report, as_json, format_time_report(report))


def _predicted_phases(cfg, data_dir: Path, plan: dict, measured_base: int) -> dict[str, int]:
    """The planner's per-phase prediction for this run (cached or default constants: no probing here)."""
    from seqfit.memory.calibrate import load_constants
    from seqfit.memory.estimate import phase_predictions
    from seqfit.memory.plan import data_info_for, estimate_for

    consts = load_constants(plan["device"], [(cfg.model.cell, plan["precision"])], calibrate_missing=False)
    est = estimate_for(cfg, data_info_for(cfg, data_dir), plan, consts)
    return phase_predictions(est, measured_base)


@click.command(epilog="""\b
Examples:
  seqfit report runs/wiki
  seqfit report runs/wiki --format html
  seqfit report runs/sens --series store-3 --series store-7   # a forecast run: plot these series""")
@click.argument("run_dir", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["md", "html"]), default="md", show_default=True)
@click.option("--series", "series", multiple=True,
              help="forecast runs: a series (its --group-field value) to plot; repeat for more (default: the first 4)")
@click.option("--split", "split_name", default=None,
              help="forecast runs: the split whose end the forecasts start from (default test, else valid, else train)")
@json_flag
def report(run_dir, fmt, series, split_name, as_json) -> None:
    """Write a self-contained report of a run: config, plan, predicted vs measured memory, throughput, plots.

    \b
    A forecast run's report also plots, for a few series, the end of their history, the forecast of the
    --horizon rows after it and the outer quantiles' interval: the same forecasts `seqfit predict` writes,
    as RUN_DIR/plots/forecast-<series>.png."""
    from seqfit.measure.report import build_report

    extra, drawn = [], []
    if _task_of(Path(run_dir)) == "forecast":
        from seqfit.engine.forecast_report import forecast_plots

        drawn = forecast_plots(run_dir, series=tuple(series), split_name=split_name)
        extra = [(f"Forecast: {d['series']}", d["path"]) for d in drawn]
    elif series or split_name:
        raise SeqfitError("--series and --split apply to forecast runs only")
    path = build_report(Path(run_dir), fmt=fmt, extra_plots=extra)
    emit({"report": str(path), "forecast_plots": [str(d["path"]) for d in drawn]}, as_json, f"report: {path}")


def _task_of(run_dir: Path) -> str | None:
    """The run's [model] task from its config.toml (None without one: a report reads runs of any origin)."""
    import tomllib

    try:
        cfg = tomllib.loads((run_dir / "config.toml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    model = cfg.get("model")
    return model.get("task") if isinstance(model, dict) else None
