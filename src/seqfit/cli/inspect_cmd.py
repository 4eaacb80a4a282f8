"""`seqfit profile` and `seqfit report`: see where the memory goes."""

from __future__ import annotations

from pathlib import Path

import click

from seqfit.cli.common import emit, json_flag, say
from seqfit.cli.flags import config_options, pop_config_flags, resolve_config

__all__ = ["profile", "report"]


@click.command(epilog="""\b
Examples:
  seqfit profile data/wiki --steps 5 --hidden 650 --batch-size 64
  seqfit profile data/wiki --config run.toml --steps 3 --json --plot profile.png""")
@click.argument("data_dir", type=click.Path())
@click.option("--steps", type=click.IntRange(min=1), default=5, show_default=True, help="training steps to measure")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None, help="write a memory timeline PNG")
@config_options
@json_flag
def profile(data_dir, steps, plot_path, as_json, **kwargs) -> None:
    """Run a few training steps and measure memory per phase (data, forward, loss, backward, optimizer)."""
    from seqfit.measure.plots import plot_memory_timeline
    from seqfit.engine.profile_run import profile_steps

    config_path, given = pop_config_flags(kwargs)
    cfg = resolve_config(config_path, given)
    session, profiler = profile_steps(cfg, Path(data_dir), steps)
    base = profiler.baseline.cuda_allocated if profiler.cuda else profiler.baseline.anon
    predicted = _predicted_phases(cfg, Path(data_dir), session.plan, base)
    if plot_path:
        plot_memory_timeline(profiler.timeline, plot_path, spans=profiler.spans, title="seqfit profile")
        say(f"timeline: {plot_path}")
    emit({"plan": session.plan, **profiler.to_json(predicted)}, as_json, profiler.format_table(predicted))


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
  seqfit report runs/wiki --format html""")
@click.argument("run_dir", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["md", "html"]), default="md", show_default=True)
@json_flag
def report(run_dir, fmt, as_json) -> None:
    """Write a self-contained report of a run: config, plan, predicted vs measured memory, throughput, plots."""
    from seqfit.measure.report import build_report

    path = build_report(Path(run_dir), fmt=fmt)
    emit({"report": str(path)}, as_json, f"report: {path}")
