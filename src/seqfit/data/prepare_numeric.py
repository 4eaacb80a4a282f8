"""`seqfit prepare` for numeric columns: time series (--task series) and numeric sequences with labels
(--task classify --columns ... --label-field Y), where a sequence is either consecutive rows sharing
--group-field ID, or, without --group-field, one record whose --columns each hold a list of numbers
(JSONL arrays, Parquet list columns): feature f of step t is ``record[columns[f]][t]``.

Streaming throughout: readers yield bounded batches, rows are cleaned (--nan), written to shards, and
the train split's statistics are merged batch by batch (seqfit.data.stats). A series is split in time:
the last --valid-fraction of the mixed rows is held out, so a first pass counts rows; numeric sequences
are held out per class, as labelled texts are (chunks.StratifiedHoldout).
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
from seqfit.data.readers import ReadOptions, read_records
from seqfit.data.sequences import SequenceWriter
from seqfit.data.shards import ShardWriter
from seqfit.data.sources import SPLITS, Source, check_not_empty, mixed_fraction, resolve_sources
from seqfit.data.stats import RunningStats
from seqfit.data.store import STORE_FORMAT, STORE_VERSION
from seqfit.errors import SeqfitError

__all__ = ["prepare_numeric", "NAN_POLICIES", "clean_rows"]

NAN_POLICIES = ("error", "drop", "fill-zero", "ffill")
DTYPES = ("float32", "float16")
_F16_MAX = float(np.finfo(np.float16).max)


def clean_rows(rows: np.ndarray, names: list[str], policy: str, carry: np.ndarray, where) -> tuple[np.ndarray, np.ndarray]:
    """Apply the NaN/inf policy to a (n, F) batch; returns (rows, kept-row mask). ``carry`` (F,) holds each
    column's last finite value from earlier batches (ffill) and is updated in place."""
    bad = ~np.isfinite(rows)
    keep = np.ones(len(rows), dtype=bool)
    if bad.any():
        r, c = map(int, np.argwhere(bad)[0])
        if policy == "error":
            raise SeqfitError(f"{where(r)}: column {names[c]!r} is {rows[r, c]} (NaN/inf or missing); "
                              "choose --nan drop|fill-zero|ffill")
        if policy == "drop":
            keep = ~bad.any(axis=1)
            rows = rows[keep]
        elif policy == "fill-zero":
            rows = np.where(bad, 0.0, rows)
        elif policy == "ffill":
            rows = rows.copy()
            for c in np.flatnonzero(bad.any(axis=0)):
                col = rows[:, c]
                last = np.maximum.accumulate(np.where(bad[:, c], -1, np.arange(len(col))))  # last good row so far
                head = last < 0
                if head.any() and not np.isfinite(carry[c]):
                    raise SeqfitError(f"{where(int(np.argmax(head)))}: column {names[c]!r} starts with NaN/inf: "
                                      "nothing to carry forward (use --nan fill-zero or drop)")
                col[:] = np.where(head, carry[c], col[np.maximum(last, 0)])
        else:
            raise SeqfitError(f"unknown --nan policy {policy!r}; choose one of {', '.join(NAN_POLICIES)}")
    if len(rows):
        good = np.isfinite(rows)
        for c in range(rows.shape[1]):
            idx = np.flatnonzero(good[:, c])
            if len(idx):
                carry[c] = rows[idx[-1], c]
    return rows, keep


def _batches(src: Source, fields: tuple[str, ...], columns: list[str], opts) -> Iterator[tuple[dict, np.ndarray, np.ndarray]]:
    """(columns kept, cleaned (n, F) float64 rows, keep mask) per batch of one source."""
    read = ReadOptions(encoding_errors=opts.encoding_errors, numeric=tuple(columns))
    carry = np.full(len(columns), np.nan)
    for batch in read_records(src.path, fields, read, opts.fmt):
        rows = np.column_stack([batch.columns[c] for c in columns]) if len(batch) else np.empty((0, len(columns)))
        rows, keep = clean_rows(rows, columns, opts.nan, carry, batch.where)
        _check_float16(rows, columns, opts, src.path)
        yield batch.columns, rows, keep


