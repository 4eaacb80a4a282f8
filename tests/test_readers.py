import gzip
import json

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from seqfit.data.readers import ReadOptions, detect_format, plan_ranges, read_range, read_records
from seqfit.data.text import iter_lines

RECORDS = [{"text": "naïve café — ok", "label": "pos", "x": 1.5},
           {"text": "plain words here", "label": "neg", "x": -2.0},
           {"text": "a, \"quoted\" comma", "label": "pos", "x": 0.0},
           {"text": "last one", "label": "neu", "x": 3.25}] * 7


def _gzip(path):
    gz = path.with_name(path.name + ".gz")
    gz.write_bytes(gzip.compress(path.read_bytes()))
    return gz


def _write(tmp_path, kind):
    table = pa.table({k: [r[k] for r in RECORDS] for k in ("text", "label", "x")})
    if kind == "jsonl":
        path = tmp_path / "r.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in RECORDS), encoding="utf-8")
    elif kind == "csv":
        path = tmp_path / "r.csv"
        pacsv.write_csv(table, path)
    elif kind == "tsv":
        path = tmp_path / "r.tsv"
        pacsv.write_csv(table, path, pacsv.WriteOptions(delimiter="\t"))
    else:
        path = tmp_path / "r.parquet"
        pq.write_table(table, path, row_group_size=5)
    return path


def _read_all(path, fields, **kw):
    opts = ReadOptions(batch_rows=3, **kw)
    out = {f: [] for f in fields}
    for batch in read_records(path, fields, opts):
        for f in fields:
            out[f].extend(list(batch.columns[f]))
    return out


@pytest.mark.parametrize("kind", ["jsonl", "csv", "tsv", "parquet"])
@pytest.mark.parametrize("compressed", [False, True])
def test_tabular_formats_round_trip(tmp_path, kind, compressed):
    path = _write(tmp_path, kind)
    if compressed:
        path = _gzip(path)
    got = _read_all(path, ("text", "label", "x"), numeric=("x",))
    assert got["text"] == [r["text"] for r in RECORDS]
    assert got["label"] == [r["label"] for r in RECORDS]
    assert np.array_equal(np.array(got["x"]), [r["x"] for r in RECORDS])


@pytest.mark.parametrize("compressed", [False, True])
def test_text_lines_round_trip(tmp_path, compressed):
    path = tmp_path / "t.txt"
    path.write_bytes("one\r\ntwo  spaces\n\nünï\nno newline at end".encode())
    if compressed:
        path = _gzip(path)
    got = _read_all(path, ("text",))["text"]
    assert got == ["one", "two  spaces", "", "ünï", "no newline at end"]
    assert got == list(iter_lines(path))


@pytest.mark.parametrize("chunk", [1, 7, 64, 10_000])
def test_byte_ranges_cover_the_file_exactly(tmp_path, chunk):
    path = tmp_path / "t.txt"
    lines = [f"line {i} " + "é" * (i % 5) for i in range(200)] + ["\r", "tail"]
    path.write_bytes("\n".join(lines).encode())
    ranges = plan_ranges(path, chunk)
    assert ranges[0][0] == 0 and ranges[-1][1] == path.stat().st_size
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    got = [t for s, e in ranges for b in read_range(path, s, e, ("text",), ReadOptions()) for t in b.columns["text"]]
    assert got == list(iter_lines(path))


def test_jsonl_byte_ranges_skip_blank_lines(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in RECORDS[:6]) + "\n\n\n", encoding="utf-8")
    got = [t for s, e in plan_ranges(path, 20) for b in read_range(path, s, e, ("text",), ReadOptions())
           for t in b.columns["text"]]
    assert got == [r["text"] for r in RECORDS[:6]]


def test_format_detection():
    assert detect_format("a/b.JSONL.gz") == "jsonl"
    assert detect_format("x.tsv") == "csv"
    assert detect_format("x.parquet") == "parquet"
    assert detect_format("wiki.train.tokens") == "text"
    assert detect_format("README") == "text"
