"""`seqfit plan`: predicted memory of a training config, part by part, and the fastest plan under a budget."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from seqfit.cli.common import emit, json_flag, say
from seqfit.cli.flags import config_options, pop_config_flags, resolve_config
from seqfit.errors import SeqfitError

__all__ = ["plan"]


@click.command(epilog="""\b
Examples:
  seqfit plan data/wiki --layers 2 --hidden 650 --batch-size 64 --bptt 70
  seqfit plan data/wiki --hidden 1024 --budget 4GB --effective-batch 128
  seqfit plan --vocab-size 250000 --hidden 1024 --budget 8GB --json
  seqfit plan data/wiki --budget 2GB --verify""")
@click.argument("data_dir", type=click.Path(), required=False)
@click.option("--vocab-size", type=int, default=None, help="plan without a data directory (what-if)")
@click.option("--verify", is_flag=True, help="run a few real steps of the plan in a child process and compare")
@click.option("--verify-steps", type=int, default=4, show_default=True, help="steps --verify runs")
@click.option("--calibrate/--no-calibrate", default=True, show_default=True,
              help="probe this machine once (cached) for the estimator's constants")
@config_options
@json_flag
def plan(data_dir, vocab_size, verify, verify_steps, calibrate, as_json, **kwargs) -> None:
    """Predict peak memory of a training config; with --budget, choose the fastest plan that fits."""
    from seqfit.measure.memory import parse_bytes
    from seqfit.memory.calibrate import load_constants
    from seqfit.memory.estimate import DataInfo
    from seqfit.memory.plan import data_info_for, estimate_for, plan_for_budget, requested_plan_for, score_plan

    if (data_dir is None) == (vocab_size is None):
        raise SeqfitError("give a data directory or --vocab-size N (one of them)")
    config_path, given = pop_config_flags(kwargs)
    cfg = resolve_config(config_path, given)
    if data_dir is None and cfg.model.task == "classify":
        raise SeqfitError("planning a classifier needs its data directory (sequence lengths decide the batch)")
    data = data_info_for(cfg, data_dir) if data_dir else DataInfo(vocab_size)
    requested = requested_plan_for(cfg, data)
    vocab = data.vocab_size
    consts = load_constants(requested["device"], [(cfg.model.cell, cfg.memory.precision)], calibrate_missing=calibrate,
                            echo=None if as_json else say)
    result: dict = {"task": cfg.model.task, "vocab_size": vocab, "constants": {"calibrated": consts.calibrated, "source": consts.source}}
    if cfg.memory.budget:
        try:
            budget = parse_bytes(cfg.memory.budget)
        except ValueError as e:
            raise SeqfitError(str(e)) from None
        choice = plan_for_budget(cfg, data, budget, consts, device=requested["device"])
        cfg, chosen, alternatives = choice.cfg, choice.plan, choice.alternatives
        result["budget_bytes"] = budget
    else:
        scored = score_plan(cfg, data, requested, consts)
        chosen, alternatives = {k: v for k, v in scored.items() if k != "_parts"}, []
    est = estimate_for(cfg, data, {k: chosen[k] for k in requested}, consts)
    chosen = chosen | {"predicted_peak_bytes": est["peak"]}
    result |= {"predicted_peak_bytes": est["peak"], "peak_phase": est["phase"], "parts": est["parts"],
               "sizes": est["sizes"], "phases": est["phases"], "plan": chosen, "alternatives": alternatives}
    if verify:
        result |= _verify(cfg, data_dir, data, verify_steps, est["peak"], say_progress=not as_json)
    emit(result, as_json, _human(result))


def _verify(cfg, data_dir, data, steps: int, predicted: int, say_progress: bool) -> dict:
    from seqfit.config import lm_bptt
    from seqfit.memory.plan import effective_batch
    from seqfit.memory.probe import measure_run
    from seqfit.memory.synthetic import write_synthetic_store

    if say_progress:
        say(f"verifying: {steps} real training steps in a child process")
    with tempfile.TemporaryDirectory(prefix="seqfit-verify-") as tmp:
        if data_dir is None:  # what-if planning: a synthetic store of the same vocabulary
            tokens = max(100_000, 2 * effective_batch(cfg) * (lm_bptt(cfg.train) * (steps + 1) + 1))
            data_dir = write_synthetic_store(Path(tmp) / "data", data.vocab_size, tokens)
        measured = measure_run(cfg, data_dir, steps=steps)
    steady = measured["step_seconds"][1:] or measured["step_seconds"]  # the first step warms up
    if cfg.model.task == "classify":  # the probe trains on the largest batches
        from seqfit.memory.estimate_classify import worst_batch

        tokens = worst_batch(measured["plan"], data)[2] * measured["plan"]["accumulate"]
    else:
        tokens = effective_batch(cfg) * lm_bptt(cfg.train)
    return {"measured_peak_bytes": measured["peak_bytes"], "measured_step_seconds": measured["step_seconds"],
            "measured_tokens_per_s": tokens / min(steady),
            "prediction_error": (predicted - measured["peak_bytes"]) / measured["peak_bytes"]}


def _human(r: dict) -> str:
    from seqfit.measure.memory import format_bytes
    from seqfit.memory.plan import describe_plan
    from seqfit.memory.plan_classify import describe_classify_plan

    classify = r["task"] == "classify"
    lines = [f"plan: {(describe_classify_plan if classify else describe_plan)(r['plan'])}"]
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
                  f"  {'micro x acc':>12} {'ckpt':>5} {'loss':>8} {'chunk':>6} {'peak':>11} {'tokens/s':>10}  fits"]
        for a in r["alternatives"]:
            loss, chunk = (a["mode"], "-") if classify else (a["loss"], a["loss_chunk"] or "-")
            lines.append(f"  {a['micro_batch']:>6} x {a['accumulate']:<3} {a['checkpoint_time'] or '-':>5} "
                         f"{loss:>8} {chunk:>6} {format_bytes(a['predicted_peak_bytes']):>11} "
                         f"{a['predicted_tokens_per_s']:>10,.0f}  {'yes' if a['fits'] else 'no'}")
    if not r["constants"]["calibrated"]:
        lines.append("\n(constants not calibrated on this machine: defaults from the development machine)")
    return "\n".join(lines)
