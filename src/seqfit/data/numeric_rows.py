"""Numeric rows out of a source, streamed in bounded batches and cleaned (--nan), for `seqfit prepare`'s
numeric paths: whole batches (``numeric_batches``), or runs of consecutive rows sharing --group-field
(``group_runs``: a numeric sequence to classify, or one series of a store of many).

A group is a run of consecutive rows with one --group-field value; its rows may come in several runs when
it crosses a batch (they follow each other, same name). The NaN policy is applied per group: ffill never
carries a value from one group into the next.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np

from seqfit.data.readers import ReadOptions, read_records
from seqfit.data.sources import Source
from seqfit.errors import SeqfitError

__all__ = ["NAN_POLICIES", "clean_rows", "numeric_batches", "group_runs", "group_name", "check_float16"]

NAN_POLICIES = ("error", "drop", "fill-zero", "ffill")
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


def check_float16(rows: np.ndarray, columns: list[str], opts, where) -> None:
    if opts.dtype == "float16" and len(rows) and np.abs(rows).max() > _F16_MAX:
        r, c = map(int, np.argwhere(np.abs(rows) > _F16_MAX)[0])
        raise SeqfitError(f"{where}: value {rows[r, c]} in column {columns[c]!r} overflows float16; use --dtype float32")


def _stack(batch, columns: list[str]) -> np.ndarray:
    return np.column_stack([batch.columns[c] for c in columns]) if len(batch) else np.empty((0, len(columns)))


def numeric_batches(src: Source, fields: tuple[str, ...], columns: list[str], opts) -> Iterator[tuple[dict, np.ndarray, np.ndarray]]:
    """(columns kept, cleaned (n, F) float64 rows, keep mask) per batch of one source."""
    read = ReadOptions(encoding_errors=opts.encoding_errors, numeric=tuple(columns))
    carry = np.full(len(columns), np.nan)
    for batch in read_records(src.path, fields, read, opts.fmt):
        rows, keep = clean_rows(_stack(batch, columns), columns, opts.nan, carry, batch.where)
        check_float16(rows, columns, opts, src.path)
        yield batch.columns, rows, keep


def group_name(value, where: str) -> str:
    """A --group-field value as text (a float that is an integer without its ".0")."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise SeqfitError(f"{where}: no --group-field value")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def _run_bounds(keys: list) -> np.ndarray:
    """[0, i_1, ..., n]: where the value changes in a batch's group column."""
    values = np.asarray(keys, dtype=object)
    return np.concatenate([[0], np.flatnonzero(values[1:] != values[:-1]) + 1, [len(values)]]).astype(np.int64)


def group_runs(src: Source, fields: tuple[str, ...], columns: list[str], opts) -> Iterator[tuple[str, np.ndarray, np.ndarray, dict, str]]:
    """(group name, cleaned (n, F) rows, keep mask of the run's rows, {other field: its kept values}, where its
    first row is) of each run of consecutive rows sharing ``opts.group_field`` within a batch, in input order
    (--nan drop can leave a run empty). ``fields`` must hold the group field, the columns and the other fields
    wanted."""
    read = ReadOptions(encoding_errors=opts.encoding_errors, numeric=tuple(columns))
    others = [f for f in fields if f not in columns and f != opts.group_field]
    carry, current = np.full(len(columns), np.nan), None
    for batch in read_records(src.path, fields, read, opts.fmt):
        if not len(batch):
            continue
        keys, rows_all = batch.columns[opts.group_field], _stack(batch, columns)
        bounds = _run_bounds(keys)
        for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            name = group_name(keys[a], batch.where(a))
            if name != current:  # a new group: nothing carries forward into it
                carry, current = np.full(len(columns), np.nan), name
            where = (lambda r, a=a: batch.where(a + r))
            rows, keep = clean_rows(rows_all[a:b], columns, opts.nan, carry, where)
            check_float16(rows, columns, opts, f"{src.path} group {name!r}")
            extra = {f: [v for v, k in zip(batch.columns[f][a:b], keep) if k] for f in others}
            yield name, rows, keep, extra, batch.where(a)
