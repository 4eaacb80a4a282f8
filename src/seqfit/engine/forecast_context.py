"""A held-out tail with its history in front: every row of a valid/test split gets a full --lookback window.

The valid split is the held-out tail of each series, the test split the tail after it (or, with --valid/--test
files, the files the user put there, in time order), and a DATA store other than the run's may continue the
run's series. On its own such a split leaves its first L rows of each series without a window. ``with_context``
puts up to L rows of the same series' earlier history in front of each series (series matched by name; a
store of one series is the same series in every split)::

    history (earlier splits)   ... h h h h | t t t t t t ...   the split
                                 <-- L --> ^ first row of the tail: now forecast from the L rows before it

History is looked up, newest first, in the splits before this one in DATA (train < valid < test) and then,
when DATA is another store than the run's, in the run's own data (test, valid, train). Where both sides have
--time-field values, history is only borrowed when it ends before the tail starts (a store that repeats or
precedes the run's data is not its continuation). Only the borrowed rows are held in memory: at most
series x L x columns values; the split's own rows are still read from its files.

``ContextSplit`` reads like a SeriesSplit whose series i is its prefix followed by the split's series i (row
numbers shift by the prefixes), so the windows, normalisation, calendar features and cleaning of
seqfit.engine.forecast_output run on it unchanged; ``split_rows`` maps its rows back to the split's.
"""

from __future__ import annotations

import numpy as np

from seqfit.data.series import SeriesSplit, SeriesStore
from seqfit.data.window_index import WindowIndex

__all__ = ["ContextSplit", "with_context", "SPLIT_ORDER"]

SPLIT_ORDER = ("train", "valid", "test")  # time order of a store's splits


class _Times:
    """Each row's time of a ContextSplit, looked up lazily (the split's times stay memory-mapped)."""

    def __init__(self, view: "ContextSplit", prefix_times: list[np.ndarray], own: np.ndarray):
        self.view, self.own = view, own
        self.flat = np.concatenate(prefix_times) if prefix_times else own[:0]
        self.dtype = np.result_type(self.flat.dtype, own.dtype)

    def __len__(self) -> int:
        return self.view.rows

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            return self[np.arange(*idx.indices(len(self)))]
        idx = np.asarray(idx, dtype=np.int64)
        s = self.view.series_of(idx)
        local = idx - self.view.offsets[s]
        p = self.view.prefix_len[s]
        mine = local >= p
        out = np.empty(idx.shape, dtype=self.dtype)
        out[mine] = self.own[(self.view.base.offsets[s] + local - p)[mine]]
        out[~mine] = self.flat[(self.view.prefix_at[s] + local)[~mine]]
        return out


class ContextSplit:
    """``base`` with ``prefix[i]`` (raw rows (p_i, F), float32) in front of its series i."""

    def __init__(self, base: SeriesSplit, prefix: list[np.ndarray], prefix_times: list[np.ndarray] | None):
        self.base = base
        self.prefix = prefix
        self.prefix_len = np.array([len(p) for p in prefix], dtype=np.int64)  # (S,)
        self.prefix_at = np.r_[0, np.cumsum(self.prefix_len)].astype(np.int64)  # where each sits in the flat times
        self.offsets = base.offsets + self.prefix_at  # (S + 1,): series i is rows offsets[i]:offsets[i+1]
        self.rows = int(self.offsets[-1])
        own = base.times
        self.times = None if own is None or prefix_times is None else _Times(self, prefix_times, own)

    def __getattr__(self, name):  # names, named, mean, scale, series_stats, static, dir, ...: the split's own
        if name == "base":  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self.base, name)

    @property
    def num_series(self) -> int:
        return len(self.offsets) - 1

    def __len__(self) -> int:
        return self.rows

    def series_of(self, rows) -> np.ndarray:
        return np.searchsorted(self.offsets, np.asarray(rows, dtype=np.int64), side="right") - 1

    def split_rows(self, rows) -> np.ndarray:
        """The base split's row numbers of rows past the prefixes."""
        rows = np.asarray(rows, dtype=np.int64)
        return rows - self.prefix_at[self.series_of(rows) + 1]

    def read(self, start: int, length: int, *, normalize: bool = True) -> np.ndarray:
        """Rows [start, start + length) as (length, F) float32, within one series (windows never span two)."""
        parts, row, end = [], int(start), int(start) + int(length)
        while row < end:
            s = int(self.series_of(row))
            stop = min(end, int(self.offsets[s + 1]))
            local, p = row - int(self.offsets[s]), int(self.prefix_len[s])
            if local < p:
                take = min(stop - row, p - local)
                parts.append(self.prefix[s][local:local + take])
            else:
                take = stop - row
                parts.append(self.base.read(int(self.base.offsets[s]) + local - p, take, normalize=False))
            row += take
        rows = np.concatenate(parts) if parts else np.empty((0, self.base.num_features), np.float32)
        return (rows - self.base.mean) * self.base.scale if normalize else rows

    def windows(self, starts, length: int, *, normalize: bool = True) -> np.ndarray:
        return np.stack([self.read(int(s), length, normalize=normalize) for s in starts])

    def window_index(self, span: int, stride: int = 1) -> WindowIndex:
        return WindowIndex(self.offsets, span, stride)


