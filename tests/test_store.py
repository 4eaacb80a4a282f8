import json

import numpy as np
import pytest

from seqfit.data.prepare import PrepareOptions, prepare_text
from seqfit.data.store import TokenArray, TokenStore
from seqfit.data.tokenize import detokenize
from seqfit.errors import SeqfitError


def test_round_trip_text_to_ids_to_text(tmp_path, corpus):
    out = tmp_path / "d"
    meta = prepare_text(PrepareOptions(out=out, inputs=(str(corpus),), valid_fraction=0.0))
    store = TokenStore(out)
    ids = store.split("train").read(0, len(store.split("train")))
    text = detokenize(store.vocab.decode(ids), "word", "<eos>")
    assert text == corpus.read_text()  # every line, the last included, ends in <eos>
    assert meta["splits"]["train"]["tokens"] == len(ids)
    assert store.dtype == np.uint8  # 20-odd word types fit a byte


def test_char_level_round_trip_keeps_unicode(tmp_path):
    src = tmp_path / "u.txt"
    src.write_text("naïve café\n\tdéjà vu — ok\n", encoding="utf-8")
    out = tmp_path / "d"
    prepare_text(PrepareOptions(out=out, inputs=(str(src),), level="char", valid_fraction=0.0))
    store = TokenStore(out)
    ids = store.split("train").read(0, len(store.split("train")))
    assert detokenize(store.vocab.decode(ids), "char", "<eos>") == src.read_text()


def test_valid_fraction_holds_out_blocks_and_keeps_every_token(tmp_path):
    src = tmp_path / "c.txt"
    src.write_text("".join(f"w{i} x\n" for i in range(6400)), encoding="utf-8")
    meta = prepare_text(PrepareOptions(out=tmp_path / "d", inputs=(str(src),), valid_fraction=0.1))
    train, valid = meta["splits"]["train"]["tokens"], meta["splits"]["valid"]["tokens"]
    assert train + valid == 6400 * 3
    assert 0.07 < valid / (train + valid) < 0.13


def test_sharded_reads_cross_boundaries():
    a = np.arange(10, dtype=np.uint16)
    b = np.arange(10, 25, dtype=np.uint16)
    arr = TokenArray([a, b])
    assert len(arr) == 25
    assert arr.read(8, 5).tolist() == [8, 9, 10, 11, 12]
    assert arr.windows(np.array([0, 9, 20]), 3).tolist() == [[0, 1, 2], [9, 10, 11], [20, 21, 22]]


def test_truncated_array_is_refused(data_dir):
    path = data_dir / "train.bin"
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(SeqfitError, match="truncated"):
        TokenStore(data_dir).split("train")


def test_mismatched_vocabulary_is_refused(data_dir):
    vocab = json.loads((data_dir / "vocab.json").read_text())
    vocab["tokens"][5], vocab["tokens"][6] = vocab["tokens"][6], vocab["tokens"][5]
    (data_dir / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(SeqfitError, match="does not match"):
        TokenStore(data_dir)


def test_missing_meta_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SeqfitError, match="no meta.json"):
        TokenStore(tmp_path / "empty")


def test_sharded_stream_round_trips(tmp_path, corpus):
    out = tmp_path / "d"
    meta = prepare_text(PrepareOptions(out=out, inputs=(str(corpus),), valid_fraction=0.0, shard_bytes=1024))
    shards = meta["splits"]["train"]["shards"]
    assert len(shards) > 1 and all(s["tokens"] <= 1024 for s in shards)
    store = TokenStore(out)
    ids = store.split("train").read(0, len(store.split("train")))
    assert detokenize(store.vocab.decode(ids), "word", "<eos>") == corpus.read_text()


def test_subword_round_trip(tmp_path, corpus):
    pytest.importorskip("tokenizers")
    from seqfit.data.tokenize import make_tokenizer

    out = tmp_path / "d"
    prepare_text(PrepareOptions(out=out, inputs=(str(corpus),), level="subword", bpe_vocab=60, valid_fraction=0.0))
    store = TokenStore(out)
    ids = store.split("train").read(0, len(store.split("train")))
    assert detokenize(store.vocab.decode(ids), "subword", "<eos>") == corpus.read_text()
    pieces = make_tokenizer("subword", subword=out / "tokenizer.json")("the cat sees")
    assert "".join(pieces).replace("\u2581", " ").strip() == "the cat sees"


def test_subword_without_tokenizers_gives_the_install_hint(tmp_path, corpus, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tokenizers(name, *args, **kwargs):
        if name == "tokenizers":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tokenizers)
    with pytest.raises(SeqfitError, match="pip install"):
        prepare_text(PrepareOptions(out=tmp_path / "d", inputs=(str(corpus),), level="subword"))
