"""Numeric time series store: float rows with named columns, and their statistics for normalisation.

Layout::

    DATA_DIR/
      meta.json   {"kind": "series", "dtype": "float32"|"float16", "columns": [...],
                   "stats": {column: {count, mean, std, min, max}},   # of the train split, float64
                   "splits": {"train": {"rows": N, "tokens": N*F, "shards": [...]}, ...}}
      train.bin   rows back to back, row-major (N, F), in shards cut at row boundaries
      train.time.npy  with --time-field (meta "time_field"): each row's time, int64/float64 or strings
      train.series_stats.npy  (split entry "series_stats") float64 (S, 2, F): each series' mean and std in
                      the split (--normalize series: seqfit.data.series_norm); absent in stores prepared before it

With --group-field ID (meta "series_field": "ID") a split holds many series back to back, and its entry adds
      "series": S, "offsets": "train.offsets.bin", "names": "train.series.json"
      train.offsets.bin   int64 [0, end_0, end_1, ...]: series i is rows offsets[i]:offsets[i+1]
      train.series.json   the S names (the group values, as text), in the same order
With --static-field COL[,COL] as well (meta "static_fields": [COL, ...], "static_vocab": "static_vocab.json"),
      static_vocab.json   {COL: [category, ...]}: each column's categories (as text); an id indexes this list
      train.static.npy    (split entry "static") int64 (S, K): each series' category id in each column
Stores prepared before static categories, or without --static-field, have none (``static`` is None).
Without one, a split is a single series named after the split. Windows never span two series
(seqfit.data.window_index).

Values are stored raw; ``read``/``windows`` normalise on the fly ((x - mean) / std) and return float32.
Rows are read with positioned reads (seqfit.data.pread), not through the memory maps: random windows read
through a map leave their neighbourhood resident (435 MB after 9,600 windows of a 0.8 GB store).
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from seqfit.data.pread import ShardReader
from seqfit.data.shards import member, open_checked
from seqfit.data.store import TokenArray, meta_errors, read_meta
from seqfit.data.window_index import WindowIndex
from seqfit.errors import SeqfitError

_HINT = "re-run `seqfit prepare`"

__all__ = ["SeriesStore", "SeriesSplit", "SeriesWindows"]


class SeriesSplit:
    """One split's rows through memory maps; reads return float32, normalised unless asked not to."""

    def __init__(self, store: "SeriesStore", name: str, info: dict):
        self.name, self.dir, self.num_features = name, store.dir, len(store.columns)
        self.data = TokenArray([open_checked(member(store.dir, s["file"]), store.dtype, s["tokens"]) for s in info["shards"]])
        self.rows = info["rows"]
        self.reader = ShardReader([member(store.dir, s["file"]) for s in info["shards"]],
                                  [s["tokens"] for s in info["shards"]], store.dtype)  # the maps only check sizes
        if len(self.data) != self.rows * self.num_features:
            raise SeqfitError(f"{store.dir}: shards hold {len(self.data)} values, meta.json says {self.rows} rows "
                              f"x {self.num_features} columns; re-run `seqfit prepare`")
        self.mean = store.mean.astype(np.float32)
        self.scale = (1.0 / np.where(store.std > 0, store.std, 1.0)).astype(np.float32)  # constant column: unscaled
        self._names_file = info.get("names")
        self._stats_file = info.get("series_stats")
        self._static_file = info.get("static")
        self.static_fields: list[str] = store.static_fields
        self.static_vocab: dict[str, list[str]] = store.static_vocab if self._static_file else {}
        self._has_times = bool(store.meta.get("time_field"))  # --time-field at prepare: DIR/<split>.time.npy
        if "series" in info:  # many series: their row offsets, checked against the rows
            count = info["series"]
            self.offsets = np.asarray(open_checked(member(store.dir, info["offsets"]), np.int64, count + 1,
                                                   what="offsets"))  # (S + 1,): O(series) memory
            if count < 1 or self.offsets[0] != 0 or (np.diff(self.offsets) <= 0).any() or self.offsets[-1] != self.rows:
                raise SeqfitError(f"{store.dir / info['offsets']} is not a list of increasing row offsets from 0 to "
                                  f"{self.rows}: corrupt file; {_HINT}")
        else:
            self.offsets = np.array([0, self.rows], dtype=np.int64)

    @property
    def num_series(self) -> int:
        return len(self.offsets) - 1

    @cached_property
    def names(self) -> list[str]:
        """Each series' name: the group values, or the split's name for a store of one series."""
        if not self._names_file:
            return [self.name]
        path = member(self.dir, self._names_file)
        try:
            names = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise SeqfitError(f"cannot read {path} ({e}); {_HINT}") from None
        if not isinstance(names, list) or len(names) != self.num_series:
            raise SeqfitError(f"{path} does not hold {self.num_series} series names; {_HINT}")
        return [str(n) for n in names]

    def _load(self, name: str) -> tuple[Path, np.ndarray]:
        """A per-series .npy of this split (no pickles), or a one-line error."""
        path = member(self.dir, name)
        try:
            return path, np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise SeqfitError(f"cannot read {path} ({e}); {_HINT}") from None

    @cached_property
    def series_stats(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(mean (S, F), std (S, F)) float64 of each series in this split, or None (a store prepared before them)."""
        if not self._stats_file:
            return None
        path, stats = self._load(self._stats_file)
        if stats.shape != (self.num_series, 2, self.num_features):
            raise SeqfitError(f"{path} holds {stats.shape}, not ({self.num_series}, 2, {self.num_features}); {_HINT}")
        return stats[:, 0], stats[:, 1]

    @cached_property
    def static(self) -> np.ndarray | None:
        """(S, K) int64: each series' category id in each --static-field column, or None (no static fields)."""
        if not self._static_file or not self.static_fields:
            return None
        path, ids = self._load(self._static_file)
        sizes = np.array([len(self.static_vocab[c]) for c in self.static_fields])
        if ids.shape != (self.num_series, len(sizes)) or ids.dtype.kind != "i" or (ids < 0).any() or (ids >= sizes).any():
            raise SeqfitError(f"{path} does not hold a category id per series and --static-field column "
                              f"({self.num_series} x {len(sizes)}); {_HINT}")
        return ids.astype(np.int64)

    @cached_property
    def times(self) -> np.ndarray | None:
        """Each row's --time-field value, memory-mapped (read per window by --calendar), or None without one."""
        if not self._has_times:
            return None
        path = self.dir / f"{self.name}.time.npy"
        try:
            values = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise SeqfitError(f"{self.dir}: cannot read {path.name} ({e}); {_HINT}") from None
        if len(values) != self.rows:
            raise SeqfitError(f"{self.dir}: {path.name} holds {len(values)} times for {self.rows} rows; {_HINT}")
        return values

    @property
    def named(self) -> bool:
        """Whether the series carry names (--group-field), not the split's name for its one series."""
        return bool(self._names_file)

    def positions_in(self, other: "SeriesSplit") -> np.ndarray:
        """(S,) int64: where each of this split's series sits in ``other`` (-1: not there), matched by name; a
        store of one series (no --group-field) is the same series in every split and store."""
        if other is self:
            return np.arange(self.num_series, dtype=np.int64)
        if not self.named and not other.named:
            return np.zeros(1, dtype=np.int64)
        where = {n: i for i, n in enumerate(other.names)} if self.named and other.named else {}
        return np.array([where.get(n, -1) for n in self.names], dtype=np.int64)

    def series_of(self, rows) -> np.ndarray:
        """The series (index) holding each split-wide row."""
        return np.searchsorted(self.offsets, np.asarray(rows, dtype=np.int64), side="right") - 1

    def window_index(self, span: int, stride: int = 1) -> WindowIndex:
        """Where windows of ``span`` rows start, every ``stride`` rows of each series (none spans two)."""
        return WindowIndex(self.offsets, span, stride)

    def __len__(self) -> int:
        return self.rows

    def read(self, start: int, length: int, *, normalize: bool = True) -> np.ndarray:
        """Rows [start, start + length) as (length, F) float32."""
        F = self.num_features
        rows = self.reader.read(start * F, length * F).reshape(length, F).astype(np.float32)  # (L, F)
        return (rows - self.mean) * self.scale if normalize else rows

    def windows(self, starts, length: int, *, normalize: bool = True) -> np.ndarray:
        """(B, length, F) float32 windows beginning at each start row."""
        return np.stack([self.read(int(s), length, normalize=normalize) for s in starts])


class SeriesStore:
    def __init__(self, data_dir: str | Path):
        self.dir = Path(data_dir)
        self.meta = read_meta(self.dir)
        if self.meta.get("kind") != "series":
            raise SeqfitError(f"{self.dir} holds a {self.meta.get('kind', 'tokens')!r} store, not a time series "
                              "(prepare it with --task series)")
        with meta_errors(self.dir):
            self.columns: list[str] = [str(c) for c in self.meta["columns"]]
            if not self.columns:
                raise ValueError("no columns")
            self.dtype = np.dtype(self.meta["dtype"])
            self.stats: dict = self.meta["stats"]
            self.mean = np.array([float(self.stats[c]["mean"]) for c in self.columns])
            self.std = np.array([float(self.stats[c]["std"]) for c in self.columns])
            self.series_field: str = str(self.meta.get("series_field") or "")  # --group-field: many series
            self.static_fields: list[str] = [str(c) for c in self.meta.get("static_fields") or []]
        self.static_vocab: dict[str, list[str]] = self._read_static_vocab() if self.static_fields else {}
        self._splits: dict[str, SeriesSplit] = {}

    def _read_static_vocab(self) -> dict[str, list[str]]:
        path = member(self.dir, str(self.meta.get("static_vocab") or "static_vocab.json"))
        try:
            vocab = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise SeqfitError(f"cannot read {path} ({e}); {_HINT}") from None
        if not isinstance(vocab, dict) or any(not isinstance(vocab.get(c), list) or not vocab[c] for c in self.static_fields):
            raise SeqfitError(f"{path} does not hold the categories of {', '.join(self.static_fields)}; {_HINT}")
        return {c: [str(v) for v in vocab[c]] for c in self.static_fields}

    def has_split(self, name: str) -> bool:
        return self.meta["splits"].get(name, {}).get("rows", 0) > 0

    def times(self, name: str) -> np.ndarray | None:
        """The split's --time-field values (one per row: int64, float64 or strings), or None without one."""
        if not self.meta.get("time_field"):
            return None
        path = self.dir / f"{name}.time.npy"
        try:
            values = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise SeqfitError(f"{self.dir}: cannot read {path.name} ({e}); re-run `seqfit prepare`") from None
        if len(values) != self.split(name).rows:
            raise SeqfitError(f"{self.dir}: {path.name} holds {len(values)} times for {self.split(name).rows} rows; "
                              "re-run `seqfit prepare`")
        return values

    def split(self, name: str) -> SeriesSplit:
        if name not in self._splits:
            if not self.has_split(name):
                have = ", ".join(k for k in self.meta["splits"] if self.has_split(k)) or "none"
                raise SeqfitError(f"{self.dir} has no {name!r} split (has: {have})")
            with meta_errors(self.dir):
                self._splits[name] = SeriesSplit(self, name, self.meta["splits"][name])
        return self._splits[name]


class SeriesWindows(torch.utils.data.Dataset):
    """Normalised float32 windows of ``length`` rows every ``stride`` rows of each series, and the ``horizon``
    rows after each (never spanning two series).

    The memory map is opened lazily in each process (DataLoader workers open their own).
    """

    def __init__(self, data_dir: str | Path, split: str, length: int, *, stride: int = 1, horizon: int = 1):
        self.dir, self.name, self.length, self.stride, self.horizon = Path(data_dir), split, length, stride, horizon
        self.index = SeriesStore(self.dir).split(split).window_index(length + horizon, stride)
        self.count = self.index.count
        self._split = None

    def __len__(self) -> int:
        return self.count

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_split": None}  # each worker maps the files itself

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._split is None:
            self._split = SeriesStore(self.dir).split(self.name)
        if not 0 <= i < self.count:
            raise IndexError(i)
        rows = self._split.read(int(self.index.starts(i)), self.length + self.horizon)  # (L + h, F)
        return torch.from_numpy(rows[:self.length]), torch.from_numpy(rows[self.length:])