def _history(store: SeriesStore, name: str, run_store: SeriesStore | None) -> list[SeriesSplit]:
    """The splits that precede ``name`` in time, newest first."""
    before = SPLIT_ORDER[:SPLIT_ORDER.index(name)] if name in SPLIT_ORDER else ()
    chain = [store.split(s) for s in reversed(before) if store.has_split(s)]
    if run_store is not None:
        chain += [run_store.split(s) for s in reversed(SPLIT_ORDER) if run_store.has_split(s)]
    return chain


def _before(last, first) -> bool:
    """Whether time ``last`` is before time ``first``: numbers, or ISO dates; a number and a text never (two
    different time fields); True for other texts (order unknown: as a store without times)."""
    numeric = [np.asarray(t).dtype.kind in "iuf" for t in (last, first)]
    if all(numeric):
        return bool(last < first)
    if any(numeric):
        return False
    try:
        return bool(np.datetime64(str(last)) < np.datetime64(str(first)))
    except ValueError:
        return True


def with_context(split: SeriesSplit, store: SeriesStore, run_store: SeriesStore | None, rows: int) -> tuple[ContextSplit, int]:
    """(``split`` with up to ``rows`` rows of each series' history in front, the number of series given any).
    ``run_store``: the run's data when DATA is another store, else None."""
    chain = _history(store, split.name, run_store)
    times = split.times
    S, F = split.num_series, split.num_features
    prefix = [np.empty((0, F), np.float32) for _ in range(S)]
    prefix_times: list[np.ndarray] | None = [] if times is not None else None
    positions = [split.positions_in(p) for p in chain]  # O(series)
    for i in range(S):
        parts, part_times, need = [], [], rows
        first_time = times[split.offsets[i]] if times is not None else None
        for piece_no, piece in enumerate(chain):
            if need <= 0:
                break
            j = int(positions[piece_no][i])
            if j < 0:
                continue
            a, b = int(piece.offsets[j]), int(piece.offsets[j + 1])
            if times is not None:
                ptimes = piece.times
                if ptimes is None:
                    break  # cannot place calendar features of rows without times: stop here
                if not _before(ptimes[b - 1], first_time):
                    break  # not a continuation of this series
                first_time = ptimes[a]
            k = min(need, b - a)
            parts.insert(0, piece.read(b - k, k, normalize=False))
            if times is not None:
                part_times.insert(0, np.asarray(piece.times[b - k:b]))
            need -= k
        if parts:
            prefix[i] = np.concatenate(parts).astype(np.float32)
        if prefix_times is not None:
            prefix_times.append(np.concatenate(part_times) if part_times else times[:0])
    return ContextSplit(split, prefix, prefix_times), int(sum(len(p) > 0 for p in prefix))

