import gzip
from collections import Counter

import numpy as np
import pytest

from seqfit.data.embeddings import restrict_embeddings
from seqfit.data.prepare import PrepareOptions, prepare
from seqfit.data.store import TokenStore
from seqfit.data.vocab import build_vocab
from seqfit.errors import SeqfitError
from seqfit.models.lm import load_embedding_matrix


def _vectors(tmp_path, words, dim=5, header=False, gz=False, seed=0):
    rng = np.random.default_rng(seed)
    rows = {w: rng.normal(0, 0.5, dim).astype(np.float32) for w in words}
    text = "".join(f"{w} {' '.join(repr(float(v)) for v in vec)}\n" for w, vec in rows.items())
    if header:
        text = f"{len(rows)} {dim}\n" + text
    path = tmp_path / ("v.txt.gz" if gz else "v.txt")
    path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    return path, rows


@pytest.mark.parametrize("header,gz", [(False, False), (True, False), (False, True)])
def test_rows_equal_the_source_rows(tmp_path, header, gz):
    vocab, _ = build_vocab(Counter({"cat": 5, "dog": 4, "Paris": 3, "zebra": 2, "qqq": 1}), level="word")
    path, rows = _vectors(tmp_path, ["filler", "dog", "paris", "cat", "other", "Cat"], header=header, gz=gz)
    report = restrict_embeddings(path, vocab, tmp_path / "e.npy")
    m = np.load(tmp_path / "e.npy")
    assert m.shape == (len(vocab), 5) and m.dtype == np.float32
    assert np.array_equal(m[vocab.index["cat"]], rows["cat"])  # its own row wins over "Cat"
    assert np.array_equal(m[vocab.index["dog"]], rows["dog"])
    assert np.array_equal(m[vocab.index["Paris"]], rows["paris"])  # lowercase fallback
    assert not m[vocab.pad_id].any()
    assert report["found"] == 2 and report["found_lowercase"] == 1
    assert report["coverage"] == pytest.approx(3 / (len(vocab) - 1))  # <pad> is not counted


def test_missing_rows_get_the_found_rows_scale(tmp_path):
    words = [f"w{i}" for i in range(400)]
    vocab, _ = build_vocab(Counter({w: 1 for w in words}), level="word")
    path, rows = _vectors(tmp_path, words[:200], dim=50)
    restrict_embeddings(path, vocab, tmp_path / "e.npy", dtype="float16")
    m = np.load(tmp_path / "e.npy")
    assert m.dtype == np.float16
    found = np.stack([rows[w] for w in words[:200]])
    missing = m[[vocab.index[w] for w in words[200:]]].astype(np.float32)
    assert missing.std() == pytest.approx(found.std(), rel=0.05)
    assert np.array_equal(m[vocab.index["w7"]], rows["w7"].astype(np.float16))


def test_wrong_width_names_the_line(tmp_path):
    vocab, _ = build_vocab(Counter({"a": 1}), level="word")
    path = tmp_path / "v.txt"
    path.write_text("2 3\na 1 2 3\nb 1 2\n")
    with pytest.raises(SeqfitError, match=r"v\.txt:3: 2 values, expected 3"):
        restrict_embeddings(path, vocab, tmp_path / "e.npy")
    assert not (tmp_path / "e.npy").exists()


def test_prepare_writes_a_matrix_the_model_loads(tmp_path, corpus):
    words = corpus.read_text().split()
    path, rows = _vectors(tmp_path, sorted(set(words))[:10], dim=8)
    out = tmp_path / "d"
    meta = prepare(PrepareOptions(out=out, inputs=(str(corpus),), embeddings=str(path)))
    vocab = TokenStore(out).vocab
    matrix = load_embedding_matrix(str(out / "embeddings.npy"), len(vocab), 8)
    for w, vec in rows.items():
        assert np.array_equal(matrix[vocab.index[w]].numpy(), vec)
    assert meta["embeddings"]["found"] == 10
