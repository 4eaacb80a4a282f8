"""Bad input: a one-line SeqfitError naming the place, non-zero exit, and nothing half-written left behind."""

import gzip
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seqfit.cli.main import main
from seqfit.data.prepare import PrepareOptions, prepare
from seqfit.data.sequences import SequenceStore
from seqfit.data.series import SeriesStore
from seqfit.errors import SeqfitError


def _fails(tmp_path, match, **kw):
    out = tmp_path / "out"
    with pytest.raises(SeqfitError, match=match):
        prepare(PrepareOptions(out=out, **kw))
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # staging removed


@pytest.mark.parametrize("workers", [1, 2])
def test_malformed_json_line_names_file_and_line(tmp_path, workers):
    path = tmp_path / "d.jsonl"
    good = [json.dumps({"text": f"t {i}", "y": i % 2}) for i in range(300)]
    good[250] = '{"text": "broken", "y": '
    path.write_text("\n".join(good) + "\n")
    _fails(tmp_path, r"d\.jsonl:251: malformed JSON", inputs=(str(path),), task="classify", label_field="y",
           workers=workers, chunk_bytes=512)


def test_malformed_json_in_gzip_stream(tmp_path):
    path = tmp_path / "d.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"text": "a"}\n{"text": "b"}\nnot json\n'))
    _fails(tmp_path, r"d\.jsonl\.gz:3: malformed JSON", inputs=(str(path),))


def test_missing_json_field(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "y": 1}\n{"body": "b", "y": 0}\n')
    _fails(tmp_path, r"d\.jsonl:2: no field 'text'", inputs=(str(path),), task="classify", label_field="y")


