"""Property tests: arbitrary bytes, text and dicts make the readers, tokenizers, config loader and store
openers either work or raise SeqfitError -- never anything else (which the CLI would print as a traceback).

Each property runs a modest number of examples so the default suite stays fast;
`pytest tests/test_fuzz.py --hypothesis-show-statistics` prints how many ran.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

import seqfit  # noqa: E402
from conftest import write_corpus  # noqa: E402
from seqfit.config import from_dict, load_toml  # noqa: E402
from seqfit.data.prepare import PrepareOptions, prepare_text  # noqa: E402
from seqfit.data.readers import LineError, ReadOptions, plan_ranges, read_range, read_records  # noqa: E402
from seqfit.data.sequences import SequenceStore  # noqa: E402
from seqfit.data.series import SeriesStore  # noqa: E402
from seqfit.data.store import TokenStore  # noqa: E402
from seqfit.data.tokenize import detokenize, make_tokenizer  # noqa: E402
from seqfit.errors import SeqfitError  # noqa: E402

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                         HealthCheck.too_slow])

# Bytes that look a little like the formats, so the parsers get past their first check.
FRAGMENTS = [b"{", b"}", b'"text"', b'"y"', b":", b",", b"\n", b"\r\n", b"1", b"-2.5e3", b"nan", b"inf", b"null",
             b'"a b c"', b"[", b"]", b"text,y", b"\xff", b"\x00", b"\xc3\xa9", b"PAR1", b"\t", b'"', b"true"]
shaped_bytes = st.one_of(st.binary(max_size=400),
                         st.lists(st.sampled_from(FRAGMENTS), max_size=60).map(b"".join))


def _consume(batches) -> int:
    n = 0
    for batch in batches:
        n += len(batch)
    return n


@FUZZ
@given(data=shaped_bytes, ext=st.sampled_from([".txt", ".jsonl", ".csv", ".tsv", ".parquet", ".jsonl.gz", ".csv.gz"]),
       errors=st.sampled_from(["strict", "replace", "ignore"]), numeric=st.booleans())
def test_readers_work_or_raise_seqfit_error(tmp_path, data, ext, errors, numeric):
    path = tmp_path / f"f{ext}"
    path.write_bytes(gzip.compress(data) if ext.endswith(".gz") else data)
    fields = ["text"] if ext == ".txt" else ["text", "y"]
    opts = ReadOptions(encoding_errors=errors, batch_rows=3, numeric=("y",) if numeric and ext != ".txt" else ())
    try:
        _consume(read_records(path, fields, opts))
    except SeqfitError:
        pass


@FUZZ
@given(data=shaped_bytes, ext=st.sampled_from([".txt", ".jsonl"]), chunk=st.integers(1, 64),
       errors=st.sampled_from(["strict", "replace", "ignore"]))
def test_byte_range_readers_work_or_raise_line_errors(tmp_path, data, ext, chunk, errors):
    path = tmp_path / f"f{ext}"
    path.write_bytes(data)
    fields = ["text"] if ext == ".txt" else ["text", "y"]
    try:
        for start, end in plan_ranges(path, chunk):
            _consume(read_range(path, start, end, fields, ReadOptions(encoding_errors=errors)))
    except (SeqfitError, LineError):  # LineError: a worker's error, turned into a SeqfitError by the caller
        pass


@FUZZ
@given(text=st.text(max_size=200), level=st.sampled_from(["word", "char"]), lowercase=st.booleans())
def test_tokenizers_take_any_text(text, level, lowercase):
    tokens = make_tokenizer(level, lowercase=lowercase)(text)
    assert all(isinstance(t, str) and t for t in tokens)
    if level == "char" and not lowercase:
        assert "".join(tokens) == text
    assert isinstance(detokenize(tokens, level, "<eos>"), str)


@FUZZ
@given(level=st.text(max_size=10))
def test_unknown_levels_are_one_line_errors(level):
    if level in ("word", "char", "subword"):
        return
    with pytest.raises(SeqfitError):
        make_tokenizer(level)


json_values = st.recursive(st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=12)
SECTIONS = ["data", "model", "train", "memory", "run", "nonsense"]
KEYS = ["hidden", "layers", "embed", "dropout", "lr", "cell", "task", "batch_size", "bptt", "budget", "seed",
        "max_steps", "epochs", "loss", "optimizer", "precision", "device", "clip", "tie_weights", "pooling", "x"]
config_dicts = st.one_of(
    st.dictionaries(st.sampled_from(SECTIONS), st.dictionaries(st.sampled_from(KEYS), json_values, max_size=4), max_size=4),
    st.dictionaries(st.text(max_size=8), json_values, max_size=4),
)


@FUZZ
@given(data=config_dicts)
def test_config_from_dict_works_or_raises_seqfit_error(data):
    try:
        from_dict(data)
    except SeqfitError:
        pass


TOML_FRAGMENTS = [b"[model]\n", b"[train]\n", b"[x]\n", b"hidden = ", b"lr = ", b"cell = ", b"3", b"-1", b"1e400",
                  b"nan", b'"lstm"', b"true", b"[1, 2]", b"{a = 1}", b"\n", b"=", b"[[model]]\n", b"\xff", b"'''"]


@FUZZ
@given(data=st.one_of(st.binary(max_size=300), st.lists(st.sampled_from(TOML_FRAGMENTS), max_size=30).map(b"".join)))
def test_toml_loader_works_or_raises_seqfit_error(tmp_path, data):
    path = tmp_path / "c.toml"
    path.write_bytes(data)
    try:
        from_dict(load_toml(path))
    except SeqfitError:
        pass


# --- store openers: a real store whose meta.json (or a file) is mangled ---------------------------
@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fuzzstores")
    tokens = root / "tokens"
    prepare_text(PrepareOptions(out=tokens, inputs=(str(write_corpus(root / "c.txt", lines=60)),)))
    src = root / "d.jsonl"
    src.write_text("".join(json.dumps({"text": f"w{i % 5} x", "y": i % 2}) + "\n" for i in range(40)))
    seqs = root / "seqs"
    seqfit.prepare(str(src), out=seqs, task="classify", label_field="y", valid_fraction=0.0)
    csv = root / "s.csv"
    csv.write_text("a,b\n" + "".join(f"{i},{i * 2}\n" for i in range(40)))
    series = root / "series"
    seqfit.prepare(str(csv), out=series, task="series", columns=("a", "b"), valid_fraction=0.0)
    return {"tokens": tokens, "seqs": seqs, "series": series}


OPENERS = {"tokens": TokenStore, "seqs": SequenceStore, "series": SeriesStore}


def _paths(obj, prefix=()):
    """Every key path into a JSON document."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def _open_and_read(kind: str, d: Path) -> None:
    store = OPENERS[kind](d)
    for name in ("train", "valid", "test"):
        if not store.has_split(name):
            continue
        split = store.split(name)
        if kind == "tokens":
            split.read(0, min(len(split), 8))
        elif kind == "seqs":
            split.batch(list(range(min(len(split), 4))))
        else:
            split.read(0, min(len(split), 4))


