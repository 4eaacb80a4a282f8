"""Numeric time series store: float rows with named columns, and their statistics for normalisation.

Layout::

    DATA_DIR/
      meta.json   {"kind": "series", "dtype": "float32"|"float16", "columns": [...],
                   "stats": {column: {count, mean, std, min, max}},   # of the train split, float64
                   "splits": {"train": {"rows": N, "tokens": N*F, "shards": [...]}, ...}}
      train.bin   rows back to back, row-major (N, F), in shards cut at row boundaries
      train.time.npy  with --time-field (meta "time_field"): each row's time, int64/float64 or strings

Values are stored raw; ``read``/``windows`` normalise on the fly ((x - mean) / std) and return float32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from seqfit.data.shards import member, open_checked
from seqfit.data.store import TokenArray, meta_errors, read_meta
from seqfit.errors import SeqfitError

__all__ = ["SeriesStore", "SeriesSplit", "SeriesWindows"]


class SeriesSplit:
    """One split's rows through memory maps; reads return float32, normalised unless asked not to."""

    def __init__(self, store: "SeriesStore", info: dict):
        self.num_features = len(store.columns)
        self.data = TokenArray([open_checked(member(store.dir, s["file"]), store.dtype, s["tokens"]) for s in info["shards"]])
        self.rows = info["rows"]
        if len(self.data) != self.rows * self.num_features:
            raise SeqfitError(f"{store.dir}: shards hold {len(self.data)} values, meta.json says {self.rows} rows "
                              f"x {self.num_features} columns; re-run `seqfit prepare`")
        self.mean = store.mean.astype(np.float32)
        self.scale = (1.0 / np.where(store.std > 0, store.std, 1.0)).astype(np.float32)  # constant column: unscaled

    def __len__(self) -> int:
        return self.rows

    def read(self, start: int, length: int, *, normalize: bool = True) -> np.ndarray:
        """Rows [start, start + length) as (length, F) float32."""
        F = self.num_features
        rows = self.data.read(start * F, length * F).reshape(length, F).astype(np.float32)  # (L, F)
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
        self._splits: dict[str, SeriesSplit] = {}

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
                self._splits[name] = SeriesSplit(self, self.meta["splits"][name])
        return self._splits[name]


class SeriesWindows(torch.utils.data.Dataset):
    """Normalised float32 windows of ``length`` rows every ``stride`` rows, and the ``horizon`` rows after each.

    The memory map is opened lazily in each process (DataLoader workers open their own).
    """

    def __init__(self, data_dir: str | Path, split: str, length: int, *, stride: int = 1, horizon: int = 1):
        self.dir, self.name, self.length, self.stride, self.horizon = Path(data_dir), split, length, stride, horizon
        rows = SeriesStore(self.dir).split(split).rows
        self.count = max(0, (rows - length - horizon) // stride + 1)
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
        rows = self._split.read(i * self.stride, self.length + self.horizon)  # (L + h, F)
        return torch.from_numpy(rows[:self.length]), torch.from_numpy(rows[self.length:])
