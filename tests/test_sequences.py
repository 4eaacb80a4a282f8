import json
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from seqfit.data.buckets import TokenBudgetSampler
from seqfit.data.dataset import SequenceDataset
from seqfit.data.prepare import PrepareOptions, prepare
from seqfit.data.sequences import SequenceStore, SequenceWriter
from seqfit.data.store import TokenStore
from seqfit.data.vocab import build_vocab
from seqfit.errors import SeqfitError


def _samples(n=300, seed=0):
    rng = np.random.default_rng(seed)
    words = ["good", "bad", "fine", "meh", "great", "awful", "the", "a", "film"]
    return [(" ".join(rng.choice(words, rng.integers(1, 25))), ["neg", "pos", "neutral"][i % 3]) for i in range(n)]


def _check_round_trip(out, samples):
    store = SequenceStore(out)
    assert store.num_features == 0 and store.label_names == sorted({y for _, y in samples})
    got = []
    for name in ("train", "valid"):
        if store.has_split(name):
            split = store.split(name)
            assert np.array_equal(split.lengths, [len(split[i]) for i in range(len(split))])
            got += [(" ".join(store.vocab.decode(split[i])), store.label_names[split.labels[i]]) for i in range(len(split))]
    assert sorted(got) == sorted(samples)  # every sample once, text and label intact


@pytest.mark.parametrize("kind", ["jsonl", "csv", "parquet"])
def test_classify_from_tables_round_trips(tmp_path, kind):
    samples = _samples()
    if kind == "jsonl":
        src = tmp_path / "d.jsonl"
        src.write_text("".join(json.dumps({"body": t, "label": y}) + "\n" for t, y in samples))
    else:
        table = pa.table({"body": [t for t, _ in samples], "label": [y for _, y in samples]})
        src = tmp_path / f"d.{kind}"
        pq.write_table(table, src) if kind == "parquet" else pa.csv.write_csv(table, src)
    out = tmp_path / "out"
    meta = prepare(PrepareOptions(out=out, inputs=(str(src),), task="classify", text_field="body", label_field="label",
                                  valid_fraction=0.3))
    assert meta["report"]["sequences"]["valid"] > 0
    _check_round_trip(out, samples)


def test_classify_from_class_folders(tmp_path):
    samples = _samples(40)
    for i, (text, label) in enumerate(samples):
        d = tmp_path / "docs" / label
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{i:03d}.txt").write_text(text + "\n")
    out = tmp_path / "out"
    prepare(PrepareOptions(out=out, inputs=(str(tmp_path / "docs"),), task="classify", valid_fraction=0.0))
    _check_round_trip(out, samples)


def test_numeric_sequences_grouped_by_id(tmp_path):
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 9, 50)
    ids = np.repeat(np.arange(50), lengths)
    x = rng.normal(size=(len(ids), 2))
    labels = np.repeat(np.arange(50) % 2, lengths)
    src = tmp_path / "g.parquet"
    pq.write_table(pa.table({"id": ids, "y": labels, "a": x[:, 0], "b": x[:, 1]}), src, row_group_size=7)
    out = tmp_path / "out"
    prepare(PrepareOptions(out=out, inputs=(str(src),), task="classify", columns=("a", "b"), group_field="id",
                           label_field="y", valid_fraction=0.0, shard_bytes=1024))
    split = SequenceStore(out).split("train")
    assert SequenceStore(out).vocab is None and split.num_features == 2
    assert np.array_equal(split.lengths, lengths)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    for i in range(50):
        assert np.array_equal(split[i], x[starts[i]:starts[i + 1]].astype(np.float32))
    xb, lb, yb = split.batch([3, 0, 7])
    assert xb.shape == (3, int(lengths[[3, 0, 7]].max()), 2) and xb.dtype == torch.float32
    assert lb.tolist() == lengths[[3, 0, 7]].tolist() and yb.tolist() == [1, 0, 1]


def test_writer_shards_pairs_and_padded_batches(tmp_path):
    rng = np.random.default_rng(2)
    seqs = [rng.integers(1, 500, rng.integers(1, 40)).astype(np.uint16) for _ in range(100)]
    tgts = [rng.integers(1, 500, rng.integers(1, 10)).astype(np.uint16) for _ in range(100)]
    w = SequenceWriter(tmp_path, "train", np.uint16, labels=True, target=True, shard_bytes=1024)
    for lo in range(0, 100, 30):  # appended in pieces
        part, tpart = seqs[lo:lo + 30], tgts[lo:lo + 30]
        w.add(np.concatenate(part), [len(s) for s in part], np.arange(lo, lo + len(part)) % 4,
              np.concatenate(tpart), [len(t) for t in tpart])
    info = w.close()
    assert len(info["shards"]) > 1
    meta = {"format": "seqfit-store", "version": 1, "kind": "sequences", "dtype": "uint16", "num_features": 0,
            "label_names": list("abcd"), "splits": {"train": info}}
    vocab, _ = build_vocab(Counter({f"t{i}": 1 for i in range(500)}), level="word")
    (tmp_path / "vocab.json").write_text(vocab.to_json(), encoding="utf-8")
    meta.update(vocab_hash=vocab.hash(), vocab_size=len(vocab))
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    split = SequenceStore(tmp_path).split("train")
    for i in range(100):
        assert np.array_equal(split[i], seqs[i]) and np.array_equal(split.target(i), tgts[i])
    x, lengths, labels = split.batch([5, 50, 99])
    assert x.dtype == torch.int64 and x.shape == (3, max(len(seqs[i]) for i in (5, 50, 99)))
    for b, i in enumerate((5, 50, 99)):
        assert x[b, :len(seqs[i])].tolist() == seqs[i].tolist() and (x[b, len(seqs[i]):] == 0).all()
    assert labels.tolist() == [1, 2, 3]
    t, tl = split.batch_targets([5, 50])
    assert tl.tolist() == [len(tgts[5]), len(tgts[50])]


