"""Data that does not fit: prepare, embeddings restriction and bucketed batches, side by side.

(a) `prepare` (word level, 2 worker processes) on a small and a large generated corpus: peak RSS of the
    whole process tree (parent + workers) should not grow with the corpus; throughput in MB/s.
    Corpora are WikiText-2 lines with perturbations (adjacent word swaps, numbered suffixes on a fixed
    set of frequent words), drawn from one bounded pool so the distinct-type count is the same for both.
(b) restricting a generated GloVe-format text file (300-d) to a 30k vocabulary: peak RSS vs file size.
(c) an LSTM epoch (forward + backward, packed sequences) over a variable-length corpus:
    random fixed-size batches vs bucketed token-budget batches: padding waste and real tokens/s.

Every row runs in a fresh interpreter. Full: 100 MB vs 5 GB and a 2 GB vectors file;
--quick: 20 MB vs 200 MB and a 200 MB vectors file. Generated files live in benchmarks/work/.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import WORK, print_table, run_child, wikitext, write_result  # noqa: E402

MB = 1 << 20

# Runs a function of seqfit in a child and samples the RSS of the child and its workers together.
TREE_CHILD = """
import json, resource, sys, threading, time
import psutil
def tree_rss():
    me = psutil.Process()
    total = me.memory_info().rss
    for c in me.children(recursive=True):
        try: total += c.memory_info().rss
        except psutil.Error: pass
    return total
peak = [0]; stop = threading.Event()
def sample():
    while not stop.wait(0.02):
        peak[0] = max(peak[0], tree_rss())
threading.Thread(target=sample, daemon=True).start()
started = time.perf_counter()
exec(sys.argv[1])
seconds = time.perf_counter() - started
stop.set()
out = {"seconds": seconds, "tree_peak_rss": peak[0],
       "parent_peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
       "worker_peak_rss": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}
