"""Which files feed which split, and how they are cut into chunks (the same way in every pass)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from seqfit.data.chunks import Chunk, TextTask
from seqfit.data.readers import is_line_based, plan_ranges, read_records, splittable
from seqfit.data.readers.text import read_document
from seqfit.data.text import expand_inputs
from seqfit.errors import SeqfitError

__all__ = ["Source", "resolve_sources", "plan_chunks", "source_bytes", "SPLITS"]

SPLITS = ("train", "valid", "test")
_FILES_PER_CHUNK = 256  # one-file-per-sample folders: files read per chunk


@dataclass(frozen=True)
class Source:
    split: str  # "train" | "valid" | "test" | "mixed" (divided by --valid-fraction)
    path: Path
    kind: str = "file"  # "file" | "classdir" (DIR/<class>/*: one sample per file)


def _expand(items: tuple[str, ...], split: str, opts, classdirs: bool) -> list[Source]:
    out: list[Source] = []
    for item in items:
        path = Path(item)
        if classdirs and path.is_dir():
            out.append(Source(split, path, "classdir"))
        else:
            out.extend(Source(split, p) for p in expand_inputs([item], opts.pattern))
    return out


def resolve_sources(opts) -> list[Source]:
    """Sources in a fixed order (both passes agree), from PrepareOptions."""
    if opts.inputs and opts.train:
        raise SeqfitError("give INPUT files or --train (with --valid/--test), not both")
    if not opts.inputs and not opts.train:
        raise SeqfitError("no input: give INPUT files/folders, or --train FILE")
    if not 0 <= opts.valid_fraction < 1:
        raise SeqfitError(f"--valid-fraction must be in [0, 1), got {opts.valid_fraction}")
    classdirs = opts.task == "classify" and not opts.label_field and not opts.columns
    if opts.train:
        return [s for name in SPLITS for s in _expand(getattr(opts, name), name, opts, classdirs)]
    sources = _expand(opts.inputs, "mixed", opts, classdirs)
    for name in ("valid", "test"):
        sources += _expand(getattr(opts, name), name, opts, classdirs)
    return sources


def mixed_fraction(opts) -> float:
    """Share held out of mixed sources: none when --valid names the validation files."""
    return 0.0 if opts.valid else opts.valid_fraction


def source_bytes(sources: list[Source]) -> int:
    total = 0
    for s in sources:
        if s.kind == "file":
            total += s.path.stat().st_size
        else:
            total += sum(p.stat().st_size for p in s.path.rglob("*") if p.is_file())
    return total


def check_not_empty(sources: list[Source]) -> None:
    files = [s for s in sources if s.kind == "file"]
    if files and all(s.path.stat().st_size == 0 for s in files):
        raise SeqfitError(f"{files[0].path} is empty" if len(files) == 1 else "every input file is empty")


def _class_files(root: Path, pattern: str) -> list[tuple[str, Path]]:
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    if not classes:
        raise SeqfitError(f"{root} has no class folders: expected {root}/<class>/*.txt, one sample per file "
                          "(or give --label-field for JSONL/CSV/Parquet)")
    stray = [p for p in root.iterdir() if p.is_file() and not p.name.startswith(".")]
    if stray:
        raise SeqfitError(f"{stray[0]} is not inside a class folder ({root}/<class>/...)")
    files = [(c.name, f) for c in classes for f in sorted(c.rglob(pattern)) if f.is_file()]
    if not files:
        raise SeqfitError(f"no files matching {pattern!r} in the class folders of {root}")
    return files


def plan_chunks(sources: list[Source], task: TextTask, opts, fraction: float) -> Iterator[Chunk]:
    """Cut every source into chunks; deterministic, so pass 2 sees exactly pass 1's chunks."""
    seq = 0
    for si, src in enumerate(sources):
        common = dict(source=si, split=src.split, path=str(src.path), valid_fraction=fraction)
        if src.kind == "classdir":
            files = _class_files(src.path, opts.pattern)
            for lo in range(0, len(files), _FILES_PER_CHUNK):
                part = files[lo:lo + _FILES_PER_CHUNK]
                records = {task.text_field: [read_document(f, task.read) for _, f in part],
                           task.label_field: [c for c, _ in part]}
                yield Chunk(seq, records=records, **common)
                seq += 1
        elif is_line_based(src.path, task.fmt) and splittable(src.path):
            for start, end in plan_ranges(src.path, opts.chunk_bytes):
                yield Chunk(seq, start=start, end=end, size=end - start, **common)
                seq += 1
        else:
            for batch in read_records(src.path, task.fields, task.read, task.fmt):
                yield Chunk(seq, records=batch.columns, lines=list(batch.lines) if batch.lines else None, **common)
                seq += 1
