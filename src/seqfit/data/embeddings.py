"""Pretrained word vectors (GloVe or word2vec text, .gz too) restricted to a vocabulary, streamed.

The file is read line by line and only rows of vocabulary words are parsed, so memory is the
(V, D) result, never the file. A vocabulary word without its own row takes the first row whose word
matches it ignoring case (GloVe is uncased; a --lowercase vocabulary meets cased word2vec files); words still missing get normal noise with the found rows' standard deviation, so
every row has the same scale; <pad> is zero. word2vec text starts with a "count dim" header line.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from seqfit.atomic import atomic_path
from seqfit.data.vocab import PAD, Vocab
from seqfit.errors import SeqfitError

__all__ = ["restrict_embeddings", "EMBEDDING_DTYPES"]

EMBEDDING_DTYPES = ("float32", "float16")
_EXACT, _LOWER = 2, 1
_ROWS = 4096  # rows per block when scanning the matrix


def _open(path: Path):
    try:
        return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
    except OSError as e:
        raise SeqfitError(f"cannot read embeddings {path}: {e.strerror}") from None


def _header(first: bytes) -> int | None:
    """The dimension from a word2vec "count dim" header, or None if the line is a vector row."""
    parts = first.split()
    if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
        return int(parts[1])
    return None


def restrict_embeddings(path: str | Path, vocab: Vocab, out: str | Path, *, dtype: str = "float32",
                        seed: int = 0) -> dict:
    """Write ``out`` (.npy, (len(vocab), D)) from the vectors file ``path``; returns a coverage report."""
    path, out = Path(path), Path(out)
    if dtype not in EMBEDDING_DTYPES:
        raise SeqfitError(f"--embeddings-dtype must be one of {', '.join(EMBEDDING_DTYPES)}, got {dtype!r}")
    if not path.is_file():
        raise SeqfitError(f"embeddings file not found: {path}")
    index = vocab.index
    lower: dict[str, list[int]] = {}
    for i, tok in enumerate(vocab.tokens):
        if tok.lower() != tok:
            lower.setdefault(tok.lower(), []).append(i)
    found = np.zeros(len(vocab), dtype=np.int8)  # 0 missing, 1 lowercase fallback, 2 own row
    matrix = None
    dim = None
    lines = 0
    with _open(path) as f:
        try:
            for lineno, raw in enumerate(f, 1):
                if lineno == 1:
                    if b"\0" in raw[:8192]:
                        raise SeqfitError(f"{path} looks binary: give GloVe/word2vec *text* vectors")
                    dim = _header(raw)
                    if dim is not None:
                        matrix = np.zeros((len(vocab), dim), dtype=np.float32)
                        continue
                line = raw.rstrip()
                if not line:
                    continue
                word_end = line.find(b" ")
                if word_end <= 0:
                    raise SeqfitError(f"{path}:{lineno}: expected a word followed by its vector values")
                rest = line[word_end + 1:]
                n = rest.count(b" ") + 1
                if dim is None:
                    dim = len(rest.split())
                    matrix = np.zeros((len(vocab), dim), dtype=np.float32)
                if n != dim and len(rest.split()) != dim:  # second test only for irregular spacing
                    raise SeqfitError(f"{path}:{lineno}: {len(rest.split())} values, expected {dim} (as the first row)")
                lines += 1
                try:
                    word = line[:word_end].decode("utf-8")
                except UnicodeDecodeError:
                    continue  # a word no vocabulary can hold
                i = index.get(word)
                if i is not None:
                    matrix[i] = _parse(rest, path, lineno)
                    found[i] = _EXACT
                    continue
                ids = lower.get(word)  # an uncased file: "paris" serves the vocabulary's "Paris"
                if not ids and word.lower() in index:  # a lowercased vocabulary: "Paris" serves "paris"
                    ids = [index[word.lower()]]
                if ids:
                    todo = [j for j in ids if found[j] == 0]
                    if todo:
                        matrix[todo] = _parse(rest, path, lineno)
                        found[todo] = _LOWER
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            raise SeqfitError(f"cannot read embeddings {path}: {e}") from None
    if matrix is None or lines == 0:
        raise SeqfitError(f"{path} holds no vectors")
    have = found > 0
    specials = np.array([tok == PAD for tok in vocab.tokens])
    if not have.any():
        raise SeqfitError(f"{path}: no vocabulary word has a vector (is it the right language/casing?)")
    std = _std(matrix, have) or 1.0
    rng = np.random.default_rng(seed)
    missing = np.flatnonzero(~have & ~specials)
    for lo in range(0, len(missing), _ROWS):  # in blocks: no full-size temporary
        rows = missing[lo:lo + _ROWS]
        matrix[rows] = rng.standard_normal((len(rows), matrix.shape[1]), dtype=np.float32) * std
    matrix[specials] = 0.0
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, matrix if dtype == "float32" else matrix.astype(dtype))
    countable = len(vocab) - int(specials.sum())
    return {"file": out.name, "source": str(path), "dim": int(matrix.shape[1]), "dtype": dtype,
            "rows_read": lines, "found": int((found == _EXACT).sum()), "found_lowercase": int((found == _LOWER).sum()),
            "coverage": float(have[~specials].sum() / countable) if countable else 0.0, "init_std": std}


def _std(matrix: np.ndarray, rows: np.ndarray) -> float:
    """Standard deviation of every value in the chosen rows, summed in float64 blocks (no copy of them all)."""
    idx = np.flatnonzero(rows)
    total = total_sq = 0.0
    for lo in range(0, len(idx), _ROWS):
        block = matrix[idx[lo:lo + _ROWS]].astype(np.float64)
        total += block.sum()
        total_sq += (block ** 2).sum()
    n = len(idx) * matrix.shape[1]
    return float(np.sqrt(max(total_sq / n - (total / n) ** 2, 0.0)))


def _parse(rest: bytes, path: Path, lineno: int) -> np.ndarray:
    try:
        return np.array(rest.split(), dtype=np.float32)
    except ValueError:
        raise SeqfitError(f"{path}:{lineno}: a value is not a number") from None