out.update(globals().get("extra", {}))
print(json.dumps(out))
"""


def _pool_text(target_bytes: int, seed: int = 0) -> list[bytes]:
    """~target_bytes of perturbed WikiText lines, cut into line-aligned 64 KiB blocks."""
    wiki = wikitext()
    lines = []
    for name in ("test.txt", "valid.txt"):
        lines += [ln.split() for ln in (wiki / name).read_text(encoding="utf-8").splitlines() if ln.strip()]
    counts: dict[str, int] = {}
    for words in lines:
        for w in words:
            counts[w] = counts.get(w, 0) + 1
    frequent = set(sorted(counts, key=counts.get, reverse=True)[:2000])
    rng = random.Random(seed)
    blocks, block, size, total = [], [], 0, 0
    while total < target_bytes:
        words = list(rng.choice(lines))
        for i in range(len(words) - 1):
            if rng.random() < 0.1:
                words[i], words[i + 1] = words[i + 1], words[i]
        words = [f"{w}_{rng.randrange(20)}" if w in frequent and rng.random() < 0.15 else w for w in words]
        line = (" ".join(words) + "\n").encode()
        block.append(line)
        size += len(line)
        if size >= 64 * 1024:
            blocks.append(b"".join(block))
            total += size
            block, size = [], 0
    return blocks


def _write_corpus(path: Path, nbytes: int, pool: list[bytes], seed: int) -> None:
    rng = random.Random(seed)
    written = 0
    with open(path, "wb") as f:
        while written < nbytes:
            chunk = b"".join(rng.choice(pool) for _ in range(64))  # 4 MiB at a time
            f.write(chunk)
            written += len(chunk)


def bench_prepare(quick: bool) -> list[dict]:
    sizes = [20 * MB, 200 * MB] if quick else [100 * MB, 5 * 1024 * MB]
    work = WORK / "data"
    work.mkdir(parents=True, exist_ok=True)
    pool = _pool_text(24 * MB)
    rows = []
    for nbytes in sizes:
        src = work / f"corpus-{nbytes // MB}MB.txt"
        out = work / f"store-{nbytes // MB}MB"
        _write_corpus(src, nbytes, pool, seed=nbytes)
        code = (f"from seqfit.data.prepare import prepare, PrepareOptions\n"
                f"from pathlib import Path\n"
                f"m = prepare(PrepareOptions(out=Path({str(out)!r}), inputs=({str(src)!r},), workers=2, overwrite=True))\n"
                f"extra = {{'tokens': m['report']['tokens'], 'vocab': m['report']['vocab_size'], "
                f"'types': m['report']['types_seen']}}")
        size = src.stat().st_size
        try:
            r = run_child(TREE_CHILD, code, timeout=4 * 3600)
        finally:  # never leave gigabytes behind
            src.unlink()
            shutil.rmtree(out, ignore_errors=True)
        rows.append({"bench": "prepare", "input_MB": round(size / MB), "tokens": r["tokens"], "types": r["types"],
                     "seconds": round(r["seconds"], 1), "MB_per_s": round(size / MB / r["seconds"], 1),
                     "tree_peak_MB": round(r["tree_peak_rss"] / MB, 1),
                     "parent_peak_MB": round(r["parent_peak_rss"] / MB, 1),
                     "worker_peak_MB": round(r["worker_peak_rss"] / MB, 1)})
    return rows


def _write_vectors(path: Path, nbytes: int, vocab_words: list[str], dim: int = 300, seed: int = 0) -> int:
    """A GloVe-format file: vocabulary words (some capitalised, for the lowercase fallback) among filler words."""
    import numpy as np

    rng = np.random.default_rng(seed)
    vecs = [" ".join(f"{v:.5f}" for v in rng.normal(0, 0.4, dim)) for _ in range(997)]
    row_bytes = len(vecs[0]) + 10
    n_rows = nbytes // row_bytes
    step = max(1, n_rows // len(vocab_words))
    pyrng = random.Random(seed)
    written = 0
    with open(path, "w", encoding="utf-8") as f:
        buf = []
        for i in range(n_rows):
            k = i // step
            if i % step == 0 and k < len(vocab_words):
                word = vocab_words[k] if k % 10 else vocab_words[k].capitalize()
            else:
                word = f"filler{i}"
            buf.append(f"{word} {vecs[pyrng.randrange(997)]}\n")
            if len(buf) == 4096:
                f.write("".join(buf))
                buf = []
            written += 1
        f.write("".join(buf))
    return written


def bench_embeddings(quick: bool) -> list[dict]:
    nbytes = 200 * MB if quick else 2048 * MB
    work = WORK / "data"
    work.mkdir(parents=True, exist_ok=True)
    words = [f"word{i}" for i in range(30_000 - 3)]
    vec = work / "vectors.txt"
    _write_vectors(vec, nbytes, words)
    code = (f"from collections import Counter\n"
            f"from seqfit.data.vocab import build_vocab\n"
            f"from seqfit.data.embeddings import restrict_embeddings\n"
            f"words = [f'word{{i}}' for i in range({len(words)})]\n"
            f"vocab, _ = build_vocab(Counter({{w: 2 for w in words}}), level='word')\n"
            f"extra = restrict_embeddings({str(vec)!r}, vocab, {str(work / 'emb.npy')!r})")
    size = vec.stat().st_size
    try:
        r = run_child(TREE_CHILD, code, timeout=3600)
    finally:
        vec.unlink()
        (work / "emb.npy").unlink(missing_ok=True)
    return [{"bench": "embeddings", "input_MB": round(size / MB), "vocab": 30_000, "dim": r["dim"],
             "coverage": round(r["coverage"], 4), "seconds": round(r["seconds"], 1),
             "MB_per_s": round(size / MB / r["seconds"], 1), "parent_peak_MB": round(r["parent_peak_rss"] / MB, 1),
             "peak_over_file": round(r["parent_peak_rss"] / size, 4)}]


BUCKET_CHILD = """
import json, sys, time
import numpy as np, torch
from torch import nn
from seqfit.data.buckets import TokenBudgetSampler
from seqfit.data.sequences import SequenceStore
from seqfit.nn.recurrent import RecurrentStack
mode, data_dir, budget, bsz, packed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"
torch.manual_seed(0); torch.set_num_threads(1)  # steadier on a shared machine
split = SequenceStore(data_dir).split("train")
lengths = np.asarray(split.lengths)
if mode == "bucketed":
    sampler = TokenBudgetSampler(lengths, max_tokens=budget, seed=1)
    batches = [np.array(b) for b in sampler]
else:  # random fixed-size batches
    perm = np.random.default_rng(1).permutation(len(lengths))
    batches = [perm[i:i + bsz] for i in range(0, len(perm), bsz)]
