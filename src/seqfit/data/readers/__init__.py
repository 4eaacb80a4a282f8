"""Readers: every input format as one stream of RecordBatch, chosen by --format or the file extension.

A new format is one module with FORMAT, EXTENSIONS, LINE_BASED and ``read(path, fields, opts)``
(line-based formats add ``parse_lines`` so workers can read byte ranges); add it to ``_MODULES``.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Iterator, Sequence

import numpy as np

from seqfit.data.readers import csv, jsonl, parquet, text
from seqfit.data.readers.base import LineError, ReadOptions, RecordBatch
from seqfit.data.readers.lines import plan_ranges, read_line_range, splittable
from seqfit.errors import SeqfitError

__all__ = ["FORMATS", "ReadOptions", "RecordBatch", "LineError", "detect_format", "reader_for", "read_records",
           "read_range", "plan_ranges", "splittable", "is_line_based"]

_MODULES: tuple[ModuleType, ...] = (text, jsonl, csv, parquet)
READERS = {m.FORMAT: m for m in _MODULES}
FORMATS = ("auto",) + tuple(READERS)


def detect_format(path: Path) -> str:
    """Format from the extension under any .gz; unknown extensions read as plain text."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    ext = suffixes[-1] if suffixes else ""
    for module in _MODULES:
        if ext in module.EXTENSIONS:
            return module.FORMAT
    return "text"


def reader_for(path: Path, fmt: str = "auto") -> ModuleType:
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt not in READERS:
        raise SeqfitError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return READERS[fmt]


def _numeric(batch: RecordBatch, numeric: Sequence[str]) -> RecordBatch:
    """Line formats hold Python values: make numeric fields float64 arrays (null -> NaN), as Arrow does."""
    for name in numeric:
        values = batch.columns[name]
        if isinstance(values, np.ndarray):
            continue
        try:
            batch.columns[name] = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        except (TypeError, ValueError):
            for k, v in enumerate(values):
                if not isinstance(v, (int, float)) and v is not None:
                    raise SeqfitError(f"{batch.where(k)}: field {name!r} is {v!r}, not a number") from None
            raise
    return batch


def read_records(path: Path, fields: Sequence[str], opts: ReadOptions = ReadOptions(), fmt: str = "auto") -> Iterator[RecordBatch]:
    """All records of one file, streamed in batches of ``opts.batch_rows``."""
    module = reader_for(path, fmt)
    for batch in module.read(Path(path), fields, opts):
        yield _numeric(batch, opts.numeric) if opts.numeric else batch


def read_range(path: Path, start: int, end: int, fields: Sequence[str], opts: ReadOptions,
               fmt: str = "auto") -> Iterator[RecordBatch]:
    """Records of bytes [start, end) of a plain line-based file (ranges from plan_ranges); errors raise LineError."""
    module = reader_for(path, fmt)
    if not module.LINE_BASED:
        raise ValueError(f"{module.FORMAT} files cannot be read by byte range")
    for batch in read_line_range(Path(path), start, end, module.parse_lines, fields, opts):
        yield _numeric(batch, opts.numeric) if opts.numeric else batch


def is_line_based(path: Path, fmt: str = "auto") -> bool:
    return reader_for(path, fmt).LINE_BASED
