"""`seqfit prepare --task series`: numeric rows into a series store (layout in seqfit.data.series), one series
or, with --group-field ID, many: one series per run of consecutive rows sharing ID (long format), read in
one streaming pass per input (two when a share is held out).

Holdout is in time, per series: of mixed inputs, the last --valid-fraction of each series' rows (rounded)
goes to the valid split and the rest to train, so a first pass counts each series' rows; with --valid/--test
files each split holds the series its files hold. Every split records its series in order (row offsets and
names, O(series) memory); a series with no rows in a split is absent from it. The statistics that normalise
are the train split's, per column over every series (seqfit.data.stats), and each series' own in each split
(the same Welford/Chan merge, one RunningStats per series: O(series x columns) memory), written as
{split}.series_stats.npy, float64 (S, 2, F): each series' mean and std (--normalize series at train).

A series' rows must be consecutive: a name met again after another series is a one-line error.

--static-field COL[,COL] (with --group-field) keeps each series' category in each column, which must be
constant within the series (a second value is a one-line error): a vocabulary per column, in order of first
appearance over the inputs (meta "static_fields": [columns], "static_vocab": "static_vocab.json", which holds
{column: [categories as text]}), and per
split {split}.static.npy, int64 (S, K): series i's category index in each of the K columns.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np

from seqfit.data.numeric_rows import group_runs, numeric_batches
from seqfit.data.shards import ShardWriter, write_checked
from seqfit.data.sources import SPLITS, Source, mixed_fraction
from seqfit.data.stats import RunningStats
from seqfit.data.time_column import TimeSpill
from seqfit.errors import SeqfitError

__all__ = ["prepare_series", "StaticCategories"]


class StaticCategories:
    """Each series' category in each --static-field column, checked constant; O(series x columns) memory."""

    def __init__(self, fields: tuple[str, ...]):
        self.fields = list(fields)
        self.vocab: list[dict[str, int]] = [{} for _ in self.fields]
        self.names: list[list[str]] = [[] for _ in self.fields]  # id -> category text, per column
        self.of: dict = {}  # series name -> its category ids (tuple)

    def add(self, name, values: dict, where: str) -> None:
        """Series ``name``'s rows (a piece of it) hold ``values`` {column: [values]}."""
        before = self.of.get(name, (-1,) * len(self.fields))  # -1: not seen yet (or every row dropped so far)
        ids = []
        for k, col in enumerate(self.fields):
            texts = {"" if v is None else str(v) for v in values[col]}
            if before[k] >= 0:
                texts.add(self.names[k][before[k]])
            if len(texts) > 1:
                raise SeqfitError(f"{where}: --static-field {col!r} varies within series {name!r} "
                                  f"({', '.join(map(repr, sorted(texts)[:3]))}); a static category is constant per series")
            if not texts:
                ids.append(-1)
                continue
            text = texts.pop()
            if text not in self.vocab[k]:
                self.vocab[k][text] = len(self.names[k])
                self.names[k].append(text)
            ids.append(self.vocab[k][text])
        self.of[name] = tuple(ids)

    def array(self, names: list) -> np.ndarray:
        """(S, K) int64: the category ids of the series ``names``."""
        return np.array([self.of[n] for n in names], dtype=np.int64).reshape(len(names), len(self.fields))

    def vocabularies(self) -> dict[str, list[str]]:
        return dict(zip(self.fields, self.names))


class _SplitSeries:
    """The series of one split, in order: names and where each ends (rows), O(series) memory."""

    def __init__(self, group_field: str, num_columns: int):
        self.group_field, self.names, self.ends, self._seen = group_field, [], [], set()
        self.num_columns, self.stats = num_columns, []  # one RunningStats per series

    def add(self, name: str | None, rows: np.ndarray | int, where: str) -> None:
        """Series ``name`` continues (or starts) with ``rows`` (cleaned values (n, F), or a count: no stats)."""
        n = rows if isinstance(rows, int) else len(rows)
        if self.names and self.names[-1] == name:
            self.ends[-1] += n
            if not isinstance(rows, int):
                self.stats[-1].update(rows)
            return
        if name in self._seen:
            raise SeqfitError(f"{where}: series {name!r} appears again after other series; a series' rows must be "
                              f"consecutive (sort the input by {self.group_field})")
        self._seen.add(name)
        self.names.append(name)
        self.ends.append((self.ends[-1] if self.ends else 0) + n)
        self.stats.append(RunningStats(self.num_columns))
        if not isinstance(rows, int):
            self.stats[-1].update(rows)

    def stats_array(self) -> np.ndarray:
        """(S, 2, F) float64: each series' mean and std (population, as the store's)."""
        return np.stack([np.stack([st.mean, st.std]) for st in self.stats]).astype(np.float64)

    def lengths(self) -> dict:
        return dict(zip(self.names, np.diff([0] + self.ends).tolist()))