@FUZZ
@given(kind=st.sampled_from(sorted(OPENERS)), pick=st.integers(0, 10**6), value=json_values)
def test_store_openers_refuse_mangled_meta_with_seqfit_error(stores, tmp_path_factory, kind, pick, value):
    d = tmp_path_factory.mktemp("m") / kind
    shutil.copytree(stores[kind], d)
    meta = json.loads((d / "meta.json").read_text())
    paths = [p for p in _paths(meta) if p]
    path = paths[pick % len(paths)]
    node = meta
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    (d / "meta.json").write_text(json.dumps(meta))
    try:
        _open_and_read(kind, d)
    except SeqfitError:
        pass
    shutil.rmtree(d.parent)


@FUZZ
@given(kind=st.sampled_from(sorted(OPENERS)), pick=st.integers(0, 10**6), data=st.binary(max_size=200),
       mode=st.sampled_from(["replace", "truncate", "append"]))
def test_store_openers_refuse_mangled_files_with_seqfit_error(stores, tmp_path_factory, kind, pick, data, mode):
    d = tmp_path_factory.mktemp("f") / kind
    shutil.copytree(stores[kind], d)
    files = sorted(p for p in d.iterdir() if p.is_file())
    target = files[pick % len(files)]
    old = target.read_bytes()
    target.write_bytes(data if mode == "replace" else old[: len(old) * (pick % 7) // 7] if mode == "truncate" else old + data)
    try:
        _open_and_read(kind, d)
    except SeqfitError:
        pass
    shutil.rmtree(d.parent)
