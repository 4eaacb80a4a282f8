"""Plain text (.txt and anything unregistered, .gz too): one record per line, in field ``text``."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Sequence

from seqfit.data.readers.base import ReadOptions, RecordBatch
from seqfit.data.readers.lines import read_line_file
from seqfit.errors import SeqfitError

__all__ = ["FORMAT", "EXTENSIONS", "LINE_BASED", "read", "parse_lines", "read_document"]

FORMAT = "text"
EXTENSIONS = (".txt", ".text", ".tokens", ".raw")
LINE_BASED = True


def parse_lines(path: Path, lines: list[str], fields: Sequence[str], fail: Callable[[int, str], None]) -> dict:
    for name in fields:
        if name != "text":
            raise SeqfitError(f"{path}: plain text has one field, 'text' (not {name!r}); use --format jsonl/csv/parquet for fields")
    return {"text": lines}


def read(path: Path, fields: Sequence[str], opts: ReadOptions) -> Iterator[RecordBatch]:
    return read_line_file(path, parse_lines, fields, opts)


def read_document(path: Path, opts: ReadOptions) -> str:
    """A whole (small) file as one text, lines joined by "\\n": one sample per file for classification."""
    from seqfit.data.text import iter_lines

    return "\n".join(iter_lines(path, encoding_errors=opts.encoding_errors))
