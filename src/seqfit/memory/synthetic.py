"""A synthetic token store of any vocabulary size, for the planner's probes and benchmarks.

Token ids follow Zipf's law (id i drawn with probability ~ 1 / (i + 1)), as a prepared corpus's ids
sorted by frequency do, so the adaptive head's cutoffs land where they would on real text.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from seqfit.data.store import STORE_FORMAT, STORE_VERSION
from seqfit.data.vocab import SPECIALS, Vocab, smallest_uint_dtype

__all__ = ["write_synthetic_store", "write_synthetic_sequences"]


def write_synthetic_store(out: str | Path, vocab_size: int, tokens: int, *, valid_tokens: int = 0,
                          seed: int = 0) -> Path:
    """Write DATA_DIR with a `train` split of ``tokens`` ids (and `valid` if asked); returns the directory."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, vocab_size + 1)  # (V,) Zipf weights
    counts = np.maximum(1, (p / p.sum() * max(tokens, vocab_size) * 10).astype(np.int64))
    words = [f"w{i}" for i in range(vocab_size - len(SPECIALS))]
    vocab = Vocab(list(SPECIALS) + words, [int(c) for c in counts], "word")
    dtype = smallest_uint_dtype(vocab_size)
    splits = {}
    for split, n in (("train", tokens), ("valid", valid_tokens)):
        if n <= 0:
            continue
        ids = rng.choice(vocab_size, size=n, p=p / p.sum()).astype(dtype)  # (n,)
        ids.tofile(out / f"{split}.bin")
        splits[split] = {"tokens": int(n), "shards": [{"file": f"{split}.bin", "tokens": int(n)}]}
    text = vocab.to_json()
    (out / "vocab.json").write_text(text, encoding="utf-8")
    meta = {"format": STORE_FORMAT, "version": STORE_VERSION, "kind": "tokens", "level": "word", "lowercase": False,
            "dtype": dtype.name, "vocab_size": vocab_size, "vocab_hash": vocab.hash(), "splits": splits,
            "sources": {}, "report": {"synthetic": True}}
    (out / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return out


def write_synthetic_sequences(out: str | Path, lengths, *, vocab_size: int = 0, num_features: int = 0,
                              num_classes: int = 2, seed: int = 0) -> Path:
    """Write a labelled "sequences" DATA_DIR whose train split holds sequences of the given lengths: token ids
    (vocab_size) or float rows (num_features), random labels. Returns the directory."""
    from seqfit.data.sequences import SequenceWriter

    if (vocab_size > 0) == (num_features > 0):
        raise ValueError("give vocab_size or num_features")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lengths = np.asarray(lengths, dtype=np.int64)
    rows = int(lengths.sum())
    dtype = smallest_uint_dtype(vocab_size) if vocab_size else np.dtype(np.float32)
    writer = SequenceWriter(out, "train", dtype, num_features=num_features, labels=True)
    values = (rng.integers(len(SPECIALS), vocab_size, rows).astype(dtype) if vocab_size
              else rng.standard_normal((rows, num_features)).astype(np.float32))
    writer.add(values, lengths, rng.integers(0, num_classes, len(lengths)))
    meta = {"format": STORE_FORMAT, "version": STORE_VERSION, "kind": "sequences", "dtype": dtype.name,
            "num_features": num_features, "label_names": [f"c{i}" for i in range(num_classes)],
            "splits": {"train": writer.close()}, "report": {"synthetic": True}}
    if vocab_size:
        vocab = Vocab(list(SPECIALS) + [f"w{i}" for i in range(vocab_size - len(SPECIALS))], [1] * vocab_size, "word")
        (out / "vocab.json").write_text(vocab.to_json(), encoding="utf-8")
        meta.update(vocab_size=vocab_size, vocab_hash=vocab.hash())
    (out / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return out
