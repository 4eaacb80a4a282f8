"""seqfit prepare + train against a plain-PyTorch baseline in the usual naive style, on WikiText-2.

Train on test.txt, validate on valid.txt; 2-layer LSTM, 200 units, batch 20, bptt 35, same number of
steps. Each phase runs in a fresh interpreter and reports its own peak RSS (ru_maxrss), so phases
don't inherit each other's peaks. Also: seqfit prepare on a 10x concatenation of test.txt, whose
peak should match the 1x peak (streaming).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import WORK, print_table, run_child, wikitext, write_result  # noqa: E402

STEPS = 300
MODEL = ["--cell", "lstm", "--layers", "2", "--hidden", "200", "--embed", "200", "--dropout", "0.2",
         "--batch-size", "20", "--bptt", "35", "--lr", "20", "--clip", "0.25", "--optimizer", "sgd",
         "--device", "cpu", "--eval-batches", "1", "--log-every", "50", "--checkpoint-every", "0"]

SEQFIT_CHILD = """
import json, resource, sys, time
from seqfit.cli.main import main
started = time.perf_counter()
try:
    main(sys.argv[1:])
except SystemExit as e:
    if e.code: raise
print(json.dumps({"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "seconds": time.perf_counter() - started}))
"""

# The usual naive pattern (as in many tutorials): whole corpus in Python lists, one big id tensor,
# batchify into a (L, B) tensor, fused multi-layer nn.LSTM, full logits + cross-entropy.
# The vocabulary covers the training and validation files, as seqfit prepare's does (and PyTorch's
# word_language_model example's): the output layer, most of the step's work, is then the same size.
NAIVE_CHILD = """
import json, resource, sys, time
import torch, torch.nn as nn, torch.nn.functional as F
path, valid_path, phase, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
started = time.perf_counter()
def read_words(p):
    words = []
    with open(p, encoding="utf-8") as f:
        for line in f:
            words += line.split() + ["<eos>"]
    return words
words = read_words(path)
idx = {}
for w in words + read_words(valid_path):
    idx.setdefault(w, len(idx))
ids = torch.tensor([idx[w] for w in words], dtype=torch.int64)
load_seconds = time.perf_counter() - started
result = {"tokens": len(words), "types": len(idx), "load_seconds": load_seconds}
if phase == "train":
    torch.manual_seed(1111)
    bsz, bptt, V = 20, 35, len(idx)
    n = ids.size(0) // bsz
    data = ids[: n * bsz].view(bsz, -1).t().contiguous()
    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.drop = nn.Embedding(V, 200), nn.Dropout(0.2)
            self.rnn, self.dec = nn.LSTM(200, 200, 2, dropout=0.2), nn.Linear(200, V)
        def forward(self, x, h):
            out, h = self.rnn(self.drop(self.emb(x)), h)
            return self.dec(self.drop(out)), h
    model = LM()
    h = None
    step, tokens = 0, 0
    t0 = time.perf_counter()
    while step < steps:
        for i in range(0, data.size(0) - 1, bptt):
            t = min(bptt, data.size(0) - 1 - i)
            x, y = data[i:i + t], data[i + 1:i + 1 + t]
            h = None if h is None else tuple(v.detach() for v in h)
            model.zero_grad()
            logits, h = model(x, h)
            loss = F.cross_entropy(logits.view(-1, V), y.reshape(-1))
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 0.25)
            for p in model.parameters():
                p.data.add_(p.grad, alpha=-20)
            step, tokens = step + 1, tokens + y.numel()
            if step == steps:
                break
    result["tokens_per_s"] = tokens / (time.perf_counter() - t0)
result["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps(result))
"""


def run(quick: bool = False) -> dict:
    wiki = wikitext()
    if wiki is None:
        return {"name": "foundation", "note": "skipped: ../shared/data/wikitext-2 not found", "rows": []}
    steps = 40 if quick else STEPS
    work = WORK / "foundation"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    big = work / "test10x.txt"
    text = (wiki / "test.txt").read_bytes()
    with open(big, "wb") as f:
        for _ in range(10):
            f.write(text)

    data = work / "data"
    prep = run_child(SEQFIT_CHILD, "prepare", "--train", str(wiki / "test.txt"), "--valid", str(wiki / "valid.txt"),
                     "--out", str(data))
    prep1 = run_child(SEQFIT_CHILD, "prepare", str(wiki / "test.txt"), "--valid-fraction", "0", "--out", str(work / "data1"))
    prep10 = run_child(SEQFIT_CHILD, "prepare", str(big), "--valid-fraction", "0", "--out", str(work / "data10"))
    meta10 = json.loads((work / "data10" / "meta.json").read_text())
    train = run_child(SEQFIT_CHILD, "train", str(data), "--out", str(work / "run"), *MODEL, "--max-steps", str(steps))
    summary = json.loads((work / "run" / "summary.json").read_text())
    naive_load = run_child(NAIVE_CHILD, str(wiki / "test.txt"), str(wiki / "valid.txt"), "load", "0")
    naive_train = run_child(NAIVE_CHILD, str(wiki / "test.txt"), str(wiki / "valid.txt"), "train", str(steps))

    mib = 1 / 2**20
    rows = [
        {"phase": "prepare 1x (test+valid)", "seqfit_peak_MiB": prep["peak_rss"] * mib,
         "naive_peak_MiB": naive_load["peak_rss"] * mib, "seqfit/naive": prep["peak_rss"] / naive_load["peak_rss"]},
        {"phase": f"train {steps} steps", "seqfit_peak_MiB": train["peak_rss"] * mib,
         "naive_peak_MiB": naive_train["peak_rss"] * mib, "seqfit/naive": train["peak_rss"] / naive_train["peak_rss"],
         "seqfit_tok_s": summary["tokens_per_s"], "naive_tok_s": naive_train["tokens_per_s"],
         "tok_s_ratio": summary["tokens_per_s"] / naive_train["tokens_per_s"]},
        {"phase": "prepare 1x test.txt", "seqfit_peak_MiB": prep1["peak_rss"] * mib},
        {"phase": "prepare 10x test.txt", "seqfit_peak_MiB": prep10["peak_rss"] * mib},
    ]
    shutil.rmtree(work, ignore_errors=True)
    return {"name": "foundation", "quick": quick, "steps": steps, "rows": rows, "summary": {
        "prepare_10x_over_1x_peak": prep10["peak_rss"] / prep1["peak_rss"],
        "prepare_10x_tokens": meta10["splits"]["train"]["tokens"],
        "naive_types": naive_load["types"],
    }}


if __name__ == "__main__":
    result = run(quick="--quick" in sys.argv)
    print_table(result)
    print(f"-> {write_result(result)}")
