"""`seqfit train`, `seqfit evaluate`, `seqfit generate`."""

from __future__ import annotations

import os


import click

from seqfit.cli.common import emit, json_flag, say
from seqfit.cli.flags import config_options, flag_name, flat_options, pop_config_flags
from seqfit.cli.translate_cmd import decoding_from, decoding_options

__all__ = ["train", "evaluate", "generate"]


@click.command(epilog="""\b
Examples:
  seqfit train data/wiki --out runs/wiki --layers 2 --hidden 200 --dropout 0.2 --lr 20 --clip 0.25
  seqfit train data/wiki --out runs/wiki --max-steps 500 --precision bf16
  seqfit train data/wiki --out runs/wiki --resume --max-steps 1000
  seqfit train data/wiki --out runs/wiki --config wiki.toml
  seqfit train data/wiki --out runs/wiki --nproc 2               # data-parallel, 2 processes (torchrun)""")
@click.argument("data_dir", type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=False), help="run directory (checkpoints, metrics, config)")
@click.option("--resume", is_flag=True, help="continue the run in --out from its checkpoint")
@click.option("--profile", "profile", is_flag=True, help="measure memory per phase of every step; table at the end, RUN_DIR/profile.json")
@click.option("--tensorboard", is_flag=True, help="also log scalars to RUN_DIR/tensorboard (needs the tensorboard package)")
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="data-parallel processes on this machine (launched as torchrun does; --batch-size is per process)")
@config_options
@json_flag
def train(data_dir, out, resume, profile, tensorboard, nproc, as_json, **kwargs) -> None:
    """Train a model on a prepared data directory."""
    from seqfit.api import train as run_training
    from seqfit.engine.distributed import is_worker, launch

    config_path, given = pop_config_flags(kwargs)
    options = flat_options(given)
    if nproc > 1 and not is_worker():
        args = ["train", str(data_dir), "--out", str(out), *(["--resume"] if resume else []),
                *(["--profile"] if profile else []), *(["--tensorboard"] if tensorboard else []),
                *(["--config", str(config_path)] if config_path else []), *(["--json"] if as_json else []),
                *_flags(options)]
        raise SystemExit(launch(nproc, args))
    summary = run_training(data_dir, out, config=config_path, resume=resume, profile=profile, tensorboard=tensorboard,
                           echo=say, **options)
    if int(os.environ.get("RANK", "0")) != 0:
        return  # rank 0 reports for the group
    if summary.get("valid_exact_match") is not None:
        result = f"valid perplexity {summary['valid_ppl']:.2f}, exact match {summary['valid_exact_match']:.1%} (greedy)"
    elif summary.get("valid_ppl") is not None:
        result = f"valid perplexity {summary['valid_ppl']:.2f}"
    elif summary.get("valid_accuracy") is not None:
        result = f"valid accuracy {summary['valid_accuracy']:.2%}, macro-F1 {summary['valid_macro_f1']:.3f}"
    elif summary.get("valid_mae") is not None:
        result = f"valid loss {summary['valid_loss']:.4f}, MAE {summary['valid_mae']:.4g}"
    else:
        result = "no valid split"
    emit(summary, as_json, f"step {summary['step']}: {result}")
    if not as_json:
        from seqfit.measure.memory import format_bytes

        click.echo(f"peak memory: {format_bytes(summary['peak_rss'])} resident ({format_bytes(summary['peak_anon'])} anonymous); "
                   f"{summary['tokens_per_s'] or 0:,.0f} tokens/s")


def _flags(options: dict) -> list[str]:
    """Config options back as command-line flags (for the launched workers)."""
    out = []
    for key, value in options.items():
        name = flag_name(key)
        if isinstance(value, bool):
            out.append(name if value else f"--no-{name[2:]}")
        else:
            out += [name, str(value)]
    return out


@click.command(epilog="""\b
Examples:
  seqfit evaluate runs/wiki
  seqfit evaluate runs/wiki --split test --json
  seqfit evaluate runs/dates --split test --beam 5 --json     # seq2seq: bleu, chrf, exact_match""")
@click.argument("run_dir", type=click.Path())
@click.option("--split", type=click.Choice(["valid", "test", "train"]), default="valid", show_default=True)
@click.option("--data", "data_dir", default=None, help="data directory (default: the one the run trained on)")
@click.option("--batch-size", type=click.IntRange(min=0), default=0, help="batch size (default: LM 10 streams, classifier and forecaster the run's own)")
@decoding_options
@json_flag
def evaluate(run_dir, split, data_dir, batch_size, beam, length_penalty, max_ratio, as_json) -> None:
    """Perplexity of a language model, accuracy and macro-F1 of a classifier, a forecaster's rolling-origin
    backtest (MAE, RMSE, sMAPE, MASE against naive and seasonal-naive forecasts), or an encoder-decoder's
    perplexity, BLEU, chrF (sacrebleu) and exact match of its decodes, on a split."""
    from seqfit.engine.run_dir import load_run

    run = load_run(run_dir, data_dir=data_dir)
    extra = {"decoding": decoding_from(beam, length_penalty, max_ratio, batch_size)} if run.cfg.model.task == "seq2seq" else {}
    result, human = run.task.evaluate_split(run.model, split, run.precision, batch_size=batch_size, warn=say, **extra)
    emit({"split": split, "task": run.cfg.model.task, **result}, as_json, f"{split}: {human}")


@click.command(epilog="""\b
Examples:
  seqfit generate runs/wiki --prompt "The game" --tokens 50
  seqfit generate runs/py --prompt "def " --tokens 300 --temperature 0.8 --seed 3""")
@click.argument("run_dir", type=click.Path())
@click.option("--prompt", default="", help="text to continue")
@click.option("--tokens", type=click.IntRange(min=1), default=100, show_default=True, help="tokens to sample")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--data", "data_dir", default=None, help="data directory (default: the one the run trained on)")
@json_flag
def generate(run_dir, prompt, tokens, temperature, seed, data_dir, as_json) -> None:
    """Sample text from a trained language model."""
    from seqfit.data.subword import TOKENIZER_FILE
    from seqfit.engine.generate import generate as sample
    from seqfit.engine.run_dir import load_run

    run = load_run(run_dir, data_dir=data_dir, task="lm")
    subword = run.store.dir / TOKENIZER_FILE if run.store.vocab.level == "subword" else None
    text = sample(run.model, run.store.vocab, prompt, tokens=tokens, temperature=temperature, seed=seed,
                  device=run.device, subword=subword)
    emit({"prompt": prompt, "text": text}, as_json, text)
