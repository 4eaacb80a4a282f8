"""Nothing unpickles a user's file, and no path read from a file escapes its directory."""

from __future__ import annotations

import ast
import io
import json
import pickle
import shutil
import tokenize
from pathlib import Path

import numpy as np
import pytest
import torch

import seqfit
from conftest import write_corpus
from seqfit.data.prepare import PrepareOptions, prepare_text
from seqfit.data.sequences import SequenceStore
from seqfit.data.series import SeriesStore
from seqfit.data.store import TokenStore
from seqfit.errors import SeqfitError
from seqfit.models.lm import load_embedding_matrix

SRC = Path(seqfit.__file__).parent
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}


def unsafe_calls(source: str) -> list[str]:
    """Deserialisers that can run code, and eval/exec: as names in code (comments and strings don't count)."""
    found = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.NAME and tok.string in UNSAFE_MODULES:
            found.append(f"line {tok.start[0]}: {tok.string}")
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        kw = {k.arg: k.value for k in node.keywords}
        is_true = lambda v: isinstance(v, ast.Constant) and v.value is True  # noqa: E731
        is_false = lambda v: isinstance(v, ast.Constant) and v.value is False  # noqa: E731
        if isinstance(f, ast.Name) and f.id in ("eval", "exec", "__import__"):
            found.append(f"line {node.lineno}: {f.id}(")
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
            mod, name = f.value.id, f.attr
            if mod == "torch" and name == "load" and not is_true(kw.get("weights_only")):
                found.append(f"line {node.lineno}: torch.load( without weights_only=True")
            if mod in ("np", "numpy") and name == "load" and not is_false(kw.get("allow_pickle")):
                found.append(f"line {node.lineno}: np.load( without allow_pickle=False")
            if mod == "yaml" and name in ("load", "unsafe_load", "full_load"):
                found.append(f"line {node.lineno}: yaml.{name}(")
    return found


def test_the_scanner_catches_each_pattern():
    bad = ("import pickle\nx = torch.load(p)\ny = np.load(p)\nz = np.load(p, allow_pickle=True)\n"
           "eval(s)\nexec(s)\nw = torch.load(p, weights_only=False)\n")
    assert len(unsafe_calls(bad)) == 7
    good = ('# pickle in a comment\n"""pickle in a docstring"""\nx = torch.load(p, weights_only=True)\n'
            "y = np.load(p, mmap_mode='r', allow_pickle=False)\nmodel.eval()\n")
    assert unsafe_calls(good) == []


def test_no_source_file_can_unpickle_or_eval():
    found = {str(p.relative_to(SRC)): hits for p in sorted(SRC.rglob("*.py"))
             if (hits := unsafe_calls(p.read_text(encoding="utf-8")))}
    assert found == {}


# --- store paths -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stores")
    tokens = root / "tokens"
    prepare_text(PrepareOptions(out=tokens, inputs=(str(write_corpus(root / "c.txt", lines=80)),)))
    src = root / "d.jsonl"
    src.write_text("".join(json.dumps({"text": f"w{i % 5} x", "y": i % 2}) + "\n" for i in range(60)))
    seqs = root / "seqs"
    seqfit.prepare(str(src), out=seqs, task="classify", label_field="y", valid_fraction=0.0)
    csv = root / "s.csv"
    csv.write_text("a\n" + "".join(f"{i}\n" for i in range(50)))
    series = root / "series"
    seqfit.prepare(str(csv), out=series, task="series", columns="a", valid_fraction=0.0)
    (root / "secret.bin").write_bytes(b"\0" * 4096)
    return {"tokens": tokens, "seqs": seqs, "series": series, "root": root}


ESCAPES = ["../secret.bin", "/etc/passwd", "sub/train.bin", "..", "", None, 7]
FIELDS = [  # (store, opener, path of the file name inside meta.json)
    ("tokens", TokenStore, ("splits", "train", "shards", 0, "file")),
    ("seqs", SequenceStore, ("splits", "train", "shards", 0, "file")),
    ("seqs", SequenceStore, ("splits", "train", "offsets")),
    ("seqs", SequenceStore, ("splits", "train", "labels")),
    ("series", SeriesStore, ("splits", "train", "shards", 0, "file")),
]


