"""`seqfit prepare`: raw data -> a memory-mapped store."""

from __future__ import annotations

from pathlib import Path

import click

from seqfit.cli.common import emit, json_flag

__all__ = ["prepare"]


@click.command(epilog="""\b
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


