"""`seqfit plan`: predicted memory of a training config, part by part, and the fastest plan under a budget."""

from __future__ import annotations

import click

from seqfit.cli.common import emit, json_flag, say
from seqfit.cli.flags import config_options, flat_options, pop_config_flags

__all__ = ["plan"]


@click.command(epilog="""\b
Examples:
  seqfit plan data/wiki --layers 2 --hidden 650 --batch-size 64 --bptt 70
  seqfit plan data/wiki --hidden 1024 --budget 4GB --effective-batch 128
  seqfit plan --vocab-size 250000 --hidden 1024 --budget 8GB --json
  seqfit plan data/wiki --budget 2GB --verify""")
@click.argument("data_dir", type=click.Path(), required=False)
@click.option("--vocab-size", type=click.IntRange(min=4), default=None, help="plan without a data directory (what-if)")
@click.option("--verify", is_flag=True, help="run a few real steps of the plan in a child process and compare")
@click.option("--verify-steps", type=click.IntRange(min=1), default=4, show_default=True, help="steps --verify runs")
@click.option("--calibrate/--no-calibrate", default=True, show_default=True,
              help="probe this machine once (cached) for the estimator's constants")
@config_options
@json_flag
def plan(data_dir, vocab_size, verify, verify_steps, calibrate, as_json, **kwargs) -> None:
    """Predict peak memory of a training config; with --budget, choose the fastest plan that fits."""
    from seqfit.api import plan as plan_run

    config_path, given = pop_config_flags(kwargs)
    result = plan_run(data_dir, vocab_size=vocab_size, config=config_path, verify=verify, verify_steps=verify_steps,
                      calibrate=calibrate, echo=None if as_json else say, **flat_options(given))
    emit(result, as_json, _human(result))


def _human(r: dict) -> str:
    from seqfit.measure.memory import format_bytes
    from seqfit.memory.task_planners import PLANNERS

    lines = [f"plan: {PLANNERS[r['task']].describe(r['plan'])}"]
    if "budget_bytes" in r:
        lines.append(f"  chosen for --budget {format_bytes(r['budget_bytes'])}: {r['plan']['reason']}")
    lines.append("")
    lines.append(f"{'part':<18}{'at the peak':>14}{'full size':>14}")
    for part, value in r["parts"].items():
        full = r["sizes"].get(part)
        size = format_bytes(full) if full is not None else ""
        lines.append(f"{part.replace('_', ' '):<18}{format_bytes(value):>14}{size:>14}")
    lines.append(f"{'predicted peak':<18}{format_bytes(r['predicted_peak_bytes']):>14}  (during {r['peak_phase']}; "
                 f"{r['plan']['predicted_tokens_per_s']:,.0f} tokens/s predicted)")
    if "measured_peak_bytes" in r:
        lines.append(f"{'measured peak':<18}{format_bytes(r['measured_peak_bytes']):>14}  "
                     f"({r['prediction_error']:+.1%} predicted vs measured; "
                     f"{r['measured_tokens_per_s']:,.0f} tokens/s)")
    if r["alternatives"]:
        lines += ["", "alternatives (fastest first):",
                  f"  {'micro x acc':>12} {'ckpt':>5} {'loss':>8} {'chunk':>6} {'spares':>6} {'peak':>11} {'tokens/s':>10}"
                  "  fits"]
        for a in r["alternatives"]:
            # a plan with a vocabulary head (LM, seq2seq) shows its loss; a classifier's or forecaster's its BPTT mode
            loss, chunk = (a["loss"], a["loss_chunk"] or "-") if "loss_chunk" in a else (a["mode"], "-")
            # a CPU language model's plan comes with and without spare gradients (nn/spare_grads.py)
            spares = {True: "yes", False: "no"}.get(a.get("spare_grads"), "-")
            lines.append(f"  {a['micro_batch']:>6} x {a['accumulate']:<3} {a['checkpoint_time'] or '-':>5} "
                         f"{loss:>8} {chunk:>6} {spares:>6} {format_bytes(a['predicted_peak_bytes']):>11} "
                         f"{a['predicted_tokens_per_s']:>10,.0f}  {'yes' if a['fits'] else 'no'}")
    if not r["constants"]["calibrated"]:
        lines.append("\n(constants not calibrated on this machine: defaults from the development machine)")
    return "\n".join(lines)
