"""`seqfit prepare`: raw data -> a memory-mapped store, in streaming passes whose memory does not grow with the input.

Text (language modelling, or classification of texts):
  pass 0 (subword only) trains a BPE on the streamed texts;
  pass 1 tokenizes every chunk once (in worker processes for large inputs), maps its tokens to
         global first-seen ids, counts them, and appends the ids to a temporary uint32 file per split;
  pass 2 builds the vocabulary from the counts (memory ~ distinct tokens) and rewrites the temporary
         ids through a NumPy lookup table into size-capped shards of the smallest dtype.
Results are consumed in chunk order, so the output is byte-identical for any number of workers.
Numeric inputs (time series, numeric sequences) go through prepare_numeric.
Everything is built in a staging directory that replaces DATA_DIR only when complete.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np

from seqfit.atomic import staged_directory
from seqfit.data.chunks import Positions, StratifiedHoldout, TextTask, init_worker, record_splits, tokenize_chunk
from seqfit.data.parallel import default_workers, ordered_map
from seqfit.data.prepare_options import TASKS, PrepareOptions, check_options, check_out, sort_labels
from seqfit.data.readers import LineError, ReadOptions, read_records
from seqfit.data.readers.text import read_document
from seqfit.data.sequences import TARGET_VOCAB_FILE, SequenceWriter
from seqfit.data.shards import ShardWriter
from seqfit.data.sources import (SPLITS, Source, _class_files, check_not_empty, mixed_fraction, plan_chunks,
                                 resolve_sources, source_bytes)
from seqfit.data.store import STORE_FORMAT, STORE_VERSION
from seqfit.data.vocab import build_vocab, smallest_uint_dtype
from seqfit.errors import SeqfitError

__all__ = ["PrepareOptions", "prepare", "prepare_text", "SPLITS", "TASKS"]

def prepare(opts: PrepareOptions) -> dict:
    """Build the store ``opts.task`` asks for; returns meta.json's content (its "report" for the user)."""
    check_options(opts)
    if opts.task == "series" or (opts.task == "classify" and opts.columns):
        from seqfit.data.prepare_numeric import prepare_numeric
        return prepare_numeric(opts)
    return prepare_text(opts)


def _text_task(opts: PrepareOptions, sources: list[Source]) -> TextTask:
    read = ReadOptions(encoding_errors=opts.encoding_errors)
    if opts.task == "classify":
        if any(s.kind == "classdir" for s in sources):
            return TextTask("classify", "text", "label", opts.fmt, opts.level, opts.lowercase, read)
        if not opts.label_field:
            raise SeqfitError("--task classify needs --label-field (JSONL/CSV/Parquet), or folders DIR/<class>/*.txt")
        return TextTask("classify", opts.text_field, opts.label_field, opts.fmt, opts.level, opts.lowercase, read)
    if opts.task == "seq2seq":
        if any(s.kind == "classdir" for s in sources):
            raise SeqfitError("--task seq2seq reads JSONL/CSV/Parquet records with --text-field and --target-field, "
                              "not folders")
        return TextTask("seq2seq", opts.text_field, "", opts.fmt, opts.level, opts.lowercase, read,
                        target_field=opts.target_field)
    return TextTask("lm", opts.text_field, "", opts.fmt, opts.level, opts.lowercase, read)


def _training_texts(sources: list[Source], task: TextTask, opts: PrepareOptions) -> Iterator[str]:
    """Every text, streamed, for the BPE trainer (lowercased as the tokenizer will see them)."""
    for src in sources:
        if src.kind == "classdir":
            texts = (read_document(f, task.read) for _, f in _class_files(src.path, opts.pattern))
        else:
            texts = (t for b in read_records(src.path, task.fields, task.read, task.fmt)
                     for name in (task.text_field, task.target_field) if name
                     for t in b.columns[name] if isinstance(t, str))
        for t in texts:
            yield t.lower() if task.lowercase else t


def _with_subword(task: TextTask, sources: list[Source], opts: PrepareOptions) -> TextTask:
    if task.level != "subword":
        return task
    from seqfit.data.subword import train_bpe
    model = train_bpe(_training_texts(sources, task, opts), vocab_size=opts.bpe_vocab)
    return replace(task, subword_json=model.to_str())


