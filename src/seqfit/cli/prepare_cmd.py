"""`seqfit prepare`: raw data -> a memory-mapped store."""

from __future__ import annotations

from pathlib import Path

import click

from seqfit.cli.common import emit, json_flag
from seqfit.errors import SeqfitError

__all__ = ["prepare"]


def _size(ctx, param, value: str) -> int:
    from seqfit.measure.memory import parse_bytes
    try:
        return parse_bytes(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def _columns(ctx, param, value: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(c.strip() for v in value for c in v.split(",") if c.strip())


@click.command(epilog="""\b
Examples:
  seqfit prepare corpus.txt --out data/corpus
  seqfit prepare --train wiki/train.txt --valid wiki/valid.txt --out data/wiki --max-vocab 30000
  seqfit prepare src/ --pattern '*.py' --level char --out data/py
  seqfit prepare big/*.txt.gz --level subword --bpe-vocab 16000 --workers 2 --out data/big
  seqfit prepare reviews.jsonl --task classify --text-field review --label-field stars --out data/rev
  seqfit prepare reviews/ --task classify --out data/rev        # reviews/<class>/*.txt, one sample per file
  seqfit prepare pairs.jsonl --task seq2seq --text-field en --target-field de --out data/ende
  seqfit prepare ecg.jsonl --task classify --columns lead1,lead2 --label-field rhythm --out data/ecg  # list fields
  seqfit prepare sensors.parquet --task series --columns temp,load --nan ffill --dtype float16 --out data/sens
  seqfit prepare load.csv --task series --columns load --time-field timestamp --out data/load
  seqfit prepare stores.csv --task series --group-field store --columns sales,price --out data/stores  # many series
  seqfit prepare steps.csv --task classify --columns x,y,z --group-field id --label-field activity --out data/act
  seqfit prepare corpus.txt --embeddings glove.6B.100d.txt.gz --out data/corpus""")
@click.argument("inputs", nargs=-1)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="data directory to create")
@click.option("--train", "train_files", multiple=True, help="training file/folder (explicit splits)")
@click.option("--valid", "valid_files", multiple=True, help="validation file/folder")
@click.option("--test", "test_files", multiple=True, help="test file/folder")
@click.option("--task", type=click.Choice(["lm", "classify", "series", "seq2seq"]), default="lm", show_default=True,
              help="lm: token stream; classify: labelled sequences; series: numeric columns; seq2seq: source/target pairs")
@click.option("--format", "fmt", type=click.Choice(["auto", "text", "jsonl", "csv", "parquet"]), default="auto",
              show_default=True, help="input format (auto: by extension, .gz looked through)")
@click.option("--text-field", default="text", show_default=True, help="JSONL/CSV/Parquet field holding the text")
@click.option("--label-field", default="", help="field holding the class (--task classify)")
@click.option("--target-field", default="", help="field holding the target text (--task seq2seq; source: --text-field)")
@click.option("--separate-vocab", is_flag=True, help="seq2seq: a source and a target vocabulary (default: one shared)")
@click.option("--columns", multiple=True, callback=_columns, help="numeric columns, comma-separated (series; numeric classify)")
@click.option("--group-field", default="", help="numeric classify: consecutive rows sharing this field form one sequence; "
              "series: one series per value (long format, each series' rows consecutive)")
@click.option("--static-field", "static_fields", multiple=True, callback=_columns,
              help="series with --group-field: category columns constant within each series, comma-separated "
                   "(forecasters learn an embedding per column)")
@click.option("--time-field", default="", help="series: field of each row's time (numbers or ISO times), kept for predict/detect")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True,
              help="storage of numeric values")
@click.option("--nan", type=click.Choice(["error", "drop", "fill-zero", "ffill"]), default="error", show_default=True,
              help="what to do with NaN/inf/missing numeric values")