def _pieces(src: Source, columns: list[str], opts) -> Iterator[tuple[str | None, np.ndarray, list, str, int, dict]]:
    """(series name, or None for a store of one series; cleaned rows (n, F); their times; where; rows dropped;
    {--static-field column: its kept values}) in input order."""
    time_col = opts.time_field if opts.time_field and opts.time_field not in columns else ""
    statics = tuple(getattr(opts, "static_fields", ()))
    fields = tuple(columns) + tuple(f for f in (time_col, opts.group_field) if f) + statics

    def stamps_of(rows: np.ndarray, given: list) -> list:
        if not opts.time_field:
            return []
        return given if time_col else rows[:, columns.index(opts.time_field)].tolist()

    if opts.group_field:
        for name, rows, keep, extra, where in group_runs(src, fields, columns, opts):
            yield (name, rows, stamps_of(rows, extra.get(time_col, [])), where, int((~keep).sum()),
                   {f: extra[f] for f in statics})
    else:
        for cols, rows, keep in numeric_batches(src, fields, columns, opts):
            given = [v for v, k in zip(cols[time_col], keep) if k] if time_col else []
            yield None, rows, stamps_of(rows, given), str(src.path), int((~keep).sum()), {}


def prepare_series(sources: list[Source], columns: list[str], opts, stage: Path, stats: RunningStats) -> dict:
    fraction = mixed_fraction(opts)
    lengths: dict = {}
    if fraction and any(s.split == "mixed" for s in sources):  # pass 1: each series' rows, where its tail starts
        counted = _SplitSeries(opts.group_field, len(columns))
        for src in (s for s in sources if s.split == "mixed"):
            for name, rows, _, where, _, _ in _pieces(src, columns, opts):
                if len(rows):
                    counted.add(name, len(rows), where)
        lengths = counted.lengths()
    writers = {name: ShardWriter(stage, name, opts.dtype, shard_bytes=opts.shard_bytes, row=len(columns)) for name in SPLITS}
    series = {name: _SplitSeries(opts.group_field, len(columns)) for name in SPLITS}
    times = {name: TimeSpill(stage, name) for name in SPLITS} if opts.time_field else {}
    current, seen, dropped = object(), 0, 0  # the mixed series being written, and its rows so far
    static = StaticCategories(opts.static_fields) if getattr(opts, "static_fields", ()) else None
    for src in sources:
        for name, rows, stamps, where, lost, values in _pieces(src, columns, opts):
            dropped += lost
            if static is not None:
                static.add(name, values, where)
            if not len(rows):
                continue
            if src.split != "mixed":
                parts = [(src.split, rows, stamps)]
            else:
                if name != current:
                    current, seen = name, 0
                cut = len(rows)
                if fraction:
                    total = lengths[name]
                    cut = int(np.clip(total - int(round(total * fraction)) - seen, 0, len(rows)))
                parts = [("train", rows[:cut], stamps[:cut]), ("valid", rows[cut:], stamps[cut:])]
                seen += len(rows)
            for split, part, stamp in parts:
                if not len(part):
                    continue
                series[split].add(name, part, where)
                if times:
                    times[split].extend(stamp)
                writers[split].write(part)
                if split == "train":
                    stats.update(part)
    splits = {name: {"rows": w.total // len(columns), "tokens": w.total, "shards": w.close()} for name, w in writers.items()}
    report = {"rows": {k: v["rows"] for k, v in splits.items()}, "dropped_rows": dropped}
    extra: dict = {}
    for name, info in splits.items():  # per-series statistics, every split (one series without --group-field)
        if info["rows"]:
            np.save(stage / f"{name}.series_stats.npy", series[name].stats_array(), allow_pickle=False)
            info["series_stats"] = f"{name}.series_stats.npy"
    if opts.group_field:
        for name, info in splits.items():
            if info["rows"]:
                s = series[name]
                offsets = write_checked(stage / f"{name}.offsets.bin", np.array([0] + s.ends, dtype=np.int64))
                (stage / f"{name}.series.json").write_text(json.dumps(s.names), encoding="utf-8")
                info.update(series=len(s.names), offsets=offsets["file"], names=f"{name}.series.json")
                if static is not None:
                    np.save(stage / f"{name}.static.npy", static.array(s.names), allow_pickle=False)
                    info["static"] = f"{name}.static.npy"
        report["series"] = {k: v.get("series", 0) for k, v in splits.items()}
        extra["series_field"] = opts.group_field
        if static is not None:
            vocab = static.vocabularies()
            (stage / "static_vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
            extra.update(static_fields=static.fields, static_vocab="static_vocab.json")
            report["static"] = {col: len(v) for col, v in vocab.items()}
    if opts.time_field:
        for name, spill in times.items():
            if splits[name]["rows"]:
                spill.save(stage / f"{name}.time.npy")
            else:
                spill.discard()
        extra["time_field"] = opts.time_field
    return {"kind": "series", "splits": splits, "report": report, **extra}
