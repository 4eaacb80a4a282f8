"""CSV and TSV (.csv, .tsv, .gz too) through pyarrow's streaming reader: one block in memory at a time."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator, Sequence

import pyarrow as pa
import pyarrow.csv as pacsv

from seqfit.data.readers.base import ReadOptions, RecordBatch, check_not_binary
from seqfit.data.readers.columns import to_columns
from seqfit.errors import SeqfitError

__all__ = ["FORMAT", "EXTENSIONS", "LINE_BASED", "read"]

FORMAT = "csv"
EXTENSIONS = (".csv", ".tsv", ".tab")
LINE_BASED = False
_BLOCK_BYTES = 4 << 20  # bytes parsed per block: the reader's memory


def _stream(path: Path):
    try:
        return pa.input_stream(str(path), compression="detect")
    except (OSError, pa.ArrowException) as e:
        raise SeqfitError(f"cannot read {path}: {e}") from None


def _header(path: Path, delimiter: str) -> list[str]:
    with _stream(path) as f:
        reader = pacsv.open_csv(f, read_options=pacsv.ReadOptions(use_threads=False, block_size=1 << 16),
                                parse_options=pacsv.ParseOptions(delimiter=delimiter))
        return reader.schema.names


def read(path: Path, fields: Sequence[str], opts: ReadOptions) -> Iterator[RecordBatch]:
    delimiter = "\t" if any(s in (".tsv", ".tab") for s in path.suffixes) else opts.delimiter
    with _stream(path) as f:
        head = f.read(8192)
    if not head.strip():
        raise SeqfitError(f"{path} is empty")
    check_not_binary(path, head)
    bad_rows: list = []

    def on_invalid(row) -> str:
        bad_rows.append(row)
        return "error"

    types = {name: (pa.float64() if name in opts.numeric else pa.string()) for name in fields}
    try:
        names = _header(path, delimiter)
        missing = [name for name in fields if name not in names]
        if missing:
            raise SeqfitError(f"{path}: no column {missing[0]!r} (columns: {', '.join(names[:12])})")
        with _stream(path) as f:
            reader = pacsv.open_csv(
                f, read_options=pacsv.ReadOptions(use_threads=False, block_size=_BLOCK_BYTES),
                parse_options=pacsv.ParseOptions(delimiter=delimiter, invalid_row_handler=on_invalid),
                convert_options=pacsv.ConvertOptions(include_columns=list(fields), column_types=types))
            first = 0
            for table in reader:
                batch = RecordBatch(path, first, to_columns(table, fields, opts.numeric))
                first += len(batch)
                yield batch
    except pa.ArrowInvalid as e:
        if bad_rows:
            row = bad_rows[0]
            where = f"{path}:{row.number}" if row.number and row.number > 0 else str(path)
            raise SeqfitError(f"{where}: malformed CSV row (expected {row.expected_columns} columns, "
                              f"got {row.actual_columns}): {row.text[:80]!r}") from None
        message = str(e).splitlines()[0]
        row = re.search(r"Row #(\d+): Expected (\d+) columns, got (\d+): (.*)", message)
        if row:
            raise SeqfitError(f"{path}:{row[1]}: malformed CSV row (expected {row[2]} columns, got {row[3]}): "
                              f"{row[4][:80]!r}") from None
        raise SeqfitError(f"{path}: {message}") from None
    except pa.ArrowException as e:
        raise SeqfitError(f"{path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    except UnicodeDecodeError as e:  # pyarrow decodes the header names strictly
        raise SeqfitError(f"{path} is not UTF-8: bad byte 0x{e.object[e.start]:02x} in its header") from None
