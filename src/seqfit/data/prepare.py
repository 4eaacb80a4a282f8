"""`seqfit prepare` for text: two streaming passes, so memory does not grow with the corpus.

Pass 1 counts tokens (memory ~ distinct tokens, not corpus size) and sizes each split;
pass 2 encodes lines into ids and appends them to each split's file in fixed-size blocks.
Everything is built in a staging directory that replaces DATA_DIR only when complete.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from seqfit.atomic import staged_directory
from seqfit.data.store import STORE_FORMAT, STORE_VERSION
from seqfit.data.text import expand_inputs, iter_lines
from seqfit.data.tokenize import make_tokenizer
from seqfit.data.vocab import EOS, build_vocab, smallest_uint_dtype
from seqfit.errors import SeqfitError

__all__ = ["PrepareOptions", "prepare_text", "SPLITS"]

SPLITS = ("train", "valid", "test")
_BLOCK_LINES = 64  # held-out lines are chosen in blocks, so valid text stays locally contiguous
_WRITE_TOKENS = 1 << 20  # ids buffered per split before a write
_GOLDEN = (math.sqrt(5) - 1) / 2


@dataclass(frozen=True)
class PrepareOptions:
    out: Path
    inputs: tuple[str, ...] = ()  # split by --valid-fraction
    train: tuple[str, ...] = ()  # explicit split files
    valid: tuple[str, ...] = ()
    test: tuple[str, ...] = ()
    level: str = "word"
    min_freq: int = 1
    max_vocab: int = 0
    lowercase: bool = False
    valid_fraction: float = 0.05  # used only without explicit --valid
    pattern: str = "*"
    encoding_errors: str = "strict"
    overwrite: bool = False


@dataclass
class _Source:
    """Where lines come from: explicit split files, or mixed files divided by blocks."""

    files: dict[str, list[Path]] = field(default_factory=dict)  # split -> files; "mixed" is divided
    valid_fraction: float = 0.0

    def lines(self, opts: PrepareOptions) -> Iterator[tuple[str, str]]:
        """(split, line) for every line of every file, in a fixed order (both passes agree)."""
        block = 0
        for split, files in self.files.items():
            for path in files:
                for i, line in enumerate(iter_lines(path, encoding_errors=opts.encoding_errors)):
                    if split != "mixed":
                        yield split, line
                        continue
                    if i % _BLOCK_LINES == 0:
                        block += 1
                    # Low-discrepancy choice: exactly the asked share of blocks, spread evenly.
                    held_out = (block * _GOLDEN) % 1.0 < self.valid_fraction
                    yield ("valid" if held_out else "train"), line


def _resolve_sources(opts: PrepareOptions) -> _Source:
    if opts.inputs and opts.train:
        raise SeqfitError("give INPUT files or --train (with --valid/--test), not both")
    if not opts.inputs and not opts.train:
        raise SeqfitError("no input: give INPUT files/folders, or --train FILE")
    if not 0 <= opts.valid_fraction < 1:
        raise SeqfitError(f"--valid-fraction must be in [0, 1), got {opts.valid_fraction}")
    if opts.train:
        files = {name: expand_inputs(list(getattr(opts, name)), opts.pattern)
                 for name in SPLITS if getattr(opts, name)}
        return _Source(files)
    source = _Source({"mixed": expand_inputs(list(opts.inputs), opts.pattern)}, opts.valid_fraction)
    if opts.valid or opts.test:
        source.files.update({name: expand_inputs(list(getattr(opts, name)), opts.pattern)
                             for name in ("valid", "test") if getattr(opts, name)})
        source.valid_fraction = 0.0 if opts.valid else opts.valid_fraction
    return source


def _check_inputs_not_empty(source: _Source) -> None:
    for files in source.files.values():
        for path in files:
            if path.stat().st_size == 0 and len(files) == 1:
                raise SeqfitError(f"{path} is empty")


def prepare_text(opts: PrepareOptions) -> dict:
    """Build a token store from text; returns the report (also saved in meta.json)."""
    out = Path(opts.out)
    if (out / "meta.json").exists() and not opts.overwrite:
        raise SeqfitError(f"{out} already holds a prepared store; use --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise SeqfitError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not opts.overwrite:
        raise SeqfitError(f"{out} is not empty; choose a new --out or use --overwrite")
    source = _resolve_sources(opts)
    _check_inputs_not_empty(source)
    tokenize = make_tokenizer(opts.level, lowercase=opts.lowercase)
    started = time.perf_counter()

    # Pass 1: count tokens and split sizes.
    counts: Counter = Counter()
    split_tokens = dict.fromkeys(SPLITS, 0)
    for split, line in source.lines(opts):
        tokens = tokenize(line)
        counts.update(tokens)
        split_tokens[split] += len(tokens) + 1
    counts[EOS] += sum(split_tokens.values())  # one end-of-line token per line
    total = sum(split_tokens.values())
    if total == 0:
        raise SeqfitError("the input holds no text (empty files)")
    if len(counts) == 1:
        raise SeqfitError("the input holds only blank lines")
    vocab, vocab_report = build_vocab(counts, level=opts.level, min_freq=opts.min_freq,
                                      max_size=opts.max_vocab, lowercase=opts.lowercase)
    del counts  # the largest object of pass 1
    dtype = smallest_uint_dtype(len(vocab))

    # Pass 2: encode, appending each split's ids to its file.
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SeqfitError(f"cannot create {out.parent}: {e.strerror}") from None
    try:
        with staged_directory(out, overwrite=opts.overwrite) as stage:
            _encode(source, opts, tokenize, vocab, dtype, stage, split_tokens)
            vocab_text = vocab.to_json()
            (stage / "vocab.json").write_text(vocab_text, encoding="utf-8")
            meta = {
                "format": STORE_FORMAT, "version": STORE_VERSION, "kind": "tokens",
                "level": opts.level, "lowercase": opts.lowercase, "dtype": dtype.name,
                "vocab_size": len(vocab), "vocab_hash": vocab.hash(),
                "splits": {name: {"tokens": n, "shards": [{"file": f"{name}.bin", "tokens": n}] if n else []}
                           for name, n in split_tokens.items()},
                "sources": {split: [str(p) for p in files] for split, files in source.files.items()},
                "report": {"tokens": total, **vocab_report,
                           "seconds": round(time.perf_counter() - started, 3)},
            }
            (stage / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    except PermissionError as e:
        raise SeqfitError(f"cannot write {out}: {e.strerror}") from None
    return meta


def _encode(source: _Source, opts: PrepareOptions, tokenize, vocab, dtype: np.dtype, stage: Path,
            expected: dict[str, int]) -> None:
    index, unk, eos = vocab.index, vocab.unk_id, vocab.eos_id
    buffers: dict[str, list[int]] = {name: [] for name in SPLITS}
    files = {name: open(stage / f"{name}.bin", "wb") for name, n in expected.items() if n}
    written = dict.fromkeys(SPLITS, 0)
    try:
        for split, line in source.lines(opts):
            buf = buffers[split]
            buf.extend([index.get(t, unk) for t in tokenize(line)])
            buf.append(eos)
            if len(buf) >= _WRITE_TOKENS:
                files[split].write(np.asarray(buf, dtype=dtype).tobytes())
                written[split] += len(buf)
                buf.clear()
        for split, buf in buffers.items():
            if buf:
                files[split].write(np.asarray(buf, dtype=dtype).tobytes())
                written[split] += len(buf)
    finally:
        for f in files.values():
            f.close()
    if written != expected:
        raise SeqfitError(f"inputs changed while being read (counted {expected}, encoded {written}); run prepare again")
