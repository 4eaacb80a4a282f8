"""Arrays written as size-capped shard files and opened again as checked memory maps.

A split's array (token ids, or float rows flattened) is appended in pieces; once a shard reaches
``shard_bytes`` the next piece goes to a new file, cut at an element (or row) boundary, so readers
(TokenArray) cross shards transparently. A single shard keeps the plain name ``PREFIX.bin``;
several are ``PREFIX-00000.bin``, ``PREFIX-00001.bin``, ...
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from seqfit.errors import SeqfitError

__all__ = ["DEFAULT_SHARD_BYTES", "ShardWriter", "member", "open_checked", "write_checked"]

DEFAULT_SHARD_BYTES = 1 << 30
_HINT = "re-run `seqfit prepare` to rebuild it"


class ShardWriter:
    """Append arrays of one dtype to ``dir/PREFIX*.bin``; ``close()`` returns the shard list for meta.json.

    ``row`` elements make one indivisible row (features of a time step), so shards hold whole rows;
    "tokens" in the shard list counts elements, as TokenStore's meta always has.
    """

    def __init__(self, directory: Path, prefix: str, dtype, *, shard_bytes: int = DEFAULT_SHARD_BYTES, row: int = 1):
        self.dir, self.prefix, self.dtype, self.row = Path(directory), prefix, np.dtype(dtype), row
        per_row = self.dtype.itemsize * row
        self.cap = max(1, shard_bytes // per_row) * row  # elements per shard, whole rows
        self.shards: list[dict] = []
        self._file = None
        self._in_shard = 0
        self.total = 0

    def _next_file(self) -> None:
        if self._file is not None:
            self._file.close()
        name = f"{self.prefix}-{len(self.shards):05d}.bin"
        self._file = open(self.dir / name, "wb")
        self.shards.append({"file": name, "tokens": 0})
        self._in_shard = 0

    def write(self, values: np.ndarray) -> None:
        values = np.ascontiguousarray(values, dtype=self.dtype).reshape(-1)
        pos = 0
        while pos < len(values):
            if self._file is None or self._in_shard == self.cap:
                self._next_file()
            take = min(len(values) - pos, self.cap - self._in_shard)
            self._file.write(values[pos:pos + take].tobytes())
            self._in_shard += take
            self.shards[-1]["tokens"] += take
            pos += take
        self.total += len(values)

    def close(self) -> list[dict]:
        if self._file is not None:
            self._file.close()
            self._file = None
        if len(self.shards) == 1:
            plain = f"{self.prefix}.bin"
            os.replace(self.dir / self.shards[0]["file"], self.dir / plain)
            self.shards[0]["file"] = plain
        return self.shards


def member(directory: Path, name) -> Path:
    """``directory / name`` for a file name read from meta.json, refusing one that would leave the directory.

    A store's meta.json is data, possibly from someone else: ``../x``, ``/etc/passwd`` or ``sub/x`` must
    not make seqfit map (or later overwrite) a file outside the store.
    """
    if (not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name
            or Path(name).is_absolute() or Path(name).name != name):
        raise SeqfitError(f"{Path(directory) / 'meta.json'} names the file {name!r}: a store's files must lie in "
                          f"its own directory; {_HINT}")
    return Path(directory) / name


def open_checked(path: Path, dtype, count: int, *, what: str = "elements") -> np.memmap | np.ndarray:
    """Read-only memory map of ``count`` elements, refusing a missing, short or long file."""
    dtype = np.dtype(dtype)
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise SeqfitError(f"meta.json gives {count!r} {what} for {path}: not a count; {_HINT}")
    want = count * dtype.itemsize
    if not path.is_file():
        raise SeqfitError(f"{path} is missing; {_HINT}")
    size = path.stat().st_size
    if size != want:
        raise SeqfitError(f"{path} has {size} bytes but meta.json says {count} {what} ({want} bytes): "
                          f"truncated or foreign file; {_HINT}")
    if count == 0:
        return np.empty(0, dtype=dtype)  # mmap cannot map an empty file
    return np.memmap(path, dtype=dtype, mode="r")


def write_checked(path: Path, values: np.ndarray) -> dict:
    """Write a small side array (offsets, labels) raw; returns its meta entry."""
    values = np.ascontiguousarray(values)
    with open(path, "wb") as f:
        f.write(values.tobytes())
    return {"file": path.name, "count": int(values.size), "dtype": values.dtype.name}
