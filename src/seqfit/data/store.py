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
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from seqfit.atomic import recover_directory
from seqfit.data.shards import member, open_checked
from seqfit.data.vocab import Vocab
from seqfit.errors import SeqfitError

__all__ = ["STORE_FORMAT", "STORE_VERSION", "STORE_DTYPES", "TokenArray", "TokenStore", "read_meta", "meta_errors"]

STORE_FORMAT = "seqfit-store"
STORE_VERSION = 1
# Plain numbers only: a meta.json naming "O" (object) or a structured dtype is refused before any map is made.
STORE_DTYPES = ("uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64", "float16", "float32", "float64")
_HINT = "re-run `seqfit prepare` to rebuild it"


@contextmanager
def meta_errors(data_dir: Path) -> Iterator[None]:
    """Turn a missing or mistyped meta.json field, met while opening a store, into one line."""
    try:
        yield
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise SeqfitError(f"{Path(data_dir) / 'meta.json'} is malformed ({type(e).__name__}: {e}); {_HINT}") from None


def _check_meta(meta, path: Path) -> None:
    """The fields every kind of store shares: a table of splits, each with a list of shards, and a dtype."""
    if not isinstance(meta, dict):
        raise SeqfitError(f"{path} is not a seqfit store (not a JSON object); {_HINT}")
    if meta.get("dtype") not in STORE_DTYPES:
        raise SeqfitError(f"{path} gives dtype {meta.get('dtype')!r}; a store holds one of {', '.join(STORE_DTYPES)}; {_HINT}")
    splits = meta.get("splits")
    if not isinstance(splits, dict) or not all(isinstance(v, dict) for v in splits.values()):
        raise SeqfitError(f"{path} has no table of splits; {_HINT}")
    for name, info in splits.items():
        for key in ("tokens", "sequences", "rows"):
            count = info.get(key, 0)
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise SeqfitError(f"{path}: split {name!r} gives {count!r} {key}; {_HINT}")
        shards = info.get("shards", [])
        if not isinstance(shards, list) or not all(isinstance(s, dict) for s in shards):
            raise SeqfitError(f"{path}: split {name!r} has no list of shards; {_HINT}")
        for shard in shards:
            member(path.parent, shard.get("file"))
            count = shard.get("tokens")
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise SeqfitError(f"{path}: a shard of split {name!r} gives {count!r} elements; {_HINT}")


def read_meta(data_dir: Path) -> dict:
    path = data_dir / "meta.json"
    recover_directory(data_dir, complete="meta.json")  # a `prepare --overwrite` killed mid-swap
    if not data_dir.is_dir():
        raise SeqfitError(f"data directory not found: {data_dir}")
    if not path.is_file():
        raise SeqfitError(f"{data_dir} has no meta.json: not a seqfit data directory ({_HINT})")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise SeqfitError(f"{path} is not valid JSON ({e}); {_HINT}") from None
    except OSError as e:
        raise SeqfitError(f"cannot read {path}: {e.strerror}") from None
    if not isinstance(meta, dict):
        raise SeqfitError(f"{path} is not a seqfit store (not a JSON object); {_HINT}")
    if meta.get("format") != STORE_FORMAT:
        raise SeqfitError(f"{path} is not a seqfit store (format {meta.get('format')!r}); {_HINT}")
    if meta.get("version") != STORE_VERSION:
        raise SeqfitError(f"{path} has store version {meta.get('version')}, this seqfit reads {STORE_VERSION}; {_HINT}")
    _check_meta(meta, path)
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


def load_checked_vocab(directory: Path, name: str, expected_hash, what: str) -> Vocab:
    """DIR/name, refused in one line when missing, unreadable, or not the vocabulary ``what`` was written with."""
    path = directory / name
    if not path.is_file():
        raise SeqfitError(f"{directory} has no {name}; {_HINT}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SeqfitError(f"cannot read {path} ({e}); {_HINT}") from None
    if hashlib.sha256(text.encode()).hexdigest() != expected_hash:
        raise SeqfitError(f"{path} does not match {what} in {directory} (vocabulary hash differs); {_HINT}")
    return Vocab.load(path)


class TokenStore:
    """A prepared data directory: vocabulary plus per-split token arrays."""

    def __init__(self, data_dir: str | Path):
        self.dir = Path(data_dir)
        self.meta = read_meta(self.dir)
        if self.meta.get("kind", "tokens") != "tokens":
            raise SeqfitError(f"{self.dir} holds a {self.meta.get('kind')!r} store, not a token stream")
        self.vocab = load_checked_vocab(self.dir, "vocab.json", self.meta.get("vocab_hash"), "the token arrays")
        vocab_path = self.dir / "vocab.json"
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
            with meta_errors(self.dir):
                info = self.meta["splits"].get(name)
                if not info or info["tokens"] == 0:
                    have = ", ".join(self.split_names) or "none"
                    raise SeqfitError(f"{self.dir} has no {name!r} split (has: {have})")
                shards = [self._open_shard(s) for s in info["shards"]]
                if sum(len(s) for s in shards) != info["tokens"]:
                    raise SeqfitError(f"{self.dir}: the shards of {name!r} hold {sum(len(s) for s in shards)} tokens, "
                                      f"meta.json says {info['tokens']}; {_HINT}")
                if not shards:
                    raise SeqfitError(f"{self.dir}: split {name!r} lists no shards; {_HINT}")
                self._splits[name] = TokenArray(shards)
        return self._splits[name]

    def _open_shard(self, shard: dict) -> np.memmap:
        return open_checked(member(self.dir, shard["file"]), self.dtype, shard["tokens"], what="tokens")
