"""Variable-length sequence store: concatenated values + int64 offsets (+ labels, or + a target sequence).

Layout of one split (``seqfit prepare --task classify`` writes it)::

    train.bin            ids (or float rows, flattened) of every sequence, back to back, in shards
    train.offsets.bin    int64 [0, end_0, end_1, ...]: sequence i is rows offsets[i]:offsets[i+1]
    train.labels.bin     int64 class id per sequence (optional)
    train.target*.bin    a second sequence per sample, same scheme (source/target pairs; optional)

So a sample is two reads (offsets, then its slice), and every length is known from the offsets alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported lazily at run time: worker processes need not pay for it
    import torch

from functools import cached_property
from pathlib import Path

import numpy as np

from seqfit.data.shards import DEFAULT_SHARD_BYTES, ShardWriter, member, open_checked
from seqfit.data.store import TokenArray, load_checked_vocab, meta_errors, read_meta
from seqfit.data.vocab import Vocab
from seqfit.errors import SeqfitError

__all__ = ["SequenceStore", "SequenceSplit", "SequenceWriter", "pad_batch", "TARGET_VOCAB_FILE"]

_HINT = "re-run `seqfit prepare` to rebuild it"
TARGET_VOCAB_FILE = "target_vocab.json"  # --separate-vocab: the targets' own vocabulary (vocab.json: the sources')
_NO_SPLIT = 1 << 62  # side arrays (offsets, labels) stay in one file


class SequenceWriter:
    """Appends sequences of one split; ``close()`` returns the split's meta.json entry."""

    def __init__(self, directory: Path, split: str, dtype, *, num_features: int = 0, labels: bool = False,
                 target: bool = False, shard_bytes: int = DEFAULT_SHARD_BYTES):
        self.row = max(1, num_features)
        self.data = ShardWriter(directory, split, dtype, shard_bytes=shard_bytes, row=self.row)
        self.offsets = ShardWriter(directory, f"{split}.offsets", np.int64, shard_bytes=_NO_SPLIT)
        self.offsets.write(np.zeros(1, np.int64))
        self.labels = ShardWriter(directory, f"{split}.labels", np.int64, shard_bytes=_NO_SPLIT) if labels else None
        self.target = None
        if target:
            self.target = ShardWriter(directory, f"{split}.target", dtype, shard_bytes=shard_bytes)
            self.target_offsets = ShardWriter(directory, f"{split}.target.offsets", np.int64, shard_bytes=_NO_SPLIT)
            self.target_offsets.write(np.zeros(1, np.int64))
        self.count = 0
        self._rows = self._target_rows = 0

    def add(self, values: np.ndarray, lengths: np.ndarray, labels: np.ndarray | None = None,
            target: np.ndarray | None = None, target_lengths: np.ndarray | None = None) -> None:
        """Append len(lengths) sequences whose values (rows) lie back to back in ``values``."""
        lengths = np.asarray(lengths, dtype=np.int64)
        if len(lengths) == 0:
            return
        self.data.write(values)
        self.offsets.write(self._rows + np.cumsum(lengths))
        self._rows += int(lengths.sum())
        if self.labels is not None:
            self.labels.write(np.asarray(labels, dtype=np.int64))
        if self.target is not None:
            target_lengths = np.asarray(target_lengths, dtype=np.int64)
            self.target.write(target)
            self.target_offsets.write(self._target_rows + np.cumsum(target_lengths))
            self._target_rows += int(target_lengths.sum())
        self.count += len(lengths)

    def close(self) -> dict:
        if self.count == 0:
            for w in (self.data, self.offsets, self.labels, self.target, getattr(self, "target_offsets", None)):
                if w is not None:
                    for shard in w.close():
                        (w.dir / shard["file"]).unlink()
            return {"sequences": 0, "tokens": 0, "rows": 0, "shards": [], "offsets": None, "labels": None, "target": None}
        info = {"sequences": self.count, "tokens": self.data.total, "rows": self._rows,
                "shards": self.data.close(), "offsets": self.offsets.close()[0]["file"],
                "labels": self.labels.close()[0]["file"] if self.labels is not None else None,
                "target": None}
        if self.target is not None:
            info["target"] = {"tokens": self.target.total, "rows": self._target_rows, "shards": self.target.close(),
                              "offsets": self.target_offsets.close()[0]["file"]}
        return info


