"""--valid-fraction on one classification file: a stratified share of its records, whatever the file's size."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from seqfit.data.chunks import StratifiedHoldout
from seqfit.data.prepare import PrepareOptions, prepare
from seqfit.data.sequences import SequenceStore


def _write(path, counts: dict[str, int]):
    rows = [(f"text {label} number {i} word{i % 7}", label) for label, n in counts.items() for i in range(n)]
    order = np.random.default_rng(0).permutation(len(rows))
    path.write_text("".join(json.dumps({"text": rows[k][0], "label": rows[k][1]}) + "\n" for k in order))
    return path


def _labels(out) -> dict[str, Counter]:
    store = SequenceStore(out)
    got = {}
    for split in ("train", "valid"):
        labels = np.asarray(store.split(split).labels) if store.has_split(split) else np.empty(0, np.int64)
        got[split] = Counter(store.label_names[i] for i in labels.tolist())
    return got


@pytest.mark.parametrize("fraction", [0.05, 0.2])
def test_small_file_holds_out_a_stratified_share(tmp_path, fraction):
    counts = {"pos": 34, "neg": 23, "mixed": 11}  # 68 records
    src = _write(tmp_path / "d.jsonl", counts)
    metas, splits = [], []
    for workers in (1, 2):
        out = tmp_path / f"o{workers}"
        metas.append(prepare(PrepareOptions(out=out, inputs=(str(src),), task="classify", label_field="label",
                                            valid_fraction=fraction, workers=workers, chunk_bytes=512)))
        splits.append(_labels(out))
    assert splits[0] == splits[1]  # the same records held out with any number of workers
    sequences = metas[0]["report"]["sequences"]
    assert sequences["train"] + sequences["valid"] == 68 and sequences["valid"] > 0
    train, valid = splits[0]["train"], splits[0]["valid"]
    for label, n in counts.items():
        assert train[label] + valid[label] == n
        assert 1 <= valid[label] <= max(1, round(n * fraction) + 1)  # every class, about its share
        assert train[label] >= 1
    assert abs(sum(valid.values()) - 68 * fraction) <= len(counts)


def test_prepare_says_how_many_records_each_split_got(cli, tmp_path):
    src = _write(tmp_path / "d.jsonl", {"a": 30, "b": 38})
    code, out, err = cli("prepare", src, "--task", "classify", "--label-field", "label", "--valid-fraction", "0.05",
                         "--out", tmp_path / "out")
    assert code == 0, err
    assert "68 sequences (train 64, valid 4)" in out, out


def test_holdout_rule_is_exact_per_class_and_never_takes_a_lone_record():
    h = StratifiedHoldout(0.1, seed=0)
    labels = ["a"] * 95 + ["b"] * 5 + ["c"]
    got = h.splits("mixed", labels)
    valid = Counter(l for l, s in zip(labels, got) if s == "valid")
    assert valid["a"] in (9, 10) and valid["b"] == 1 and valid["c"] == 0
    assert (h.splits("valid", ["a", "b"]) == "valid").all()  # explicit splits pass through
    assert (StratifiedHoldout(0.0, seed=0).splits("mixed", labels) == "train").all()


def test_numeric_sequences_hold_out_per_class_too(tmp_path):
    src = tmp_path / "n.jsonl"
    rng = np.random.default_rng(1)
    src.write_text("".join(json.dumps({"x": rng.normal(size=5).tolist(), "y": ["u", "v"][i % 2]}) + "\n"
                           for i in range(40)))
    meta = prepare(PrepareOptions(out=tmp_path / "o", inputs=(str(src),), task="classify", columns=("x",),
                                  label_field="y", valid_fraction=0.1))
    assert meta["report"]["sequences"]["valid"] == 4 and meta["report"]["sequences"]["train"] == 36