emb = nn.Embedding(1000, 64); rnn = RecurrentStack("lstm", 64, 128, 1); head = nn.Linear(128, 4)
params = list(emb.parameters()) + list(rnn.parameters()) + list(head.parameters())
opt = torch.optim.SGD(params, lr=0.1)
real = padded = 0
started = time.perf_counter()
for b in batches:
    x, L, y = split.batch(b)                                   # (B, T), (B,), (B,)
    out, _ = rnn(emb(x), lengths=L if packed else None)        # (B, T, H)
    last = out[torch.arange(len(L)), L - 1]                    # (B, H)
    loss = nn.functional.cross_entropy(head(last), y)
    opt.zero_grad(); loss.backward(); opt.step()
    real += int(L.sum()); padded += x.numel()
seconds = time.perf_counter() - started
print(json.dumps({"batches": len(batches), "seconds": seconds, "real_tokens": real, "padded_tokens": padded}))
"""


def bench_buckets(quick: bool) -> list[dict]:
    import numpy as np

    from seqfit.data.sequences import SequenceWriter

    n = 400 if quick else 1500
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(3.5, 0.8, n), 4, 300).astype(np.int64)  # median ~33, long tail
    out = WORK / "data" / "varlen"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    w = SequenceWriter(out, "train", np.uint16, labels=True)
    w.add(rng.integers(3, 1000, int(lengths.sum())), lengths, rng.integers(0, 4, n))
    info = w.close()
    meta = {"format": "seqfit-store", "version": 1, "kind": "sequences", "dtype": "uint16", "num_features": 0,
            "label_names": ["a", "b", "c", "d"], "splits": {"train": info}, "vocab_hash": None}
    # A numeric-free token store without vocabulary: the bench reads ids only (vocab check skipped below).
    from collections import Counter

    from seqfit.data.vocab import build_vocab
    vocab, _ = build_vocab(Counter({f"t{i}": 1 for i in range(997)}), level="word")
    (out / "vocab.json").write_text(vocab.to_json(), encoding="utf-8")
    meta["vocab_hash"] = vocab.hash()
    meta["vocab_size"] = len(vocab)
    (out / "meta.json").write_text(json.dumps(meta))
    bsz = 32
    budget = int(bsz * lengths.mean())  # same mean tokens per batch as the fixed batches hold
    rows = []
    for packed in (True, False):
        for mode in ("random", "bucketed"):
            r = run_child(BUCKET_CHILD, mode, str(out), str(budget), str(bsz), "1" if packed else "0")
            rows.append({"bench": "batches", "mode": mode, "packed": packed, "batches": r["batches"],
                         "padding_waste": round(1 - r["real_tokens"] / r["padded_tokens"], 4),
                         "seconds": round(r["seconds"], 2), "tokens_per_s": round(r["real_tokens"] / r["seconds"])})
    shutil.rmtree(out, ignore_errors=True)
    return rows


def run(quick: bool = False) -> dict:
    if wikitext() is None:
        return {"name": "data", "rows": [], "summary": {}, "note": "skipped: ../shared/data/wikitext-2 not found"}
    rows = bench_prepare(quick) + bench_embeddings(quick) + bench_buckets(quick)
    small, large = [r for r in rows if r["bench"] == "prepare"]
    emb = next(r for r in rows if r["bench"] == "embeddings")
    by = {(r["mode"], r["packed"]): r for r in rows if r["bench"] == "batches"}
    summary = {
        "prepare_input_ratio": round(large["input_MB"] / small["input_MB"], 1),
        "prepare_tree_peak_ratio_large_over_small": round(large["tree_peak_MB"] / small["tree_peak_MB"], 3),
        "prepare_parent_peak_ratio_large_over_small": round(large["parent_peak_MB"] / small["parent_peak_MB"], 3),
        "prepare_MB_per_s_large": large["MB_per_s"],
        "embeddings_peak_over_file_size": emb["peak_over_file"],
        "bucketed_over_random_tokens_per_s_packed": round(by["bucketed", True]["tokens_per_s"] / by["random", True]["tokens_per_s"], 2),
        "bucketed_over_random_tokens_per_s_padded": round(by["bucketed", False]["tokens_per_s"] / by["random", False]["tokens_per_s"], 2),
        "padding_waste_random": by["random", True]["padding_waste"],
        "padding_waste_bucketed": by["bucketed", True]["padding_waste"],
    }
    return {"name": "data", "rows": rows, "summary": summary,
            "note": "prepare small vs large (2 workers), embeddings restriction, bucketed vs random batches"}


if __name__ == "__main__":
    result = run(quick="--quick" in sys.argv)
    print_table(result)
    print(f"written: {write_result(result)}")