@click.option("--level", type=click.Choice(["word", "char", "subword"]), default="word", show_default=True)
@click.option("--bpe-vocab", type=click.IntRange(min=50), default=8000, show_default=True, help="subword: BPE vocabulary to learn")
@click.option("--min-freq", type=click.IntRange(min=1), default=1, show_default=True, help="drop tokens seen fewer times (they become <unk>)")
@click.option("--max-vocab", type=click.IntRange(min=0), default=0, help="keep at most this many tokens, specials included (0: no limit)")
@click.option("--lowercase", is_flag=True, help="lowercase text before tokenizing")
@click.option("--valid-fraction", type=click.FloatRange(0, 1, max_open=True), default=0.05, show_default=True, help="share of INPUTS held out for validation (classify: of each class's records)")
@click.option("--pattern", default="*", show_default=True, help="file name pattern inside folders")
@click.option("--encoding-errors", type=click.Choice(["strict", "replace", "ignore"]), default="strict", show_default=True)
@click.option("--shard-size", default="1GB", show_default=True, callback=_size, help="split arrays into files of this size")
@click.option("--workers", type=click.IntRange(min=0), default=0, help="encoding processes (0: all cores for large inputs)")
@click.option("--embeddings", default="", help="GloVe/word2vec text vectors (.gz ok) to restrict to the vocabulary")
@click.option("--embeddings-dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="seed of random rows for words without vectors, and of which records a class holds out")
@click.option("--overwrite", is_flag=True, help="replace an existing data directory (only once the new one is complete)")
@json_flag
def prepare(inputs, out, train_files, valid_files, test_files, task, fmt, text_field, label_field, target_field,
            separate_vocab, columns,
            group_field, static_fields, time_field, dtype, nan, level, bpe_vocab, min_freq, max_vocab, lowercase, valid_fraction, pattern,
            encoding_errors, shard_size, workers, embeddings, embeddings_dtype, seed, overwrite, as_json) -> None:
    """Stream text, JSONL, CSV/TSV or Parquet (.gz too) into a memory-mapped store in bounded memory."""
    from seqfit.data.prepare import PrepareOptions, prepare as run_prepare

    given = click.get_current_context().get_parameter_source("valid_fraction") == click.core.ParameterSource.COMMANDLINE
    if given and not inputs:
        raise SeqfitError("--valid-fraction holds out a share of the positional INPUTS; files given with --train are "
                          "all training data: name the validation files with --valid, or pass the files as INPUTS")

    meta = run_prepare(PrepareOptions(
        out=Path(out), inputs=tuple(inputs), train=tuple(train_files), valid=tuple(valid_files), test=tuple(test_files),
        task=task, fmt=fmt, text_field=text_field, label_field=label_field, target_field=target_field,
        separate_vocab=separate_vocab, columns=columns, group_field=group_field, static_fields=static_fields, time_field=time_field,
        dtype=dtype, nan=nan, level=level, bpe_vocab=bpe_vocab, min_freq=min_freq, max_vocab=max_vocab,
        lowercase=lowercase, valid_fraction=valid_fraction, pattern=pattern, encoding_errors=encoding_errors,
        shard_bytes=shard_size, workers=workers, embeddings=embeddings, embeddings_dtype=embeddings_dtype, seed=seed,
        overwrite=overwrite))
    r = meta["report"]
    result = {"out": out, "kind": meta["kind"], **r, "dtype": meta["dtype"]}
    if meta["kind"] == "series":
        rows = ", ".join(f"{k} {v:,}" for k, v in r["rows"].items() if v)
        human = (f"{out}: {sum(r['rows'].values()):,} rows x {len(meta['columns'])} columns ({rows}; {meta['dtype']}); "
                 + (f"{max(r['series'].values()):,} series; " if "series" in r else "")
                 + f"{r['dropped_rows']:,} dropped; {r['seconds']:.1f}s")
    elif meta["kind"] == "sequences":
        seqs = ", ".join(f"{k} {v:,}" for k, v in r["sequences"].items() if v)
        human = f"{out}: {sum(r['sequences'].values()):,} sequences ({seqs})"
        human += (f", {r['target_tokens']:,} target tokens"
                  + (f" (target vocabulary {r['target_vocab_size']:,})" if "target_vocab_size" in r else "")
                  if "target_tokens" in r
                  else f", {len(meta['label_names'])} classes")
        if "vocab_size" in r:
            human += (f"; {r['tokens']:,} tokens, vocabulary {r['vocab_size']:,}; coverage {r['coverage']:.2%}, "
                      f"unknown {r['unknown_rate']:.2%}")
        human += f"; {r['seconds']:.1f}s"
    else:
        result["splits"] = {k: v["tokens"] for k, v in meta["splits"].items()}
        splits = ", ".join(f"{name} {info['tokens']:,}" for name, info in meta["splits"].items() if info["tokens"])
        human = (f"{out}: {r['tokens']:,} tokens ({splits}); {r['types_seen']:,} types seen, vocabulary {r['vocab_size']:,} "
                 f"({meta['dtype']}); coverage {r['coverage']:.2%}, unknown {r['unknown_rate']:.2%}; {r['seconds']:.1f}s")
    if "embeddings" in meta:
        e = meta["embeddings"]
        result["embeddings"] = e
        human += f"\nembeddings: {e['dim']}-d, coverage {e['coverage']:.2%} ({e['found']:,} + {e['found_lowercase']:,} lowercase)"
    emit(result, as_json, human)
