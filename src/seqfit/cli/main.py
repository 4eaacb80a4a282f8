"""`seqfit` command line: one small function per subcommand; the work happens in the library."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from seqfit import __version__
from seqfit.cli.flags import config_options, pop_config_flags, resolve_config
from seqfit.errors import SeqfitError

__all__ = ["main", "cli"]


def say(text: str) -> None:
    """Human-readable output goes to stderr so that --json output on stdout stays clean."""
    click.echo(text, err=True)


def emit(result: dict, as_json: bool, human: str) -> None:
    if as_json:
        click.echo(json.dumps(result, indent=1, default=str))
    else:
        click.echo(human)


json_flag = click.option("--json", "as_json", is_flag=True, help="print the result as JSON on stdout")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="seqfit")
def cli() -> None:
    """Train RNN/LSTM/GRU models on data and models larger than your memory."""


@cli.command(epilog="""\b
Examples:
  seqfit prepare corpus.txt --out data/corpus
  seqfit prepare --train wiki/test.txt --valid wiki/valid.txt --out data/wiki
  seqfit prepare src/ --pattern '*.py' --level char --out data/py""")
@click.argument("inputs", nargs=-1)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="data directory to create")
@click.option("--train", "train_files", multiple=True, help="training file/folder (explicit splits)")
@click.option("--valid", "valid_files", multiple=True, help="validation file/folder")
@click.option("--test", "test_files", multiple=True, help="test file/folder")
@click.option("--level", type=click.Choice(["word", "char"]), default="word", show_default=True)
@click.option("--min-freq", type=int, default=1, show_default=True, help="drop tokens seen fewer times (they become <unk>)")
@click.option("--max-vocab", type=int, default=0, help="keep at most this many tokens, specials included (0: no limit)")
@click.option("--lowercase", is_flag=True, help="lowercase text before tokenizing")
@click.option("--valid-fraction", type=float, default=0.05, show_default=True, help="share of INPUTS held out for validation")
@click.option("--pattern", default="*", show_default=True, help="file name pattern inside folders")
@click.option("--encoding-errors", type=click.Choice(["strict", "replace", "ignore"]), default="strict", show_default=True)
@click.option("--overwrite", is_flag=True, help="replace an existing data directory (only once the new one is complete)")
@json_flag
def prepare(inputs, out, train_files, valid_files, test_files, level, min_freq, max_vocab, lowercase,
            valid_fraction, pattern, encoding_errors, overwrite, as_json) -> None:
    """Stream text files into a memory-mapped token store in bounded memory."""
    from seqfit.data.prepare import PrepareOptions, prepare_text

    meta = prepare_text(PrepareOptions(
        out=Path(out), inputs=tuple(inputs), train=tuple(train_files), valid=tuple(valid_files), test=tuple(test_files),
        level=level, min_freq=min_freq, max_vocab=max_vocab, lowercase=lowercase, valid_fraction=valid_fraction,
        pattern=pattern, encoding_errors=encoding_errors, overwrite=overwrite))
    r = meta["report"]
    splits = ", ".join(f"{name} {info['tokens']:,}" for name, info in meta["splits"].items() if info["tokens"])
    emit({"out": out, **r, "splits": {k: v["tokens"] for k, v in meta["splits"].items()}, "dtype": meta["dtype"]}, as_json,
         f"{out}: {r['tokens']:,} tokens ({splits}); {r['types_seen']:,} types seen, vocabulary {r['vocab_size']:,} "
         f"({meta['dtype']}); coverage {r['coverage']:.2%}, unknown {r['unknown_rate']:.2%}; {r['seconds']:.1f}s")


@cli.command(epilog="""\b
Examples:
  seqfit train data/wiki --out runs/wiki --layers 2 --hidden 200 --dropout 0.2 --lr 20 --clip 0.25
  seqfit train data/wiki --out runs/wiki --max-steps 500 --precision bf16
  seqfit train data/wiki --out runs/wiki --resume --max-steps 1000
  seqfit train data/wiki --out runs/wiki --config wiki.toml""")
@click.argument("data_dir", type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=False), help="run directory (checkpoints, metrics, config)")
@click.option("--resume", is_flag=True, help="continue the run in --out from its checkpoint")
@config_options
@json_flag
def train(data_dir, out, resume, as_json, **kwargs) -> None:
    """Train a model on a prepared data directory."""
    from seqfit.config import from_dict, load_toml
    from seqfit.train.loop import train as run_training

    config_path, given = pop_config_flags(kwargs)
    base = None
    if resume:
        saved = Path(out) / "config.toml"
        if not saved.is_file():
            raise SeqfitError(f"no run to resume in {out} (no config.toml)")
        base = from_dict(load_toml(saved))  # the resumed run keeps its config; flags given now override
    cfg = resolve_config(config_path, given, base)
    summary = run_training(cfg, Path(data_dir), Path(out), resume=resume, echo=say)
    ppl = summary["valid_ppl"]
    emit(summary, as_json,
         f"step {summary['step']}: valid perplexity {ppl:.2f}" if ppl is not None else f"step {summary['step']} (no valid split)")
    if not as_json:
        from seqfit.measure.memory import format_bytes

        click.echo(f"peak memory: {format_bytes(summary['peak_rss'])} resident ({format_bytes(summary['peak_anon'])} anonymous); "
                   f"{summary['tokens_per_s'] or 0:,.0f} tokens/s")


@cli.command(epilog="""\b
Examples:
  seqfit evaluate runs/wiki
  seqfit evaluate runs/wiki --split test --json""")
@click.argument("run_dir", type=click.Path())
@click.option("--split", type=click.Choice(["valid", "test", "train"]), default="valid", show_default=True)
@click.option("--data", "data_dir", default=None, help="data directory (default: the one the run trained on)")
@click.option("--batch-size", type=int, default=10, show_default=True)
@json_flag
def evaluate(run_dir, split, data_dir, batch_size, as_json) -> None:
    """Perplexity of a trained language model on a split."""
    from seqfit.train.evaluate import evaluate_lm
    from seqfit.train.run_dir import load_run

    run = load_run(run_dir, data_dir=data_dir)
    result = evaluate_lm(run.model, run.store.split(split), batch_size=batch_size, bptt=run.plan["bptt"],
                         device=run.device, precision=run.precision)
    emit({"split": split, **result}, as_json, f"{split}: loss {result['loss']:.4f}, perplexity {result['ppl']:.2f} "
                                              f"over {result['tokens']:,} tokens")


@cli.command(epilog="""\b
Examples:
  seqfit generate runs/wiki --prompt "The game" --tokens 50
  seqfit generate runs/py --prompt "def " --tokens 300 --temperature 0.8 --seed 3""")
@click.argument("run_dir", type=click.Path())
@click.option("--prompt", default="", help="text to continue")
@click.option("--tokens", type=int, default=100, show_default=True, help="tokens to sample")
@click.option("--temperature", type=float, default=1.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--data", "data_dir", default=None, help="data directory (default: the one the run trained on)")
@json_flag
def generate(run_dir, prompt, tokens, temperature, seed, data_dir, as_json) -> None:
    """Sample text from a trained language model."""
    from seqfit.train.generate import generate as sample
    from seqfit.train.run_dir import load_run

    run = load_run(run_dir, data_dir=data_dir)
    text = sample(run.model, run.store.vocab, prompt, tokens=tokens, temperature=temperature, seed=seed, device=run.device)
    emit({"prompt": prompt, "text": text}, as_json, text)


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="seqfit", standalone_mode=False)
    except SeqfitError as e:
        click.echo(f"seqfit: error: {e}", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("seqfit: aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