def _ordered(fn, chunks, workers: int, initargs: tuple):
    """ordered_map that turns a worker's LineError (a byte offset) into a file:line SeqfitError."""
    try:
        yield from ordered_map(fn, chunks, workers=workers, initializer=init_worker, initargs=initargs)
    except LineError as e:
        raise e.to_seqfit() from None


_TMP = {"ids": np.uint32, "lengths": np.int64, "labels": np.int64, "target_lengths": np.int64}
_BLOCK = 1 << 18  # elements per read when rewriting the temporary files (small: peak must not grow with the corpus)


@dataclass
class _Pass1:
    """What the tokenizing pass leaves: global types and counts, labels, and temporary per-split files."""

    types: dict  # token -> global id, first-seen order
    counts: np.ndarray  # global id -> count
    labels: dict  # label -> provisional id, first-seen order
    label_counts: Counter
    sizes: dict  # split -> {"ids": n, "lengths": n, "labels": n}
    target_counts: np.ndarray | None = None  # --separate-vocab: global id -> count among targets (counts: sources)


def _tokenize_pass(sources, task, opts, fraction, workers, stage: Path) -> _Pass1:
    types: dict[str, int] = {}
    counts = np.zeros(1 << 16, dtype=np.int64)
    target_counts = np.zeros(1 << 16, dtype=np.int64) if opts.separate_vocab else None
    labels: dict[str, int] = {}
    label_counts: Counter = Counter()
    files = {(split, kind): open(stage / f".{split}.{kind}.tmp", "wb") for split in SPLITS for kind in _TMP}
    sizes = {split: dict.fromkeys(_TMP, 0) for split in SPLITS}
    positions = Positions()
    stratified = StratifiedHoldout(fraction, opts.seed) if task.kind == "classify" else None
    codes = {name: i for i, name in enumerate(SPLITS)}

    def put(split: str, kind: str, values: np.ndarray) -> None:
        files[split, kind].write(np.ascontiguousarray(values, dtype=_TMP[kind]).tobytes())
        sizes[split][kind] += len(values)

    try:
        for chunk, res in _ordered(tokenize_chunk, plan_chunks(sources, task, opts, fraction), workers, (task,)):
            lut = np.fromiter((types.setdefault(t, len(types)) for t in res.types), dtype=np.int64, count=len(res.types))
            if len(types) > len(counts):
                grow = np.zeros(max(len(types), 2 * len(counts)) - len(counts), np.int64)
                counts = np.concatenate([counts, grow])
                target_counts = None if target_counts is None else np.concatenate([target_counts, grow])
            if target_counts is None:
                counts[lut] += np.bincount(res.ids, minlength=len(lut))  # lut is one-to-one: no repeated index
            else:  # each record's source ids, then its target's
                is_target = _target_mask(res.lengths, res.target_lengths)
                counts[lut] += np.bincount(res.ids[~is_target], minlength=len(lut))
                target_counts[lut] += np.bincount(res.ids[is_target], minlength=len(lut))
            ids = lut.astype(np.uint32)[res.ids]  # global ids, (n_tokens,)
            n = len(res.lengths)
            label_ids = None
            if res.labels is not None:
                label_counts.update(res.labels)
                label_ids = np.fromiter((labels.setdefault(x, len(labels)) for x in res.labels), dtype=np.int64, count=n)
            first, base = positions.place(chunk, n)
            if stratified is not None:  # classes: a share of each class, even from a small file
                split_of = stratified.splits(chunk.split, res.labels)
            else:
                split_of = record_splits(chunk.split, first, n, base, fraction)
            code = np.fromiter((codes[x] for x in split_of), dtype=np.int8, count=n)
            token_code = np.repeat(code, res.record_tokens)
            for split, c in codes.items():
                if not (code == c).any():
                    continue
                whole = bool((code == c).all())
                put(split, "ids", ids if whole else ids[token_code == c])
                if task.kind != "lm":  # a stream needs no per-record lengths
                    put(split, "lengths", res.lengths if whole else res.lengths[code == c])
                if label_ids is not None:
                    put(split, "labels", label_ids if whole else label_ids[code == c])
                if res.target_lengths is not None:
                    put(split, "target_lengths", res.target_lengths if whole else res.target_lengths[code == c])
    finally:
        for f in files.values():
            f.close()
    return _Pass1(types, counts[:len(types)], labels, label_counts, sizes,
                  None if target_counts is None else target_counts[:len(types)])


