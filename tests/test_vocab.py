from collections import Counter

import numpy as np
import pytest

from seqfit.data.vocab import EOS, PAD, UNK, Vocab, build_vocab, smallest_uint_dtype
from seqfit.errors import SeqfitError


def test_specials_first_then_by_frequency():
    counts = Counter({"b": 5, "a": 9, "c": 1, EOS: 3})
    vocab, report = build_vocab(counts, level="word")
    assert vocab.tokens[:3] == [PAD, UNK, EOS]
    assert vocab.tokens[3:] == ["a", "b", "c"]
    assert report["coverage"] == 1.0 and report["unknown_rate"] == 0.0
    assert report["types_seen"] == 4


def test_min_freq_and_max_size_prune_to_unknown():
    counts = Counter({"a": 9, "b": 5, "c": 1, "d": 1, EOS: 4})
    vocab, report = build_vocab(counts, level="word", min_freq=2)
    assert vocab.tokens[3:] == ["a", "b"]
    assert report["unknown_rate"] == pytest.approx(2 / 20)
    assert vocab.counts[vocab.unk_id] == 2
    small, _ = build_vocab(counts, level="word", max_size=4)
    assert small.tokens == [PAD, UNK, EOS, "a"]
    assert small.encode(["a", "b", "zzz"]) == [3, 1, 1]


def test_literal_unknown_token_maps_to_the_special():
    vocab, report = build_vocab(Counter({"<unk>": 3, "x": 2, EOS: 1}), level="word")
    assert vocab.tokens == [PAD, UNK, EOS, "x"]
    assert vocab.encode(["<unk>"]) == [vocab.unk_id]
    assert report["unknown_rate"] == pytest.approx(3 / 6)


def test_pruning_everything_is_an_error():
    with pytest.raises(SeqfitError, match="empty after pruning"):
        build_vocab(Counter({"a": 1, EOS: 1}), level="word", min_freq=5)


def test_save_load_round_trip_and_hash(tmp_path):
    vocab, _ = build_vocab(Counter({"é": 2, "ß": 1, EOS: 1}), level="char")
    path = tmp_path / "vocab.json"
    path.write_text(vocab.to_json(), encoding="utf-8")
    again = Vocab.load(path)
    assert again.tokens == vocab.tokens and again.counts == vocab.counts and again.level == "char"
    assert again.hash() == vocab.hash()


def test_smallest_dtype():
    assert smallest_uint_dtype(256) == np.uint8
    assert smallest_uint_dtype(257) == np.uint16
    assert smallest_uint_dtype(70000) == np.uint32
