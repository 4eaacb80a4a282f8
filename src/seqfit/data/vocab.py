"""Vocabulary: counted tokens pruned by frequency and size, with fixed special tokens first.

Ids: 0 padding, 1 unknown, 2 end of line, then tokens by descending count (ties by first
appearance), so frequent tokens have small ids (adaptive softmax cutoffs rely on this).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seqfit.errors import SeqfitError

__all__ = ["PAD", "UNK", "EOS", "SPECIALS", "Vocab", "build_vocab", "smallest_uint_dtype"]

PAD, UNK, EOS = "<pad>", "<unk>", "<eos>"
SPECIALS = (PAD, UNK, EOS)


@dataclass
class Vocab:
    tokens: list[str]  # id -> token
    counts: list[int]  # id -> corpus count (specials: count as seen; <pad> 0)
    level: str  # "word" | "char"
    lowercase: bool = False

    def __post_init__(self) -> None:
        self.index = {tok: i for i, tok in enumerate(self.tokens)}

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def pad_id(self) -> int:
        return self.index[PAD]

    @property
    def unk_id(self) -> int:
        return self.index[UNK]

    @property
    def eos_id(self) -> int:
        return self.index[EOS]

    def encode(self, tokens: list[str]) -> list[int]:
        unk = self.unk_id
        return [self.index.get(t, unk) for t in tokens]

    def decode(self, ids) -> list[str]:
        return [self.tokens[int(i)] for i in ids]

    def to_json(self) -> str:
        return json.dumps({"format": "seqfit-vocab", "version": 1, "level": self.level, "lowercase": self.lowercase,
                           "specials": {"pad": PAD, "unk": UNK, "eos": EOS}, "tokens": self.tokens,
                           "counts": self.counts}, ensure_ascii=False)

    def hash(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    @classmethod
    def load(cls, path: str | Path) -> "Vocab":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format") != "seqfit-vocab":
                raise ValueError("not a seqfit vocabulary")
            return cls(data["tokens"], data["counts"], data["level"], data.get("lowercase", False))
        except FileNotFoundError:
            raise SeqfitError(f"{path} not found: the data directory is incomplete; re-run `seqfit prepare`") from None
        except (ValueError, KeyError, TypeError) as e:
            raise SeqfitError(f"{path} is not a seqfit vocabulary ({e}); re-run `seqfit prepare`") from None


def build_vocab(counts: Counter, *, level: str, min_freq: int = 1, max_size: int = 0, lowercase: bool = False) -> tuple[Vocab, dict]:
    """Prune ``counts`` to a vocabulary; returns it and a report (size, coverage, unknown rate)."""
    total = sum(counts.values())
    # Counter.most_common keeps first-seen order among equal counts: ids are deterministic.
    specials_seen = {tok: counts.get(tok, 0) for tok in SPECIALS}
    kept = [(tok, n) for tok, n in counts.most_common() if tok not in SPECIALS and n >= min_freq]
    room = max_size - len(SPECIALS) if max_size else len(kept)
    if max_size and room < 1:
        raise SeqfitError(f"--max-vocab {max_size} leaves no room beside the {len(SPECIALS)} special tokens")
    kept = kept[:room]
    if not kept:
        raise SeqfitError(f"the vocabulary is empty after pruning (min_freq={min_freq}, max_vocab={max_size}): lower --min-freq or raise --max-vocab")
    tokens = list(SPECIALS) + [t for t, _ in kept]
    kept_count = sum(n for _, n in kept) + specials_seen[EOS]
    unknown = total - kept_count  # tokens that will be encoded as <unk> (including literal <unk>)
    vocab = Vocab(tokens, [specials_seen[t] for t in SPECIALS] + [n for _, n in kept], level, lowercase)
    vocab.counts[1] = unknown
    report = {
        "vocab_size": len(vocab),
        "types_seen": len(counts),
        "coverage": kept_count / total if total else 0.0,
        "unknown_rate": unknown / total if total else 0.0,
    }
    return vocab, report


def smallest_uint_dtype(vocab_size: int) -> np.dtype:
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.uint64)

