"""Work units of text preparation and what a worker does with one: tokenize it, once.

A chunk is a byte range of a plain line-based file (the worker reads it), or records the parent
already read (gzip streams, CSV, Parquet, one-file-per-sample folders). A worker returns the chunk's
tokens as ids local to the chunk plus the local types in first-seen order; the parent, consuming
results in order, maps them to global first-seen ids, so the outcome does not depend on the number
of workers. The parent also knows where each chunk starts in its source, and holds out records by
that position::

    record i of a "mixed" source -> block = block_base + i // 64 + 1
                                    valid if frac(block * golden ratio) < valid_fraction

(a low-discrepancy choice: exactly the asked share of 64-record blocks, spread evenly). Labelled
records (classification) are held out per class instead, so that a small file holds some out too and
valid's class shares follow train's (StratifiedHoldout); both rules see records in plan order, so
neither depends on the number of workers.
Worker state is set once per process by ``init_worker`` (a module global, as a Pool initializer must).
"""

from __future__ import annotations

import math
import zlib
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from itertools import chain
from typing import Any, Iterable, Iterator

import numpy as np

from seqfit.data.readers import ReadOptions, read_range
from seqfit.data.tokenize import make_batch_tokenizer, make_tokenizer
from seqfit.data.vocab import EOS
from seqfit.errors import SeqfitError

__all__ = ["TextTask", "Chunk", "Positions", "record_splits", "StratifiedHoldout", "init_worker", "tokenize_chunk",
           "ChunkResult", "label_text", "BLOCK_RECORDS"]

BLOCK_RECORDS = 64
_GOLDEN = (math.sqrt(5) - 1) / 2
SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class TextTask:
    """What workers need to know, sent once to each (small and picklable)."""

    kind: str  # "lm": each line ends in <eos>; "classify": one sequence per record + a label; "seq2seq": + a target
    text_field: str = "text"
    label_field: str = ""
    fmt: str = "auto"
    level: str = "word"
    lowercase: bool = False
    read: ReadOptions = ReadOptions()
    subword_json: str = ""  # the trained BPE (level "subword")
    target_field: str = ""  # seq2seq: the second text of each record

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(f for f in (self.text_field, self.label_field, self.target_field) if f)


@dataclass(frozen=True)
class Chunk:
    seq: int  # position in the plan (both passes agree)
    source: int  # index of the source (file or class folder) it belongs to
    split: str  # "train" | "valid" | "test" | "mixed" (divided by record position)
    path: str
    start: int = 0  # byte range [start, end) when records is None
    end: int = 0
    records: dict | None = None  # columns read by the parent
    lines: list | None = None  # source line of each record, where known
    first: int = 0  # index of the chunk's first record in its source (set for pass 2)
    block_base: int = 0  # held-out blocks of the mixed sources before this one
    valid_fraction: float = 0.0
    size: int = field(default=0, compare=False)  # bytes, for progress


