"""JSON Lines (.jsonl, .ndjson, .gz too): one JSON object per line; blank lines are skipped."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterator, Sequence

from seqfit.data.readers.base import ReadOptions, RecordBatch
from seqfit.data.readers.lines import read_line_file

__all__ = ["FORMAT", "EXTENSIONS", "LINE_BASED", "read", "parse_lines"]

FORMAT = "jsonl"
EXTENSIONS = (".jsonl", ".ndjson", ".json")
LINE_BASED = True


def parse_lines(path: Path, lines: list[str], fields: Sequence[str], fail: Callable[[int, str], None]) -> dict:
    columns: dict[str, list] = {name: [] for name in fields}
    kept: list[int] = []
    for k, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            fail(k, f"malformed JSON ({getattr(e, 'msg', e)} at column {getattr(e, 'colno', '?')})")
        if not isinstance(obj, dict):
            fail(k, f"expected a JSON object, got {type(obj).__name__}")
        for name in fields:
            try:
                columns[name].append(obj[name])
            except KeyError:
                have = ", ".join(list(obj)[:8])
                fail(k, f"no field {name!r} (fields: {have}); choose it with --text-field/--label-field/--columns")
        kept.append(k)
    if len(kept) != len(lines):
        columns["_lines"] = kept  # which lines held records (for line numbers of later errors)
    return columns


def read(path: Path, fields: Sequence[str], opts: ReadOptions) -> Iterator[RecordBatch]:
    for batch in read_line_file(path, parse_lines, fields, opts):
        kept = batch.columns.pop("_lines", None)
        if kept is not None and batch.lines is not None:
            batch.lines = [batch.lines[k] for k in kept]
        yield batch