@pytest.mark.parametrize("name", ESCAPES, ids=[repr(n) for n in ESCAPES])
@pytest.mark.parametrize("kind,opener,where", FIELDS, ids=[f"{k}:{w[-1]}{w[-2] if w[-1] == 'file' else ''}" for k, _, w in FIELDS])
def test_meta_json_cannot_name_a_file_outside_the_store(stores, tmp_path, kind, opener, where, name):
    d = tmp_path / kind
    shutil.copytree(stores[kind], d)
    meta = json.loads((d / "meta.json").read_text())
    node = meta
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = name
    (d / "meta.json").write_text(json.dumps(meta))
    if name in ("", None) and where[-1] == "labels":
        pytest.skip("an empty labels entry means 'no labels'")
    with pytest.raises(SeqfitError) as info:
        opener(d).split("train")
    msg = str(info.value)
    assert "\n" not in msg and ("own directory" in msg or "meta.json" in msg), msg


# --- pickle payloads ---------------------------------------------------------------------------
class Payload:
    """Unpickling this creates a marker file: proof that a loader ran code from the file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def payloads(marker: Path) -> dict[str, bytes]:
    raw = pickle.dumps(Payload(marker))
    buf = io.BytesIO()
    torch.save({"weights": Payload(marker)}, buf)  # what a `.pt` checkpoint renamed to .safetensors would be
    return {"raw pickle": raw, "torch.save zip": buf.getvalue()}


def test_the_payload_is_real(tmp_path):
    marker = tmp_path / "ran"
    pickle.loads(payloads(marker)["raw pickle"])
    assert marker.exists()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("pickled")
    data = root / "data"
    prepare_text(PrepareOptions(out=data, inputs=(str(write_corpus(root / "c.txt", lines=80)),)))
    run = root / "run"
    seqfit.train(data, run, layers=1, hidden=8, embed=8, batch_size=2, bptt=8, max_steps=2, eval_every=0,
                 echo=lambda *a, **k: None)
    return data, run


@pytest.mark.parametrize("kind", ["raw pickle", "torch.save zip"])
@pytest.mark.parametrize("target,command", [("model.safetensors", "evaluate"), ("model.safetensors", "resume"),
                                            ("state.safetensors", "resume")])
def test_a_pickled_checkpoint_is_refused_without_running_it(cli, trained, tmp_path, kind, target, command):
    data, base_run = trained
    run = tmp_path / "run"
    shutil.copytree(base_run, run)
    marker = tmp_path / "marker"
    (run / "checkpoint" / target).write_bytes(payloads(marker)[kind])
    argv = ["evaluate", run] if command == "evaluate" else ["train", data, "--out", run, "--resume", "--max-steps", "4"]
    code, out, err = cli(*argv)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("seqfit: error:"), err
    assert "corrupt or foreign" in lines[0] and "Traceback" not in err
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["object .npy", "raw pickle", "torch.save zip"])
def test_a_pickled_embedding_matrix_is_refused_without_running_it(cli, trained, tmp_path, kind):
    marker = tmp_path / "marker"
    path = tmp_path / "emb.npy"
    if kind == "object .npy":
        with open(path, "wb") as f:
            np.save(f, np.array([Payload(marker)], dtype=object), allow_pickle=True)
    else:
        path.write_bytes(payloads(marker)[kind])
    with pytest.raises(SeqfitError) as info:
        load_embedding_matrix(str(path), 10, 8)
    assert "\n" not in str(info.value)
    data, _ = trained
    code, out, err = cli("train", data, "--out", tmp_path / "r", "--task", "classify", "--embeddings", path,
                         "--max-steps", "1")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("seqfit: error:") and "Traceback" not in err, err
    assert not marker.exists()