def _check_float16(rows: np.ndarray, columns: list[str], opts, where) -> None:
    if opts.dtype == "float16" and len(rows) and np.abs(rows).max() > _F16_MAX:
        r, c = map(int, np.argwhere(np.abs(rows) > _F16_MAX)[0])
        raise SeqfitError(f"{where}: value {rows[r, c]} in column {columns[c]!r} overflows float16; use --dtype float32")


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
                meta = _series(sources, columns, opts, stage, stats)
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


def _series(sources: list[Source], columns: list[str], opts, stage: Path, stats: RunningStats) -> dict:
    fraction = mixed_fraction(opts)
    fields = tuple(columns) + ((opts.time_field,) if opts.time_field and opts.time_field not in columns else ())
    times: dict[str, list] = {name: [] for name in SPLITS}
    mixed_rows = 0
    if fraction and any(s.split == "mixed" for s in sources):  # pass 1: where the held-out tail starts
        mixed_rows = sum(len(rows) for s in sources if s.split == "mixed" for _, rows, _ in _batches(s, fields, columns, opts))
    train_mixed = mixed_rows - int(round(mixed_rows * fraction))
    writers = {name: ShardWriter(stage, name, opts.dtype, shard_bytes=opts.shard_bytes, row=len(columns)) for name in SPLITS}
    dropped, seen_mixed = 0, 0
    for src in sources:
        for cols, rows, keep in _batches(src, fields, columns, opts):
            dropped += int((~keep).sum())
            stamps = [v for v, k in zip(cols[opts.time_field], keep) if k] if opts.time_field else []
            if src.split != "mixed":
                parts = [(src.split, rows, stamps)]
            else:
                cut = int(np.clip(train_mixed - seen_mixed, 0, len(rows))) if fraction else len(rows)
                parts = [("train", rows[:cut], stamps[:cut]), ("valid", rows[cut:], stamps[cut:])]
                seen_mixed += len(rows)
            for split, part, stamp in parts:
                times[split].extend(stamp)
                writers[split].write(part)
                if split == "train":
                    stats.update(part)
    splits = {name: {"rows": w.total // len(columns), "tokens": w.total, "shards": w.close()} for name, w in writers.items()}
    report = {"rows": {k: v["rows"] for k, v in splits.items()}, "dropped_rows": dropped}
    extra = {}
    if opts.time_field:
        for name, values in times.items():
            if splits[name]["rows"]:
                np.save(stage / f"{name}.time.npy", time_array(values), allow_pickle=False)
        extra["time_field"] = opts.time_field
    return {"kind": "series", "splits": splits, "report": report, **extra}


def time_array(values: list) -> np.ndarray:
    """A split's --time-field values: int64 or float64 when every value is a number, else ISO/str strings."""
    def text(v) -> str:
        return v.isoformat() if hasattr(v, "isoformat") else ("" if v is None else str(v))

    try:
        nums = np.array([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        return np.array([text(v) for v in values], dtype=str)
    if len(nums) and np.isfinite(nums).all() and (nums == np.round(nums)).all() and np.abs(nums).max() < 2 ** 53:
        return nums.astype(np.int64)
    return nums


def _groups(src: Source, fields, columns, opts) -> Iterator[tuple[np.ndarray, object, str]]:
    """(rows (L, F), label value, where) of each run of consecutive rows sharing --group-field."""
    current, label, rows_acc = object(), None, []
    for cols, rows, keep in _batches(src, fields, columns, opts):
        groups = [g for g, k in zip(cols[opts.group_field], keep) if k]
        labels = [v for v, k in zip(cols[opts.label_field], keep) if k]
        start = 0
        for i in range(len(groups) + 1):
            if i == len(groups) or groups[i] != current:
                if start < i:
                    rows_acc.append(rows[start:i])
                if i == len(groups):
                    break
                if rows_acc:
                    yield np.concatenate(rows_acc), label, f"{src.path} group {current!r}"
                current, label, rows_acc, start = groups[i], labels[i], [], i
            elif labels[i] != label:
                raise SeqfitError(f"{src.path}: group {current!r} has two labels ({label!r}, {labels[i]!r})")
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
            _check_float16(rows, columns, opts, where)
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
