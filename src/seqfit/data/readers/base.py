"""The one reader interface: a file becomes a stream of column batches, in bounded memory.

A reader module defines ``FORMAT``, ``EXTENSIONS`` and ``read(path, fields, opts)``; formats whose
records are lines (text, JSON Lines) also define ``parse_lines`` so that worker processes can read
byte ranges of one file in parallel. Values keep their source types (str, numbers, lists); tasks
convert them. Errors name the file and the line (or row) they come from.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence

from seqfit.errors import SeqfitError

__all__ = ["ReadOptions", "RecordBatch", "Reader", "LineError", "open_binary", "is_gzip", "check_not_binary",
           "SNIFF_BYTES"]

SNIFF_BYTES = 8192


@dataclass(frozen=True)
class ReadOptions:
    encoding_errors: str = "strict"  # "strict" | "replace" | "ignore" for bad UTF-8
    batch_rows: int = 8192  # records per batch: bounds memory whatever the file size
    delimiter: str = ","  # CSV only ("\t" for .tsv)
    numeric: tuple[str, ...] = ()  # fields read as float64 NumPy arrays (missing cells become NaN)


@dataclass
class RecordBatch:
    """Consecutive records of one file: ``columns[name][k]`` is field ``name`` of record ``first + k``."""

    path: Path
    first: int  # index of the batch's first record in its file
    columns: dict[str, Sequence[Any]] = field(default_factory=dict)
    lines: Sequence[int] | None = None  # 1-based source line of each record, where known (for errors)

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def where(self, k: int) -> str:
        """'file:line' (or 'file record N') of record k, for error messages."""
        if self.lines is not None:
            return f"{self.path}:{self.lines[k]}"
        return f"{self.path} record {self.first + k + 1}"


class Reader(Protocol):
    FORMAT: str
    EXTENSIONS: tuple[str, ...]

    def read(self, path: Path, fields: Sequence[str], opts: ReadOptions) -> Iterator[RecordBatch]: ...


class LineError(Exception):
    """Raised inside a byte-range worker: the parent turns the byte offset into a line number."""

    def __init__(self, path: str, offset: int, message: str):
        super().__init__(path, offset, message)
        self.path, self.offset, self.message = path, offset, message

    def to_seqfit(self) -> SeqfitError:
        line = _line_of_offset(Path(self.path), self.offset)
        return SeqfitError(f"{self.path}:{line}: {self.message}")


def _line_of_offset(path: Path, offset: int) -> int:
    """1-based line holding byte ``offset`` (counted on error only, by one bounded-memory scan)."""
    newlines, pos = 0, 0
    with open(path, "rb") as f:
        while pos < offset:
            block = f.read(min(1 << 20, offset - pos))
            if not block:
                break
            newlines += block.count(b"\n")
            pos += len(block)
    return newlines + 1


def is_gzip(path: Path) -> bool:
    return path.suffix == ".gz"


def open_binary(path: Path):
    try:
        return gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")
    except OSError as e:
        raise SeqfitError(f"cannot read {path}: {e.strerror}") from None


def check_not_binary(path: Path, head: bytes) -> None:
    """A NUL byte in the first 8 KiB marks a binary file (no text format has one)."""
    nul = head[:SNIFF_BYTES].find(b"\0")
    if nul >= 0:
        raise SeqfitError(f"{path} looks binary (NUL byte at offset {nul}); give text files")