def _target_mask(lengths: np.ndarray, target_lengths: np.ndarray) -> np.ndarray:
    """Records' ids laid out source, target, source, target, ...: True where an id belongs to a target."""
    return np.repeat(np.tile([False, True], len(lengths)), np.stack([lengths, target_lengths], 1).ravel())


def _read_tmp(stage: Path, split: str, kind: str, start: int, count: int) -> np.ndarray:
    dtype = np.dtype(_TMP[kind])
    with open(stage / f".{split}.{kind}.tmp", "rb") as f:
        f.seek(start * dtype.itemsize)
        return np.frombuffer(f.read(count * dtype.itemsize), dtype=dtype)


def _remove_tmp(stage: Path) -> None:
    for split in SPLITS:
        for kind in _TMP:
            (stage / f".{split}.{kind}.tmp").unlink(missing_ok=True)


def prepare_text(opts: PrepareOptions) -> dict:
    """Build a token store (task "lm") or a labelled sequence store (task "classify") from text."""
    out = check_out(opts)
    sources = resolve_sources(opts)
    check_not_empty(sources)
    task = _text_task(opts, sources)
    started = time.perf_counter()
    workers = opts.workers or default_workers(source_bytes(sources))
    fraction = mixed_fraction(opts)
    task = _with_subword(task, sources, opts)

    try:
        with staged_directory(out, overwrite=opts.overwrite) as stage:
            p1 = _tokenize_pass(sources, task, opts, fraction, workers, stage)
            if p1.counts.sum() + (0 if p1.target_counts is None else p1.target_counts.sum()) == 0:
                raise SeqfitError("the input holds no text (empty files)")
            if task.kind != "classify" and len(p1.types) == 1:
                raise SeqfitError("the input holds only blank lines")
            if task.kind == "classify" and len(p1.labels) < 2:
                raise SeqfitError(f"classification needs at least 2 classes, found {len(p1.labels)} "
                                  f"({', '.join(p1.labels) or 'none'})")
            vocab, vocab_report = _vocab(p1.types, p1.counts, opts)
            target_vocab = None if p1.target_counts is None else _vocab(p1.types, p1.target_counts, opts)[0]
            dtype = smallest_uint_dtype(max(len(vocab), len(target_vocab or vocab)))
            remap = _remap(p1.types, vocab, dtype)  # global id -> id
            target_remap = None if target_vocab is None else _remap(p1.types, target_vocab, dtype)
            label_names = sort_labels(p1.labels)
            if task.kind == "lm":
                splits = _write_stream(stage, p1, remap, dtype, opts)
            else:
                position = {name: i for i, name in enumerate(label_names)}
                label_remap = np.array([position[x] for x in p1.labels], dtype=np.int64)
                splits = _write_sequences(stage, p1, remap, label_remap if task.kind == "classify" else None, dtype, opts,
                                          pairs=task.kind == "seq2seq", target_remap=target_remap)
            _remove_tmp(stage)
            vocab_text = vocab.to_json()
            (stage / "vocab.json").write_text(vocab_text, encoding="utf-8")
            if target_vocab is not None:
                (stage / TARGET_VOCAB_FILE).write_text(target_vocab.to_json(), encoding="utf-8")
            if task.subword_json:
                (stage / "tokenizer.json").write_text(task.subword_json, encoding="utf-8")
            meta = {
                "format": STORE_FORMAT, "version": STORE_VERSION,
                "kind": "tokens" if task.kind == "lm" else "sequences",
                "level": opts.level, "lowercase": opts.lowercase, "dtype": dtype.name,
                "vocab_size": len(vocab), "vocab_hash": vocab.hash(), "splits": splits,
                "sources": {s.split: [] for s in sources},
                "report": {"tokens": sum(s["tokens"] for s in splits.values()), **vocab_report, "workers": workers},
            }
            for s in sources:
                meta["sources"][s.split].append(str(s.path))
            if task.kind != "lm":
                meta.update(num_features=0, label_names=label_names, task=task.kind)
                meta["report"]["sequences"] = {k: v["sequences"] for k, v in splits.items()}
            if task.kind == "classify":
                meta["report"]["label_counts"] = {name: p1.label_counts[name] for name in label_names}
            if target_vocab is not None:
                meta.update(target_vocab_size=len(target_vocab), target_vocab_hash=target_vocab.hash())
                meta["report"]["target_vocab_size"] = len(target_vocab)
            if task.kind == "seq2seq":
                meta["report"]["target_tokens"] = sum(v["target"]["tokens"] for v in splits.values() if v["target"])
            if opts.embeddings:
                from seqfit.data.embeddings import restrict_embeddings
                meta["embeddings"] = restrict_embeddings(opts.embeddings, vocab, stage / "embeddings.npy",
                                                         dtype=opts.embeddings_dtype, seed=opts.seed)
                meta["report"]["embeddings_coverage"] = meta["embeddings"]["coverage"]
            meta["report"]["seconds"] = round(time.perf_counter() - started, 3)
            (stage / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    except PermissionError as e:
        raise SeqfitError(f"cannot write {out}: {e.strerror}") from None
    return meta


def _write_stream(stage: Path, p1: _Pass1, remap: np.ndarray, dtype, opts) -> dict:
    splits = {}
    for split in SPLITS:
        writer = ShardWriter(stage, split, dtype, shard_bytes=opts.shard_bytes)
        n = p1.sizes[split]["ids"]
        for lo in range(0, n, _BLOCK):
            writer.write(remap[_read_tmp(stage, split, "ids", lo, min(_BLOCK, n - lo))])
        splits[split] = {"tokens": writer.total, "shards": writer.close()}
    return splits


def _vocab(types: dict, counts: np.ndarray, opts):
    """(Vocab, report) of tokens counted in first-seen order (the order breaks frequency ties)."""
    return build_vocab(Counter(dict(zip(types, counts.tolist()))), level=opts.level, min_freq=opts.min_freq,
                       max_size=opts.max_vocab, lowercase=opts.lowercase)


def _remap(types: dict, vocab, dtype) -> np.ndarray:
    get, unk = vocab.index.get, vocab.unk_id
    return np.fromiter((get(t, unk) for t in types), dtype=dtype, count=len(types))


def _write_sequences(stage: Path, p1: _Pass1, remap: np.ndarray, label_remap: np.ndarray | None, dtype, opts, *,
                     pairs: bool = False, target_remap: np.ndarray | None = None) -> dict:
    """Rewrite pass 1's ids as sequences (+ labels, or + targets: pass 1 wrote each record's source ids, then its target's)."""
    splits = {}
    for split in SPLITS:
        writer = SequenceWriter(stage, split, dtype, labels=label_remap is not None, target=pairs,
                                shard_bytes=opts.shard_bytes)
        n, pos = p1.sizes[split]["lengths"], 0
        for lo in range(0, n, _BLOCK):
            count = min(_BLOCK, n - lo)
            lengths = _read_tmp(stage, split, "lengths", lo, count)
            labels = label_remap[_read_tmp(stage, split, "labels", lo, count)] if label_remap is not None else None
            if not pairs:
                total = int(lengths.sum())
                writer.add(remap[_read_tmp(stage, split, "ids", pos, total)], lengths, labels)
                pos += total
                continue
            target_lengths = _read_tmp(stage, split, "target_lengths", lo, count)
            total = int(lengths.sum() + target_lengths.sum())
            ids = _read_tmp(stage, split, "ids", pos, total)  # global ids
            pos += total
            is_target = _target_mask(lengths, target_lengths)
            writer.add(remap[ids[~is_target]], lengths, labels, (remap if target_remap is None else target_remap)[ids[is_target]],
                       target_lengths)
        splits[split] = writer.close()
    return splits
