"""Garbage in, one line out: a table of malformed inputs run through the CLI in-process.

Each row: the documented exit code (README "Errors"), at most one line on stderr starting
`seqfit: error:`, no traceback, and nothing already written changed (every file under the watched
directories hashes the same before and after; a failed `prepare` leaves no --out and no staging).

Nonsense numeric flags are tests/test_cli_values.py's table (TRAIN, PREPARE: 39 rows) and reader
errors naming file and line are tests/test_prepare_errors.py's; they are not repeated here.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import seqfit
from conftest import write_corpus
from seqfit.data.prepare import PrepareOptions, prepare_text

TINY = ["--layers", "1", "--hidden", "16", "--embed", "8", "--batch-size", "4", "--bptt", "8", "--eval-every", "0"]


def tree_hash(root: Path) -> dict[str, str]:
    if not root.exists():
        return {}
    if root.is_file():
        return {root.name: hashlib.sha256(root.read_bytes()).hexdigest()}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict[str, Path]:
    """A token store, a second store with another vocabulary, and a finished 4-step run (hidden 16)."""
    root = tmp_path_factory.mktemp("malformed")
    data = root / "data"
    prepare_text(PrepareOptions(out=data, train=(str(write_corpus(root / "c.txt", lines=200)),),
                                valid=(str(write_corpus(root / "v.txt", lines=40, seed=3)),)))
    other = root / "other"
    (root / "o.txt").write_text("completely different words here\n" * 20)
    prepare_text(PrepareOptions(out=other, inputs=(str(root / "o.txt"),)))
    run = root / "run"
    seqfit.train(data, run, layers=1, hidden=16, embed=8, batch_size=4, bptt=8, max_steps=4, eval_every=0,
                 echo=lambda *a, **k: None)
    run32 = root / "run32"
    seqfit.train(data, run32, layers=1, hidden=32, embed=8, batch_size=4, bptt=8, max_steps=2, eval_every=0,
                 echo=lambda *a, **k: None)
    return {"data": data, "other": other, "run": run, "run32": run32}


class Workspace:
    def __init__(self, tmp: Path, base: dict[str, Path]):
        self.tmp, self.base = tmp, base
        self.out = tmp / "out"  # where a failing command would write: must not appear

    def file(self, name: str, content: bytes | str) -> Path:
        path = self.tmp / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path

    def copy(self, what: str) -> Path:
        dst = self.tmp / what
        shutil.copytree(self.base[what], dst)
        return dst

    def store(self, edit=None) -> Path:
        d = self.copy("data")
        if edit:
            meta = json.loads((d / "meta.json").read_text())
            edit(meta)
            (d / "meta.json").write_text(json.dumps(meta))
        return d


CASES = []


def case(name: str, code: int = 2, words: str = ""):
    def register(fn):
        CASES.append(pytest.param(fn, code, words, id=name))
        return fn
    return register


# Each function returns (argv, directories whose contents must not change).

# --- prepare: raw inputs -------------------------------------------------------------------
@case("empty text file", words="is empty")
def _(w): return ["prepare", w.file("e.txt", b""), "--out", w.out], []


@case("binary file", words="looks binary")
def _(w): return ["prepare", w.file("b.txt", bytes(range(256)) * 64), "--out", w.out], []


@case("20 MB single line works", code=0)
def _(w):
    words = np.random.default_rng(0).choice(np.array(["alpha", "beta", "gamma", "delta"]), 3_500_000)
    return ["prepare", w.file("long.txt", " ".join(words)), "--out", w.out], []


@case("bad UTF-8, strict", words="not UTF-8")
def _(w): return ["prepare", w.file("u.txt", b"ok line\nbad \xff\xfe here\n"), "--out", w.out], []


@case("bad UTF-8, replace", code=0)
def _(w): return ["prepare", w.file("u.txt", b"ok line\nbad \xff\xfe here\n"), "--out", w.out, "--encoding-errors", "replace"], []


@case("bad UTF-8, ignore", code=0)
def _(w): return ["prepare", w.file("u.txt", b"ok line\nbad \xff\xfe here\n"), "--out", w.out, "--encoding-errors", "ignore"], []


@case("bad UTF-8 in JSONL, strict", words="UTF-8")
def _(w): return ["prepare", w.file("u.jsonl", b'{"text": "a", "y": 1}\n{"text": "\xff", "y": 0}\n'), "--out", w.out,
                  "--task", "classify", "--label-field", "y"], []


@case("NaN in series CSV", words="nan")
def _(w): return ["prepare", w.file("s.csv", "a,b\n1,2\n3,nan\n"), "--out", w.out, "--task", "series", "--columns", "a,b"], []


@case("inf in series JSONL", words="inf")
def _(w): return ["prepare", w.file("s.jsonl", '{"a": 1, "b": 2}\n{"a": Infinity, "b": 2}\n'), "--out", w.out,
                  "--task", "series", "--columns", "a,b"], []


@case("NaN in series Parquet", words="nan")
def _(w):
    pq.write_table(pa.table({"a": [1.0, float("nan"), 3.0]}), w.tmp / "s.parquet")
    return ["prepare", w.tmp / "s.parquet", "--out", w.out, "--task", "series", "--columns", "a"], []


@case("NaN in numeric classify CSV (grouped rows)", words="nan")
def _(w): return ["prepare", w.file("g.csv", "id,x,y\n1,0.5,a\n1,nan,a\n2,1,b\n"), "--out", w.out, "--task", "classify",
                  "--columns", "x", "--group-field", "id", "--label-field", "y"], []


@case("inf in numeric classify JSONL (list columns)", words="inf")
def _(w): return ["prepare", w.file("g.jsonl", '{"x": [1, 2], "y": "a"}\n{"x": [1, Infinity], "y": "b"}\n'), "--out", w.out,
                  "--task", "classify", "--columns", "x", "--label-field", "y"], []


@case("text in a numeric column", words="")
def _(w): return ["prepare", w.file("s.csv", "a\n1\nhello\n"), "--out", w.out, "--task", "series", "--columns", "a"], []


@case("missing column in series CSV", words="no column 'b'")
def _(w): return ["prepare", w.file("s.csv", "a,c\n1,2\n"), "--out", w.out, "--task", "series", "--columns", "a,b"], []


@case("missing label field in JSONL", words="")
def _(w): return ["prepare", w.file("d.jsonl", '{"text": "a b"}\n'), "--out", w.out, "--task", "classify", "--label-field", "y"], []


@case("JSONL line that is not an object", words="")
def _(w): return ["prepare", w.file("d.jsonl", '{"text": "a"}\n[1, 2]\n'), "--out", w.out], []


@case("Parquet file that is not Parquet", words="")
def _(w): return ["prepare", w.file("d.parquet", b"PAR1 definitely not parquet"), "--out", w.out], []


@case("truncated gzip", words="")
def _(w):
    text = " ".join(f"w{i}" for i in np.random.default_rng(0).integers(0, 10**6, 20000)).encode()
    blob = gzip.compress(text)
    return ["prepare", w.file("d.txt.gz", blob[: len(blob) // 2]), "--out", w.out], []


@case("CSV with a header and no rows", words="")
def _(w): return ["prepare", w.file("s.csv", "a,b\n"), "--out", w.out, "--task", "series", "--columns", "a,b"], []


@case("input that does not exist", words="")
def _(w): return ["prepare", w.tmp / "nope.txt", "--out", w.out], []


@case("prepare over an existing store without --overwrite", words="--overwrite")
def _(w):
    d = w.copy("data")
    return ["prepare", w.file("c.txt", "a b c\n"), "--out", d], [d]


# --- stores opened by train ------------------------------------------------------------------
def _train(w, data):
    return ["train", data, "--out", w.out, "--max-steps", "2", *TINY]


@case("truncated shard", words="truncated")
def _(w):
    d = w.store()
    (d / "train.bin").write_bytes((d / "train.bin").read_bytes()[:-3])
    return _train(w, d), [d]


@case("meta.json not JSON", words="not valid JSON")
def _(w):
    d = w.store()
    (d / "meta.json").write_bytes(b"\x00{garbage")
    return _train(w, d), [d]


@case("meta.json wrong magic", words="not a seqfit store")
def _(w):
    d = w.store(lambda m: m.update(format="npz"))
    return _train(w, d), [d]


@case("meta.json wrong version", words="store version 99")
def _(w):
    d = w.store(lambda m: m.update(version=99))
    return _train(w, d), [d]


@case("meta.json object dtype", words="dtype 'O'")
def _(w):
    d = w.store(lambda m: m.update(dtype="O"))
    return _train(w, d), [d]


@case("meta.json splits not a table", words="no table of splits")
def _(w):
    d = w.store(lambda m: m.update(splits=[1, 2]))
    return _train(w, d), [d]


@case("shard list naming ../x", words="must lie in its own directory")
def _(w):
    d = w.store(lambda m: m["splits"]["train"]["shards"][0].update(file="../train.bin"))
    return _train(w, d), [d]


@case("shard list naming an absolute path", words="must lie in its own directory")
def _(w):
    d = w.store(lambda m: m["splits"]["train"]["shards"][0].update(file=str(w.base["data"] / "train.bin")))
    return _train(w, d), [d]


@case("shard with a negative count", words="gives -5")
def _(w):
    d = w.store(lambda m: m["splits"]["train"]["shards"][0].update(tokens=-5))
    return _train(w, d), [d]


@case("vocabulary of another store", words="vocabulary hash differs")
def _(w):
    d = w.store()
    shutil.copy(w.base["other"] / "vocab.json", d / "vocab.json")
    return _train(w, d), [d]


@case("vocab.json missing", words="no vocab.json")
def _(w):
    d = w.store()
    (d / "vocab.json").unlink()
    return _train(w, d), [d]


# --- checkpoints and run directories ----------------------------------------------------------
def _resume_watch(r: Path) -> list[Path]:
    return [r / "checkpoint", r / "metrics.jsonl", r / "summary.json", r / "plan.json", r / "config.toml",
            r / "run.json"]


@case("truncated checkpoint on evaluate", words="corrupt or foreign")
def _(w):
    r = w.copy("run")
    f = r / "checkpoint" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    return ["evaluate", r], [r]


@case("truncated checkpoint on --resume", words="corrupt or foreign")
def _(w):
    r = w.copy("run")
    f = r / "checkpoint" / "state.safetensors"
    f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
    return ["train", w.base["data"], "--out", r, "--resume", "--max-steps", "6"], _resume_watch(r)


@case("state.json corrupt on --resume", words="corrupt")
def _(w):
    r = w.copy("run")
    (r / "checkpoint" / "state.json").write_text('{"format": "seqfit-checkpoint", "version": 1, "state": ')
    return ["train", w.base["data"], "--out", r, "--resume", "--max-steps", "6"], _resume_watch(r)


@case("checkpoint of another model on evaluate", words="does not match the model options")
def _(w):
    r = w.copy("run")
    shutil.rmtree(r / "checkpoint")
    shutil.copytree(w.base["run32"] / "checkpoint", r / "checkpoint")
    return ["evaluate", r], [r]


@case("checkpoint of another model on --resume (--hidden 32)", words="does not match the model options")
def _(w):
    r = w.copy("run")
    return ["train", w.base["data"], "--out", r, "--resume", "--hidden", "32", "--max-steps", "6"], _resume_watch(r)


@case("evaluate a data directory, not a run", words="not a seqfit run directory")
def _(w):
    d = w.copy("data")
    return ["evaluate", d], [d]


@case("train over a finished run without --resume", words="already holds a run")
def _(w):
    r = w.copy("run")
    return ["train", w.base["data"], "--out", r, *TINY], [r]


# --- budgets, flags and configs not in test_cli_values.py ------------------------------------
@case("impossible budget", code=3, words="")
def _(w): return ["train", w.base["data"], "--out", w.out, "--budget", "1KB", *TINY], []


@case("budget that is not a size", words="--budget")
def _(w): return ["train", w.base["data"], "--out", w.out, "--budget", "lots", *TINY], []


@case("config file missing", words="config file not found")
def _(w): return ["train", w.base["data"], "--out", w.out, "--config", w.tmp / "nope.toml"], []


@case("config file not TOML", words="not valid TOML")
def _(w): return ["train", w.base["data"], "--out", w.out, "--config", w.file("c.toml", b"[model\nhidden = ")], []


@case("config with an unknown key", words="unknown config key")
def _(w): return ["train", w.base["data"], "--out", w.out, "--config", w.file("c.toml", "[model]\nhiden = 3\n")], []


@case("config with a binary payload", words="")
def _(w): return ["train", w.base["data"], "--out", w.out, "--config", w.file("c.toml", b"\x80\x04\x95pickle\x00\xff")], []


@case("evaluate a split the store lacks", words="no 'test' split")
def _(w):
    r = w.copy("run")
    return ["evaluate", r, "--split", "test"], [r]


@case("generate with a negative token count", words="")
def _(w):
    r = w.copy("run")
    return ["generate", r, "--tokens", "-1"], [r]


@case("data directory that does not exist", words="not found")
def _(w): return _train(w, w.tmp / "nope"), []


@pytest.mark.parametrize("make,code,words", CASES)
def test_malformed_input(cli, base, tmp_path, make, code, words):
    w = Workspace(tmp_path, base)
    argv, watched = make(w)
    before = [tree_hash(p) for p in watched]
    got, out, err = cli(*argv)
    assert got == code, f"exit {got}, expected {code}: {err[-2000:]}"
    assert "Traceback" not in err and "Traceback" not in out
    lines = err.strip().splitlines()
    if code != 0:
        assert len(lines) == 1 and lines[0].startswith("seqfit: error:"), err
        assert words in lines[0], lines[0]
        if argv[0] in ("prepare", "train") and w.out.exists():
            pytest.fail(f"a failed {argv[0]} left {w.out}")
        assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")], "staging left behind"
    assert [tree_hash(p) for p in watched] == before, "a failed command changed files already written"


def test_failed_resume_keeps_config(cli, base, tmp_path):
    r = Workspace(tmp_path, base).copy("run")
    before = tree_hash(r / "config.toml")
    code, _, err = cli("train", base["data"], "--out", r, "--resume", "--hidden", "32")
    assert code == 2 and "does not match" in err
    assert tree_hash(r / "config.toml") == before


@pytest.mark.slow
def test_a_200_mb_single_line(cli, tmp_path):
    """The 20 MB row above, ten times longer (a word-level line is held whole: expect a few GB of memory)."""
    words = np.random.default_rng(0).choice(np.array(["alpha", "beta", "gamma", "delta"]), 35_000_000)
    path = tmp_path / "long.txt"
    path.write_text(" ".join(words))
    code, out, err = cli("prepare", path, "--out", tmp_path / "out")
    assert "Traceback" not in err
    assert code == 0 or (code == 2 and len(err.strip().splitlines()) == 1), err


def test_the_table_is_big_enough():
    assert len(CASES) >= 30