@pytest.mark.parametrize("task", ["lm", "classify"])
def test_parallel_encoding_is_byte_identical_to_serial(tmp_path, task):
    src = tmp_path / "d.jsonl"
    rng = np.random.default_rng(3)
    src.write_text("".join(json.dumps({"text": " ".join(f"w{k}" for k in rng.integers(0, 300, rng.integers(0, 30))),
                                       "y": int(i % 3)}) + "\n" for i in range(3000)))
    outs = []
    for workers in (1, 2):
        out = tmp_path / f"o{workers}"
        prepare(PrepareOptions(out=out, inputs=(str(src),), task=task, label_field="y" if task == "classify" else "",
                               workers=workers, chunk_bytes=4096, shard_bytes=4096, valid_fraction=0.2))
        outs.append(out)
    files = sorted(p.name for p in outs[0].iterdir())
    assert files == sorted(p.name for p in outs[1].iterdir()) and len(files) > 4
    for name in files:
        a, b = (outs[0] / name).read_bytes(), (outs[1] / name).read_bytes()
        if name == "meta.json":
            a, b = (json.loads(x) for x in (a, b))
            for m in (a, b):
                m["report"].pop("seconds"), m["report"].pop("workers")
        assert a == b, name
    if task == "lm":  # and the stream equals the text, line by line
        store = TokenStore(outs[0])
        assert store.split("train").read(0, 5).dtype == store.dtype


def test_dataloader_workers_open_their_own_maps(tmp_path):
    samples = _samples(200)
    src = tmp_path / "d.jsonl"
    src.write_text("".join(json.dumps({"text": t, "y": y}) + "\n" for t, y in samples))
    out = tmp_path / "out"
    prepare(PrepareOptions(out=out, inputs=(str(src),), task="classify", label_field="y", valid_fraction=0.0))
    ds = SequenceDataset(out, "train")
    sampler = TokenBudgetSampler(ds.lengths, max_tokens=200, seed=4)
    expected = [ds.split.batch(b) for b in TokenBudgetSampler(ds.lengths, max_tokens=200, seed=4)]
    loader = torch.utils.data.DataLoader(ds, sampler=sampler, batch_size=None, num_workers=2)
    got = list(loader)
    assert len(got) == len(expected)
    for (x, lx, yx), (e, le, ye) in zip(got, expected):
        assert torch.equal(x, e) and torch.equal(lx, le) and torch.equal(yx, ye)


