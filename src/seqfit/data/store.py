"""Token store: a data directory of memory-mapped token-id arrays, one or more shards per split.

Layout::

    DATA_DIR/
      meta.json     {"format": "seqfit-store", "version": 1, "kind": "tokens", "dtype": "uint16",
                     "vocab_size": V, "vocab_hash": sha256(vocab.json text),
                     "splits": {"train": {"tokens": N, "shards": [{"file": "train.bin", "tokens": N}]}, ...}}
      vocab.json    see seqfit.data.vocab
      train.bin     raw little-endian token ids, no header (so `np.memmap` reads it as is); a split larger
                    than --shard-size is train-00000.bin, train-00001.bin, ... read as one array

Opening a store checks the magic, version, vocabulary hash and every shard's size, so a mismatched or
truncated directory fails with a hint instead of training on garbage.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seqfit.data.vocab import Vocab
from seqfit.errors import SeqfitError

__all__ = ["STORE_FORMAT", "STORE_VERSION", "TokenArray", "TokenStore", "read_meta"]

STORE_FORMAT = "seqfit-store"
STORE_VERSION = 1
_HINT = "re-run `seqfit prepare` to rebuild it"


def read_meta(data_dir: Path) -> dict:
    path = data_dir / "meta.json"
    if not data_dir.is_dir():
        raise SeqfitError(f"data directory not found: {data_dir}")
    if not path.is_file():
        raise SeqfitError(f"{data_dir} has no meta.json: not a seqfit data directory ({_HINT})")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise SeqfitError(f"{path} is not valid JSON ({e}); {_HINT}") from None
    if meta.get("format") != STORE_FORMAT:
        raise SeqfitError(f"{path} is not a seqfit store (format {meta.get('format')!r}); {_HINT}")
    if meta.get("version") != STORE_VERSION:
        raise SeqfitError(f"{path} has store version {meta.get('version')}, this seqfit reads {STORE_VERSION}; {_HINT}")
    return meta


@dataclass
class TokenArray:
    """One split's token ids across its shards, read through memory maps (pages load on demand)."""

    shards: list[np.memmap]

    def __post_init__(self) -> None:
        self.bounds = np.cumsum([0] + [len(s) for s in self.shards])  # shard k holds [bounds[k], bounds[k+1])

    def __len__(self) -> int:
        return int(self.bounds[-1])

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) as a fresh array (crossing shard boundaries as needed)."""
        if start < 0 or start + length > len(self):
            raise IndexError(f"read [{start}, {start + length}) outside 0..{len(self)}")
        if len(self.shards) == 1:
            return np.array(self.shards[0][start:start + length])
        pieces, pos, end = [], start, start + length
        while pos < end:
            k = int(np.searchsorted(self.bounds, pos, side="right")) - 1
            stop = min(end, int(self.bounds[k + 1]))
            pieces.append(self.shards[k][pos - self.bounds[k]:stop - self.bounds[k]])
            pos = stop
        return np.concatenate(pieces) if pieces else np.empty(0, dtype=self.shards[0].dtype)

    def windows(self, starts: np.ndarray, length: int) -> np.ndarray:
        """(len(starts), length) array of the windows beginning at each start."""
        if len(self.shards) == 1:
            return self.shards[0][starts[:, None] + np.arange(length)]  # one gather from the map
        return np.stack([self.read(int(s), length) for s in starts])


class TokenStore:
    """A prepared data directory: vocabulary plus per-split token arrays."""

    def __init__(self, data_dir: str | Path):
        self.dir = Path(data_dir)
        self.meta = read_meta(self.dir)
        if self.meta.get("kind", "tokens") != "tokens":
            raise SeqfitError(f"{self.dir} holds a {self.meta.get('kind')!r} store, not a token stream")
        vocab_path = self.dir / "vocab.json"
        if not vocab_path.is_file():
            raise SeqfitError(f"{self.dir} has no vocab.json; {_HINT}")
        vocab_text = vocab_path.read_text(encoding="utf-8")
        if hashlib.sha256(vocab_text.encode()).hexdigest() != self.meta.get("vocab_hash"):
            raise SeqfitError(f"{vocab_path} does not match the token arrays in {self.dir} (vocabulary hash differs); {_HINT}")
        self.vocab = Vocab.load(vocab_path)
        if len(self.vocab) != self.meta.get("vocab_size"):
            raise SeqfitError(f"{vocab_path} has {len(self.vocab)} tokens but meta.json says {self.meta.get('vocab_size')}; {_HINT}")
        self.dtype = np.dtype(self.meta["dtype"])
        self._splits: dict[str, TokenArray] = {}

    @property
    def split_names(self) -> list[str]:
        return [name for name, info in self.meta["splits"].items() if info["tokens"] > 0]

    def has_split(self, name: str) -> bool:
        return self.meta["splits"].get(name, {}).get("tokens", 0) > 0

    def split(self, name: str) -> TokenArray:
        if name not in self._splits:
            info = self.meta["splits"].get(name)
            if not info or info["tokens"] == 0:
                have = ", ".join(self.split_names) or "none"
                raise SeqfitError(f"{self.dir} has no {name!r} split (has: {have})")
            self._splits[name] = TokenArray([self._open_shard(s) for s in info["shards"]])
        return self._splits[name]

    def _open_shard(self, shard: dict) -> np.memmap:
        path = self.dir / shard["file"]
        want = shard["tokens"] * self.dtype.itemsize
        if not path.is_file():
            raise SeqfitError(f"{path} is missing; {_HINT}")
        size = path.stat().st_size
        if size != want:
            raise SeqfitError(f"{path} has {size} bytes but meta.json says {shard['tokens']} tokens ({want} bytes): "
                              f"truncated or foreign file; {_HINT}")
        return np.memmap(path, dtype=self.dtype, mode="r")
