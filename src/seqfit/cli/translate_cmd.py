"""`seqfit translate`: decode one source per line with a trained encoder-decoder, output in input order."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import Iterator

import click

from seqfit.atomic import atomic_path
from seqfit.cli.common import say
from seqfit.errors import SeqfitError

__all__ = ["translate", "decoding_options", "decoding_from"]


def decoding_options(command):
    """--beam, --length-penalty, --max-ratio: how `translate` and `evaluate` decode an encoder-decoder."""
    for option in reversed([
        click.option("--beam", type=click.IntRange(min=1), default=5, show_default=True,
                     help="seq2seq: beam size (1: greedy decoding)"),
        click.option("--length-penalty", type=click.FloatRange(min=0), default=1.0, show_default=True,
                     help="seq2seq: GNMT length normalisation alpha (0: raw log-probability)"),
        click.option("--max-ratio", type=click.FloatRange(min=0, min_open=True), default=2.0, show_default=True,
                     help="seq2seq: at most max-ratio x source length + 10 target tokens"),
    ]):
        command = option(command)
    return command


def decoding_from(beam: int, length_penalty: float, max_ratio: float, batch_size: int = 0):
    from seqfit.engine.seq2seq import Decoding

    return Decoding(beam=beam, length_penalty=length_penalty, max_ratio=max_ratio, batch_size=batch_size or 64)


def _lines(path: Path) -> Iterator[str]:
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                yield line.rstrip("\n").rstrip("\r")
    except UnicodeDecodeError as e:
        raise SeqfitError(f"{path} is not UTF-8 text ({e.reason})") from None
    except OSError as e:
        raise SeqfitError(f"cannot read {path}: {e.strerror}") from None


@click.command(epilog="""\b
Examples:
  seqfit translate runs/dates dates.txt                       # to stdout
  seqfit translate runs/dates dates.txt --out iso.txt --beam 1""")
@click.argument("run_dir", type=click.Path())
@click.argument("input_path", metavar="INPUT", type=click.Path(dir_okay=False))
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="file to write (default: stdout)")
@decoding_options
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True, help="sentences decoded together")
@click.option("--data", "data_dir", default=None, help="training data directory (default: the one the run trained on)")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
def translate(run_dir, input_path, out, beam, length_penalty, max_ratio, batch_size, data_dir, device) -> None:
    """Decode INPUT (UTF-8 text, one source per line) with a trained encoder-decoder (--task seq2seq).

    \b
    Lines are tokenized as the training data was, read a block at a time and decoded in batches of similar
    length; the output has one line per input line, in order (an empty line stays empty)."""
    from seqfit.api import translate as decode_lines

    path = Path(input_path)
    if not path.is_file():
        raise SeqfitError(f"{path} is not a file")
    lines = decode_lines(run_dir, _lines(path), beam=beam,
                         length_penalty=length_penalty, max_ratio=max_ratio, batch_size=batch_size,
                         data_dir=data_dir, device=device)
    first = next(lines, None)  # loads the run (and fails on a wrong one) before anything is written
    lines = itertools.chain([] if first is None else [first], lines)
    count = 0
    if out is None:
        for text in lines:
            sys.stdout.write(text + "\n")
            count += 1
        sys.stdout.flush()
        return
    with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8") as f:  # the old file stays until all is done
        for text in lines:
            f.write(text + "\n")
            count += 1
    say(f"{count:,} lines decoded -> {out}")