def test_malformed_csv_row(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,y\nfine,1\nalso fine,0\ntoo,many,cells\n")
    _fails(tmp_path, r"d\.csv:4: malformed CSV row", inputs=(str(path),), task="classify", label_field="y")


def test_missing_csv_and_parquet_columns(tmp_path):
    csv = tmp_path / "d.csv"
    csv.write_text("a,b\n1,2\n")
    _fails(tmp_path, r"no column 'c'", inputs=(str(csv),), task="series", columns=("a", "c"))
    pqf = tmp_path / "d.parquet"
    pq.write_table(pa.table({"a": [1.0, 2.0]}), pqf)
    _fails(tmp_path, r"no column 'text'", inputs=(str(pqf),))


def test_nan_and_inf_are_errors_by_default(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("a,b\n1,2\n3,nan\n5,6\n")
    _fails(tmp_path, r"column 'b' is nan .*--nan", inputs=(str(path),), task="series", columns=("a", "b"))
    path.write_text("a,b\n1,2\n3,inf\n")
    _fails(tmp_path, r"column 'b' is inf", inputs=(str(path),), task="series", columns=("a", "b"))
    path.write_text("a,b\n1,2\n3,\n")  # an empty cell is missing too
    _fails(tmp_path, r"column 'b' is nan", inputs=(str(path),), task="series", columns=("a", "b"))


def _series(tmp_path, values, nan):
    path = tmp_path / "s.parquet"
    pq.write_table(pa.table({"a": values[:, 0], "b": values[:, 1]}), path, row_group_size=3)
    out = tmp_path / f"o-{nan}-{np.isfinite(values).sum()}"
    prepare(PrepareOptions(out=out, inputs=(str(path),), task="series", columns=("a", "b"), nan=nan, valid_fraction=0.0))
    split = SeriesStore(out).split("train")
    return split.read(0, len(split), normalize=False)


def test_nan_policies_match_a_reference(tmp_path):
    x = np.arange(20, dtype=np.float64).reshape(10, 2)
    x[3, 1] = np.nan
    x[4, 1] = np.inf
    x[7, 0] = np.nan
    keep = np.isfinite(x).all(axis=1)
    assert np.array_equal(_series(tmp_path, x, "drop"), x[keep].astype(np.float32))
    assert np.array_equal(_series(tmp_path, x, "fill-zero"), np.where(np.isfinite(x), x, 0).astype(np.float32))
    ffill = x.copy()
    for r in range(1, len(x)):
        bad = ~np.isfinite(ffill[r])
        ffill[r, bad] = ffill[r - 1, bad]
    assert np.array_equal(_series(tmp_path, x, "ffill"), ffill.astype(np.float32))
    x[0, 0] = np.nan  # nothing before it to carry
    with pytest.raises(SeqfitError, match="starts with NaN"):
        _series(tmp_path, x, "ffill")


def test_embedding_row_with_wrong_width(tmp_path, corpus):
    vec = tmp_path / "v.txt"
    vec.write_text("the 0.1 0.2 0.3\ncat 0.1 0.2 0.3\ndog 0.1 0.2\n")
    _fails(tmp_path, r"v\.txt:3: 2 values, expected 3", inputs=(str(corpus),), embeddings=str(vec))


def test_vocabulary_emptied_by_pruning(tmp_path, corpus):
    _fails(tmp_path, "empty after pruning", inputs=(str(corpus),), min_freq=10 ** 9)


def test_empty_and_binary_inputs(tmp_path):
    empty = tmp_path / "e.txt"
    empty.write_text("")
    _fails(tmp_path, r"e\.txt is empty", inputs=(str(empty),))
    blob = tmp_path / "b.txt"
    blob.write_bytes(b"abc\x00\x01\x02" * 100)
    _fails(tmp_path, r"b\.txt looks binary", inputs=(str(blob),))
    csv = tmp_path / "e.csv"
    csv.write_text("")
    _fails(tmp_path, r"e\.csv is empty", inputs=(str(csv),), task="series", columns=("a",))


def test_bad_utf8_names_the_byte_offset(tmp_path):
    path = tmp_path / "u.txt"
    path.write_bytes(b"fine line\nbad \xff byte\n")
    _fails(tmp_path, r"bad byte 0xff at byte offset 14", inputs=(str(path),))


def _truncate(path, nbytes=8):
    path.write_bytes(path.read_bytes()[:-nbytes])


def test_truncated_sequence_and_series_stores_are_refused(tmp_path):
    src = tmp_path / "d.jsonl"
    src.write_text("".join(json.dumps({"text": f"w{i % 7} x y", "y": i % 2}) + "\n" for i in range(200)))
    out = tmp_path / "seq"
    prepare(PrepareOptions(out=out, inputs=(str(src),), task="classify", label_field="y", valid_fraction=0.0))
    _truncate(out / "train.offsets.bin")
    with pytest.raises(SeqfitError, match="truncated"):
        SequenceStore(out).split("train")
    csv = tmp_path / "s.csv"
    csv.write_text("a\n" + "".join(f"{i}\n" for i in range(100)))
    out = tmp_path / "ser"
    prepare(PrepareOptions(out=out, inputs=(str(csv),), task="series", columns=("a",), valid_fraction=0.0))
    _truncate(out / "train.bin")
    with pytest.raises(SeqfitError, match="truncated"):
        SeriesStore(out).split("train")


def test_cli_exits_non_zero_with_one_line(tmp_path, capsys):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a"}\n{oops\n')
    with pytest.raises(SystemExit) as exit_info:
        main(["prepare", str(path), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "d.jsonl:2: malformed JSON" in err
    assert not (tmp_path / "out").exists()


def test_valid_fraction_with_only_train_files_is_refused(cli, tmp_path):
    """--valid-fraction splits positional INPUTS: with --train alone it used to make no validation split, silently."""
    from conftest import write_corpus

    train = write_corpus(tmp_path / "train.txt")
    out = tmp_path / "data"
    code, _, err = cli("prepare", "--train", train, "--valid-fraction", "0.1", "--out", out)
    assert code == 2 and "--valid" in err and err.count("\n") == 1 and not out.exists()
    assert cli("prepare", train, "--valid-fraction", "0.1", "--out", out)[0] == 0
    assert cli("prepare", "--train", train, "--out", tmp_path / "d2")[0] == 0  # the default fraction: no complaint
