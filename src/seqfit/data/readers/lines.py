"""Plumbing shared by line-based formats (text, JSON Lines): whole files as streams, byte ranges for workers.

A line-based format module supplies ``parse_lines(path, lines, fields, fail) -> columns``; ``fail(k, msg)``
raises an error located at line k of the list. Read as a stream (any file, .gz included) lines are
numbered; read as a byte range by a worker, the error carries a byte offset that the parent turns into
a line number (see LineError), because a worker does not know how many lines precede its range.

Line rules match ``seqfit.data.text.iter_lines``: split on b"\\n" only; a line that had a newline loses
its trailing "\\r"s; a last line without a newline is kept as is.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator, Sequence

from seqfit.data.readers.base import LineError, ReadOptions, RecordBatch, check_not_binary, is_gzip
from seqfit.data.text import iter_lines
from seqfit.errors import SeqfitError

__all__ = ["read_line_file", "read_line_range", "plan_ranges", "splittable"]

Parse = Callable[[Path, list[str], Sequence[str], Callable[[int, str], None]], dict]


def splittable(path: Path) -> bool:
    """Byte ranges need random access: plain files only (a gzip stream must be read from its start)."""
    return not is_gzip(path)


def read_line_file(path: Path, parse: Parse, fields: Sequence[str], opts: ReadOptions) -> Iterator[RecordBatch]:
    """Stream a (possibly gzipped) file as batches of parsed records, with line numbers."""
    batch: list[str] = []
    numbers: list[int] = []
    first = 0

    def flush() -> RecordBatch:
        def fail(k: int, msg: str) -> None:
            raise SeqfitError(f"{path}:{numbers[k]}: {msg}")
        return RecordBatch(path, first, parse(path, batch, fields, fail), numbers)

    for number, line in enumerate(iter_lines(path, encoding_errors=opts.encoding_errors), 1):
        batch.append(line)
        numbers.append(number)
        if len(batch) >= opts.batch_rows:
            out = flush()
            first += len(out)
            yield out
            batch, numbers = [], []
    if batch:
        yield flush()


def plan_ranges(path: Path, chunk_bytes: int) -> list[tuple[int, int]]:
    """Cut a plain file into [start, end) ranges of about ``chunk_bytes``, each ending after a newline."""
    size = path.stat().st_size
    ranges, start = [], 0
    with open(path, "rb") as f:
        check_not_binary(path, f.read(8192))
        while start < size:
            end = start + chunk_bytes
            if end >= size:
                end = size
            else:
                f.seek(end)
                rest = f.readline()  # up to and including the next newline
                end += len(rest)
            ranges.append((start, end))
            start = end
    return ranges


def _decode(path: Path, data: bytes, start: int, errors: str) -> str:
    try:
        return data.decode("utf-8", errors=errors)
    except UnicodeDecodeError as e:
        raise SeqfitError(f"{path} is not UTF-8: bad byte 0x{data[e.start]:02x} at byte offset {start + e.start} "
                          "(use --encoding-errors replace to go on)") from None


def read_line_range(path: Path, start: int, end: int, parse: Parse, fields: Sequence[str],
                    opts: ReadOptions) -> Iterator[RecordBatch]:
    """Records of the lines in bytes [start, end) of a plain file (a range from plan_ranges).

    Batches count ``first`` from the range's first record; the caller knows where the range sits.
    """
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    pieces = _decode(path, data, start, opts.encoding_errors).split("\n")
    if pieces[-1] == "":
        pieces.pop()  # the range ends with a newline: no unterminated last line
        terminated = len(pieces)
    else:
        terminated = len(pieces) - 1  # the file's last line has no newline
    lines = [p.rstrip("\r") if k < terminated else p for k, p in enumerate(pieces)]
    del pieces

    def offset_of(k: int) -> int:
        """Byte offset of line k of the range (on error only)."""
        pos = 0
        for _ in range(k):
            pos = data.index(b"\n", pos) + 1
        return start + pos

    done = 0
    for lo in range(0, len(lines), opts.batch_rows):
        chunk = lines[lo:lo + opts.batch_rows]

        def fail(k: int, msg: str, lo=lo) -> None:
            raise LineError(os.fspath(path), offset_of(lo + k), msg)
        columns = parse(path, chunk, fields, fail)
        columns.pop("_lines", None)
        batch = RecordBatch(path, done, columns, None)
        done += len(batch)
        yield batch