def pad_batch(seqs: list[np.ndarray], num_features: int) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Right-padded (B, T) int64 (pad id 0) or (B, T, F) float32, and lengths (B,) int64."""
    import torch  # here, not at the top: `prepare` and its workers never pay torch's import

    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    T = int(lengths.max()) if len(seqs) else 0
    if num_features:
        out = np.zeros((len(seqs), T, num_features), dtype=np.float32)  # (B, T, F)
    else:
        out = np.zeros((len(seqs), T), dtype=np.int64)  # (B, T)
    for b, s in enumerate(seqs):
        out[b, :len(s)] = s
    return torch.from_numpy(out), torch.from_numpy(lengths)


class SequenceSplit:
    """One split's sequences through memory maps: ``split[i]`` reads sample i only."""

    def __init__(self, store: "SequenceStore", name: str, info: dict):
        d, self.num_features, self.name = store.dir, store.num_features, name
        row = max(1, self.num_features)
        self.data = TokenArray([open_checked(member(d, s["file"]), store.dtype, s["tokens"]) for s in info["shards"]]) \
            if info["shards"] else TokenArray([np.empty(0, store.dtype)])
        self.offsets = open_checked(member(d, info["offsets"]), np.int64, info["sequences"] + 1, what="offsets")
        if len(self.offsets) and (int(self.offsets[0]) != 0 or bool((np.diff(self.offsets) < 0).any())):
            raise SeqfitError(f"{d / info['offsets']} is not a list of increasing offsets: corrupt file; {_HINT}")
        if len(self.offsets) and int(self.offsets[-1]) * row != len(self.data):
            raise SeqfitError(f"{d / info['offsets']} ends at row {int(self.offsets[-1])} but the data holds "
                              f"{len(self.data) // row} rows; {_HINT}")
        self.labels = None
        if info.get("labels"):
            self.labels = open_checked(member(d, info["labels"]), np.int64, info["sequences"], what="labels")
        self._target = None
        if info.get("target"):
            t = info["target"]
            self._target = (TokenArray([open_checked(member(d, s["file"]), store.dtype, s["tokens"]) for s in t["shards"]]),
                            open_checked(member(d, t["offsets"]), np.int64, info["sequences"] + 1, what="offsets"))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @cached_property
    def lengths(self) -> np.ndarray:
        """int64 length of every sequence, from the offsets alone (8 bytes per sequence)."""
        return np.diff(np.asarray(self.offsets))

    @cached_property
    def target_lengths(self) -> np.ndarray:
        """int64 length of every target sequence (source/target pairs)."""
        if self._target is None:
            raise SeqfitError(f"split {self.name!r} has no target sequences")
        return np.diff(np.asarray(self._target[1]))

    def _read(self, data: TokenArray, offsets, i: int) -> np.ndarray:
        if not -len(self) <= i < len(self):
            raise IndexError(f"sequence {i} out of range ({len(self)} in {self.name!r})")
        i %= len(self)
        start, end = int(offsets[i]), int(offsets[i + 1])
        if self.num_features:
            F = self.num_features
            return data.read(start * F, (end - start) * F).reshape(end - start, F)  # (L, F)
        return data.read(start, end - start)  # (L,)

    def __getitem__(self, i: int) -> np.ndarray:
        return self._read(self.data, self.offsets, int(i))

    def target(self, i: int) -> np.ndarray:
        if self._target is None:
            raise SeqfitError(f"split {self.name!r} has no target sequences")
        return self._read(*self._target, int(i))

    def batch(self, indices) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Padded inputs (B, T) int64 [pad 0] or (B, T, F) float32, lengths (B,) int64, labels (B,) int64 (-1: none)."""
        import torch

        indices = [int(i) for i in indices]
        x, lengths = pad_batch([self[i] for i in indices], self.num_features)
        if self.labels is None:
            labels = torch.full((len(indices),), -1, dtype=torch.int64)
        else:
            labels = torch.from_numpy(np.asarray(self.labels[indices], dtype=np.int64))  # (B,)
        return x, lengths, labels

    def batch_targets(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded target sequences (B, T') and their lengths (B,), for source/target pairs."""
        return pad_batch([self.target(int(i)) for i in indices], self.num_features)


class SequenceStore:
    """A prepared directory of variable-length sequences (meta.json kind "sequences")."""

    def __init__(self, data_dir: str | Path):
        self.dir = Path(data_dir)
        self.meta = read_meta(self.dir)
        if self.meta.get("kind") != "sequences":
            raise SeqfitError(f"{self.dir} holds a {self.meta.get('kind', 'tokens')!r} store, not sequences "
                              "(prepare it with --task classify)")
        with meta_errors(self.dir):
            self.num_features = int(self.meta.get("num_features", 0))
            if self.num_features < 0:
                raise ValueError(f"num_features {self.num_features}")
            self.dtype = np.dtype(self.meta["dtype"])
            self.label_names: list[str] = [str(n) for n in self.meta.get("label_names", [])]
            self.columns: list[str] = [str(c) for c in self.meta.get("columns", [])]
        self.vocab: Vocab | None = None
        if not self.num_features:
            self.vocab = self._vocab("vocab.json", "vocab_hash")
        # source/target pairs share one vocabulary, unless prepared with --separate-vocab
        self.target_vocab: Vocab | None = self.vocab
        if self.meta.get("target_vocab_hash"):
            self.target_vocab = self._vocab(TARGET_VOCAB_FILE, "target_vocab_hash")
        self._splits: dict[str, SequenceSplit] = {}

    def _vocab(self, name: str, hash_key: str) -> Vocab:
        return load_checked_vocab(self.dir, name, self.meta.get(hash_key), "the sequences")

    @property
    def split_names(self) -> list[str]:
        return [name for name, info in self.meta["splits"].items() if info["sequences"] > 0]

    def has_split(self, name: str) -> bool:
        return self.meta["splits"].get(name, {}).get("sequences", 0) > 0

    def split(self, name: str) -> SequenceSplit:
        if name not in self._splits:
            if not self.has_split(name):
                raise SeqfitError(f"{self.dir} has no {name!r} split (has: {', '.join(self.split_names) or 'none'})")
            with meta_errors(self.dir):
                self._splits[name] = SequenceSplit(self, name, self.meta["splits"][name])
        return self._splits[name]
