"""`seqfit prepare` for numeric columns: time series (--task series) and numeric sequences with labels
(--task classify --columns ... --label-field Y), where a sequence is either consecutive rows sharing
--group-field ID, or, without --group-field, one record whose --columns each hold a list of numbers
(JSONL arrays, Parquet list columns): feature f of step t is ``record[columns[f]][t]``.

Streaming throughout: readers yield bounded batches, rows are cleaned (--nan; seqfit.data.numeric_rows),
written to shards, and the train split's statistics are merged batch by batch (seqfit.data.stats). Series
(one, or many with --group-field) are written by seqfit.data.prepare_series, held out in time; numeric
sequences are held out per class, as labelled texts are (chunks.StratifiedHoldout).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from seqfit.atomic import staged_directory
from seqfit.data.chunks import StratifiedHoldout, label_text
from seqfit.data.prepare_options import check_out, sort_labels
from seqfit.data.numeric_rows import NAN_POLICIES, check_float16, clean_rows, group_runs
from seqfit.data.prepare_series import prepare_series
from seqfit.data.readers import ReadOptions, read_records
from seqfit.data.sequences import SequenceWriter
from seqfit.data.sources import SPLITS, Source, check_not_empty, mixed_fraction, resolve_sources
from seqfit.data.stats import RunningStats
from seqfit.data.store import STORE_FORMAT, STORE_VERSION
from seqfit.errors import SeqfitError

__all__ = ["prepare_numeric", "NAN_POLICIES", "clean_rows"]

DTYPES = ("float32", "float16")


def _check(opts) -> list[str]:
    columns = list(opts.columns)
    if not columns:
        raise SeqfitError(f"--task {opts.task} needs --columns (the numeric columns to keep)")
    if len(set(columns)) != len(columns):
        raise SeqfitError(f"--columns names a column twice: {', '.join(columns)}")
    if opts.nan not in NAN_POLICIES:
        raise SeqfitError(f"unknown --nan policy {opts.nan!r}; choose one of {', '.join(NAN_POLICIES)}")
    if opts.dtype not in DTYPES:
        raise SeqfitError(f"--dtype must be one of {', '.join(DTYPES)}, got {opts.dtype!r}")
    if opts.group_field and opts.group_field in (*columns, opts.time_field):
        raise SeqfitError(f"--group-field {opts.group_field!r} names the series; it cannot also be a --columns or "
                          "--time-field column")
    if overlap := [f for f in opts.static_fields if f in (*columns, opts.time_field, opts.group_field)]:
        raise SeqfitError(f"--static-field {overlap[0]!r} is also a --columns, --time-field or --group-field column; "
                          "a static category column is read only as one")
    if len(set(opts.static_fields)) != len(opts.static_fields):
        raise SeqfitError(f"--static-field names a column twice: {', '.join(opts.static_fields)}")
    return columns


def prepare_numeric(opts) -> dict:
    columns = _check(opts)
    out = check_out(opts)
    sources = resolve_sources(opts)
    check_not_empty(sources)
    started = time.perf_counter()
    stats = RunningStats(len(columns))
    try:
        with staged_directory(out, overwrite=opts.overwrite) as stage:
            if opts.task == "series":
                meta = prepare_series(sources, columns, opts, stage, stats)
            else:
                meta = _sequences(sources, columns, opts, stage, stats)
            if stats.count == 0:
                raise SeqfitError("no rows left in the train split (empty input, or every row dropped by --nan drop)")
            meta = {"format": STORE_FORMAT, "version": STORE_VERSION, "dtype": opts.dtype, "columns": columns,
                    "stats": stats.to_dict(columns), **meta}
            meta["report"]["seconds"] = round(time.perf_counter() - started, 3)
            (stage / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    except PermissionError as e:
        raise SeqfitError(f"cannot write {out}: {e.strerror}") from None
    return meta


def _groups(src: Source, fields, columns, opts) -> Iterator[tuple[np.ndarray, object, str]]:
    """(rows (L, F), label value, where) of each group of consecutive rows sharing --group-field."""
    current, label, rows_acc = None, None, []
    for name, rows, _, extra, _ in group_runs(src, fields, columns, opts):
        if not len(rows):
            continue
        labels = extra[opts.label_field]
        if name != current:
            if rows_acc:
                yield np.concatenate(rows_acc), label, f"{src.path} group {current!r}"
            current, label, rows_acc = name, labels[0], []
        if any(v != label for v in labels):
            other = next(v for v in labels if v != label)
            raise SeqfitError(f"{src.path}: group {current!r} has two labels ({label!r}, {other!r})")
        rows_acc.append(rows)
    if rows_acc:
        yield np.concatenate(rows_acc), label, f"{src.path} group {current!r}"


def _list_records(src: Source, fields, columns, opts) -> Iterator[tuple[np.ndarray, object, str]]:
    """(rows (L, F), label value, where) of each record whose --columns hold equal-length lists of numbers."""
    read = ReadOptions(encoding_errors=opts.encoding_errors)
    for batch in read_records(src.path, fields, read, opts.fmt):
        for k in range(len(batch)):
            where = batch.where(k)
            steps = [_number_list(batch.columns[c][k], c, where) for c in columns]
            if len({len(x) for x in steps}) > 1:
                sizes = ", ".join(f"{c} {len(x)}" for c, x in zip(columns, steps))
                raise SeqfitError(f"{where}: the --columns lists differ in length ({sizes})")
            rows = np.stack(steps, axis=1)  # (L, F)
            rows, _ = clean_rows(rows, columns, opts.nan, np.full(len(columns), np.nan), lambda t: f"{where} step {t + 1}")
            check_float16(rows, columns, opts, where)
            yield rows, batch.columns[opts.label_field][k], where


def _number_list(value, column: str, where: str) -> np.ndarray:
    if not isinstance(value, (list, tuple)):
        raise SeqfitError(f"{where}: field {column!r} is {value!r}, not a list of numbers "
                          "(give --group-field to build sequences from consecutive rows instead)")
    try:
        return np.array([np.nan if v is None else v for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        bad = next(v for v in value if not isinstance(v, (int, float)) and v is not None)
        raise SeqfitError(f"{where}: field {column!r} holds {bad!r}, not a number") from None


def _sequences(sources: list[Source], columns: list[str], opts, stage: Path, stats: RunningStats) -> dict:
    if not opts.label_field:
        raise SeqfitError("numeric sequences need --label-field")
    if opts.group_field:
        fields, records = (opts.group_field, opts.label_field, *columns), _groups
    else:
        fields, records = (opts.label_field, *columns), _list_records
    names = set()
    for src in sources:  # pass 1: the classes
        for _, label, where in records(src, fields, columns, opts):
            names.add(label_text(label, where))
    label_names = sort_labels(names)
    if len(label_names) < 2:
        raise SeqfitError(f"classification needs at least 2 classes, found {len(label_names)}")
    index = {n: i for i, n in enumerate(label_names)}
    fraction = mixed_fraction(opts)
    writers = {name: SequenceWriter(stage, name, opts.dtype, num_features=len(columns), labels=True,
                                    shard_bytes=opts.shard_bytes) for name in SPLITS}
    holdout = StratifiedHoldout(fraction, opts.seed)
    for src in sources:
        for rows, label, where in records(src, fields, columns, opts):
            name = label_text(label, where)
            split = holdout.splits(src.split, [name])[0]
            writers[split].add(rows, [len(rows)], [index[name]])
            if split == "train":
                stats.update(rows)
    splits = {name: w.close() for name, w in writers.items()}
    report = {"sequences": {k: v["sequences"] for k, v in splits.items()}}
    return {"kind": "sequences", "num_features": len(columns), "label_names": label_names, "splits": splits,
            "report": report}