def test_cli_prepare_classify_json(tmp_path, capsys):
    from seqfit.cli.main import main

    samples = _samples(120)
    src = tmp_path / "d.jsonl"
    src.write_text("".join(json.dumps({"review": t, "stars": y}) + "\n" for t, y in samples))
    main(["prepare", str(src), "--task", "classify", "--text-field", "review", "--label-field", "stars",
          "--shard-size", "2KB", "--workers", "1", "--out", str(tmp_path / "out"), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert result["kind"] == "sequences" and sum(result["sequences"].values()) == 120
    _check_round_trip(tmp_path / "out", samples)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_numeric_sequences_from_list_fields(tmp_path, fmt):
    """Without --group-field each record is one sequence: its --columns hold lists (JSON arrays, Parquet lists)."""
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 12, 40)
    seqs = [rng.normal(size=(n, 2)) for n in lengths]
    labels = [["up", "down"][i % 2] for i in range(40)]
    records = [{"a": s[:, 0].tolist(), "b": s[:, 1].tolist(), "y": y} for s, y in zip(seqs, labels)]
    if fmt == "jsonl":
        src = tmp_path / "s.jsonl"
        src.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        src = tmp_path / "s.parquet"
        pq.write_table(pa.Table.from_pylist(records), src, row_group_size=9)
    out = tmp_path / "out"
    prepare(PrepareOptions(out=out, inputs=(str(src),), task="classify", columns=("a", "b"), label_field="y",
                           valid_fraction=0.0))
    store = SequenceStore(out)
    split = store.split("train")
    assert store.label_names == ["down", "up"] and split.num_features == 2
    assert np.array_equal(split.lengths, lengths)
    for i in range(40):
        assert np.array_equal(split[i], seqs[i].astype(np.float32))
    assert split.labels.tolist() == [store.label_names.index(y) for y in labels]
    stats = json.loads((out / "meta.json").read_text())["stats"]
    allrows = np.concatenate(seqs)
    assert stats["a"]["mean"] == pytest.approx(allrows[:, 0].mean()) and stats["b"]["std"] == pytest.approx(allrows[:, 1].std())


@pytest.mark.parametrize("record,match", [
    ({"a": 3.0, "b": [1.0], "y": "u"}, r"s.jsonl:2: field 'a' is 3.0, not a list of numbers"),
    ({"a": [1.0, "x"], "b": [1.0, 2.0], "y": "u"}, r"s.jsonl:2: field 'a' holds 'x', not a number"),
    ({"a": [1.0, 2.0], "b": [1.0], "y": "u"}, r"s.jsonl:2: the --columns lists differ in length \(a 2, b 1\)"),
    ({"a": [1.0, None], "b": [1.0, 2.0], "y": "u"}, r"s.jsonl:2 step 2: column 'a' is nan"),
])
def test_list_field_bad_input(tmp_path, record, match):
    src = tmp_path / "s.jsonl"
    src.write_text(json.dumps({"a": [1.0], "b": [2.0], "y": "d"}) + "\n" + json.dumps(record) + "\n")
    out = tmp_path / "out"
    with pytest.raises(SeqfitError, match=match):
        prepare(PrepareOptions(out=out, inputs=(str(src),), task="classify", columns=("a", "b"), label_field="y",
                               valid_fraction=0.0))
    assert not out.exists()


def _pairs(n=640, seed=4):
    rng = np.random.default_rng(seed)
    words = ["ich", "du", "er", "sie", "haus", "baum", "gut", "klein", "groß", "und"]
    en = ["i", "you", "he", "she", "house", "tree", "good", "small", "big", "and"]
    out = []
    for _ in range(n):
        k = rng.integers(0, 10, rng.integers(1, 12))
        out.append((" ".join(en[j] for j in k), " ".join(words[j] for j in k[::-1]) + (" !" if len(k) > 5 else "")))
    return out


@pytest.mark.parametrize("fmt,workers", [("jsonl", 1), ("jsonl", 2), ("csv", 1), ("parquet", 1)])
def test_source_target_pairs_round_trip(tmp_path, fmt, workers):
    pairs = _pairs()
    src = tmp_path / f"pairs.{fmt}"
    if fmt == "jsonl":
        src.write_text("".join(json.dumps({"en": a, "de": b}) + "\n" for a, b in pairs))
    elif fmt == "csv":
        import csv
        with open(src, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["en", "de"])
            w.writerows(pairs)
    else:
        pq.write_table(pa.table({"en": [a for a, _ in pairs], "de": [b for _, b in pairs]}), src, row_group_size=33)
    out = tmp_path / "out"
    meta = prepare(PrepareOptions(out=out, inputs=(str(src),), task="seq2seq", text_field="en", target_field="de",
                                  valid_fraction=0.2, workers=workers, chunk_bytes=1024, shard_bytes=1024))
    assert meta["task"] == "seq2seq" and meta["report"]["target_tokens"] == sum(len(b.split()) for _, b in pairs)
    store = SequenceStore(out)
    got = []
    for name in ("train", "valid"):
        split = store.split(name)
        for i in range(len(split)):
            got.append((" ".join(store.vocab.decode(split[i])), " ".join(store.vocab.decode(split.target(i)))))
        assert np.array_equal(split.lengths, [len(split[i]) for i in range(len(split))])
    assert 64 <= len(store.split("valid")) <= 192  # whole 64-record blocks, about 20%
    assert sorted(got) == sorted(pairs)  # every pair once, source and target kept together
    x, lengths = store.split("train").batch_targets([0, 1])
    assert x.shape[0] == 2 and lengths.tolist() == [len(store.split("train").target(i)) for i in (0, 1)]


def test_pairs_need_task_and_field(tmp_path):
    src = tmp_path / "p.jsonl"
    src.write_text(json.dumps({"text": "a b", "tgt": "c"}) + "\n")
    with pytest.raises(SeqfitError, match="--task seq2seq and --target-field"):
        prepare(PrepareOptions(out=tmp_path / "o", inputs=(str(src),), target_field="tgt"))
    with pytest.raises(SeqfitError, match="--task seq2seq and --target-field"):
        prepare(PrepareOptions(out=tmp_path / "o", inputs=(str(src),), task="seq2seq"))
    with pytest.raises(SeqfitError, match=r"p.jsonl:1: no field 'de'"):
        prepare(PrepareOptions(out=tmp_path / "o", inputs=(str(src),), task="seq2seq", target_field="de",
                               valid_fraction=0.0))
    assert not (tmp_path / "o").exists()