class Positions:
    """Tracks where each chunk starts in its source, and the block base of mixed sources, in plan order."""

    def __init__(self):
        self.source, self.first, self.block_base, self._blocks_this = -1, 0, 0, 0

    def place(self, chunk: Chunk, records: int) -> tuple[int, int]:
        """(first, block_base) of ``chunk``, which holds ``records`` records; call in plan order."""
        if chunk.source != self.source:
            self.block_base += self._blocks_this
            self.source, self.first, self._blocks_this = chunk.source, 0, 0
        first = self.first
        self.first += records
        if chunk.split == "mixed":
            self._blocks_this = -(-self.first // BLOCK_RECORDS)
        return first, self.block_base


def record_splits(split: str, first: int, n: int, block_base: int, fraction: float) -> np.ndarray:
    """Split name of each of n records starting at position ``first`` of a source."""
    if split != "mixed":
        return np.full(n, split, dtype=object)
    block = block_base + (first + np.arange(n, dtype=np.int64)) // BLOCK_RECORDS + 1
    held_out = (block * _GOLDEN) % 1.0 < fraction
    return np.where(held_out, "valid", "train").astype(object)


class StratifiedHoldout:
    """Which records of "mixed" sources go to valid, class by class, in the order they come.

    After the n-th record of class c, valid holds held(n) of that class's records::

        held(n) = 0                                   n < 2 (a class's first record trains)
                  min(n - 1, max(1, floor(n * f + u_c)))   otherwise

    so valid holds about f of every class (its rounding offset u_c in [0, 1) comes from --seed and the
    class name), at least one record of each class seen twice, and never a class's only record.
    Held-out blocks (record_splits) would hold nothing out of a file shorter than 1 / f blocks of 64.
    """

    def __init__(self, fraction: float, seed: int):
        self.fraction, self.seed = fraction, seed
        self.seen: Counter = Counter()  # class -> records of mixed sources so far
        self._offset: dict[str, float] = {}

    def _held(self, n: int, label: str) -> int:
        if n < 2 or not self.fraction:
            return 0
        u = self._offset.get(label)
        if u is None:  # a stable hash (not Python's salted hash()): the same split in every process
            u = self._offset[label] = zlib.crc32(f"{self.seed}\0{label}".encode()) / 2**32
        return min(n - 1, max(1, math.floor(n * self.fraction + u)))

    def splits(self, split: str, labels: list[str]) -> np.ndarray:
        """Split name of each record (its class in ``labels``) of a chunk of a ``split`` source; call in plan order."""
        if split != "mixed":
            return np.full(len(labels), split, dtype=object)
        out = np.empty(len(labels), dtype=object)
        for k, label in enumerate(labels):
            n = self.seen[label] = self.seen[label] + 1
            out[k] = "valid" if self._held(n, label) > self._held(n - 1, label) else "train"
        return out


@dataclass
class ChunkResult:
    """A chunk's tokens as ids local to the chunk: ``types[i]`` is local id i, in first-seen order."""

    types: list[str]
    ids: np.ndarray  # uint32 local ids of every token, records back to back (lm: <eos> after each line)
    lengths: np.ndarray  # int64 tokens per record (seq2seq: of its source; its target's tokens follow them)
    labels: list[str] | None  # class of each record (classify)
    target_lengths: np.ndarray | None = None  # int64 target tokens per record (seq2seq)

    @property
    def record_tokens(self) -> np.ndarray:
        """Tokens each record occupies in ``ids``."""
        return self.lengths if self.target_lengths is None else self.lengths + self.target_lengths


class _LocalIds(dict):
    """token -> local id, numbering unseen tokens as they come (the lookup stays in C for seen ones)."""

    def __missing__(self, key: str) -> int:
        value = self[key] = len(self)
        return value


class _Worker:
    def __init__(self, task: TextTask):
        self.task = task
        self.tokenize = make_batch_tokenizer(task.level, lowercase=task.lowercase, subword=task.subword_json or None)
        self.one = None if task.level == "subword" else make_tokenizer(task.level, lowercase=task.lowercase)


_STATE: dict[str, _Worker] = {}


def init_worker(task: TextTask) -> None:
    _STATE["w"] = _Worker(task)


def _batches(chunk: Chunk, task: TextTask) -> Iterator[tuple[dict, list | None]]:
    if chunk.records is not None:
        yield chunk.records, chunk.lines
        return
    for batch in read_range(Path(chunk.path), chunk.start, chunk.end, task.fields, task.read, task.fmt):
        yield batch.columns, None


def _where(chunk: Chunk, lines: list | None, k: int) -> str:
    return f"{chunk.path}:{lines[k]}" if lines else chunk.path


def _texts(chunk: Chunk, columns: dict, lines: list | None, name: str) -> list[str]:
    texts = columns[name]
    for k, t in enumerate(texts):
        if not isinstance(t, str):
            raise SeqfitError(f"{_where(chunk, lines, k)}: field {name!r} holds {t!r}, not text")
    return texts


def label_text(value: Any, where: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise SeqfitError(f"{where}: missing label")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def tokenize_chunk(chunk: Chunk) -> ChunkResult:
    """Tokenize every record of a chunk once; the parent maps local ids to global ones, then to the vocabulary."""
    w = _STATE["w"]
    task = w.task
    local = _LocalIds()
    if task.kind == "lm":
        local[EOS] = 0  # every line ends with it
    get = local.__getitem__
    ids = array("I")
    lengths = array("q")
    labels: list[str] | None = [] if task.label_field else None
    target_lengths = array("q") if task.target_field else None
    lm = task.kind == "lm"
    for columns, lines in _batches(chunk, task):
        texts = _texts(chunk, columns, lines, task.text_field)
        if labels is not None:
            labels.extend(label_text(v, _where(chunk, lines, k)) for k, v in enumerate(columns[task.label_field]))
        if target_lengths is None:
            for tokens in _record_tokens(w, texts, lm):
                before = len(ids)
                ids.extend(map(get, tokens))
                lengths.append(len(ids) - before)
        else:  # each record's source ids, then its target's: pass 2 splits them again by the two lengths
            targets = _texts(chunk, columns, lines, task.target_field)
            for source, target in zip(_record_tokens(w, texts, False), _record_tokens(w, targets, False)):
                before = len(ids)
                ids.extend(map(get, source))
                lengths.append(len(ids) - before)
                ids.extend(map(get, target))
                target_lengths.append(len(ids) - before - lengths[-1])
    return ChunkResult(list(local), np.frombuffer(ids, dtype=np.uint32) if len(ids) else np.empty(0, np.uint32),
                       _int64(lengths), labels, None if target_lengths is None else _int64(target_lengths))


def _int64(values: array) -> np.ndarray:
    return np.frombuffer(values, dtype=np.int64) if len(values) else np.empty(0, np.int64)


def _record_tokens(w: _Worker, texts: list[str], lm: bool) -> Iterator[Iterable[str]]:
    """The tokens of each text in turn (lm: every line followed by <eos>)."""
    if w.one is not None:  # word/char: one line at a time keeps memory to a line's tokens
        tok = w.one
        for text in texts:
            yield chain.from_iterable((*tok(line), EOS) for line in text.split("\n")) if lm else tok(text)
        return
    # subword: the batch goes to the Rust encoder at once
    flat = [line for t in texts for line in t.split("\n")] if lm else texts
    encoded = iter(w.tokenize(flat))
    for text in texts:
        if lm:
            yield [t for _ in range(text.count("\n") + 1) for t in (*next(encoded), EOS)]
        else:
            yield next(encoded)
