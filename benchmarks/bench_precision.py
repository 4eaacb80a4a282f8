"""fp32 against bf16 training on CPU, side by side: tokens/s, peak memory, validation perplexity.

WikiText-2 (train on test.txt, validate on valid.txt), 2-layer LSTM, 650 units, tied embedding,
dropout 0.5, bptt 35, SGD lr 20 with clipping 0.25; batch 20 and batch 64. Every row is one
``seqfit train`` in a fresh interpreter (so memory peaks don't bleed between rows), with
torch.set_num_threads(THREADS). fp32 and bf16 rows of a batch size run back to back, and the
summary reports their ratios, since absolute timings on a shared machine drift with its load.

    tokens/s    median over logging windows of LOG_EVERY steps, the first (warm-up) window left out
    peak        the training loop's sampled peak RSS, and the process's ru_maxrss (includes validation
                and the final checkpoint)
    ppl         perplexity on the first EVAL_TOKENS-ish tokens of valid.txt after the same steps,
                evaluated in the precision the row trained in

Speed-only rows (few steps) add bf16 with the chunked loss. A last table gives the optimizer state
of SGD, SGD with momentum, Adam(W) and Adafactor for this model: predicted from shapes
(optimizer_state_bytes) and measured after one step (measured_state_bytes).

    python benchmarks/bench_precision.py [--quick] [--threads N]   # JSON in benchmarks/results/precision.json
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import WORK, print_table, run_child, wikitext, write_result  # noqa: E402

THREADS = int(os.environ.get("SEQFIT_BENCH_THREADS", "2"))
STEPS = {20: 150, 64: 60}  # quality rows: same steps for fp32 and bf16 of a batch size
QUICK_STEPS = {20: 8, 64: 4}
SPEED_STEPS = 12  # speed-only rows
LOG_EVERY = 4
EVAL_TOKENS = 20_000  # validation tokens per quality row (whole batches of batch x bptt)
BPTT = 35
MODEL = ["--cell", "lstm", "--layers", "2", "--hidden", "650", "--embed", "650", "--tie-weights",
         "--dropout", "0.5", "--bptt", str(BPTT), "--optimizer", "sgd", "--lr", "20", "--clip", "0.25",
         "--schedule", "constant", "--device", "cpu", "--checkpoint-every", "0", "--seed", "1111"]

TRAIN_CHILD = """
import json, os, resource, sys, time
import torch
torch.set_num_threads(int(sys.argv[1]))
from seqfit.cli.main import main
load_before = os.getloadavg()[0]
started = time.perf_counter()
try:
    main(sys.argv[2:])
except SystemExit as e:
    if e.code: raise
print(json.dumps({"ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "seconds": time.perf_counter() - started, "load": [load_before, os.getloadavg()[0]]}))
"""

OPTIM_CHILD = """
import json, sys
import torch
torch.set_num_threads(int(sys.argv[1]))
from seqfit.config import ModelCfg
from seqfit.models.lm import LanguageModel
from seqfit.train.optim import make_optimizer, measured_state_bytes, optimizer_state_bytes
vocab = int(sys.argv[2])
rows = []
for name, momentum in (("sgd", 0.0), ("sgd", 0.9), ("adam", 0.0), ("adamw", 0.0), ("adafactor", 0.0)):
    torch.manual_seed(0)
    cfg = ModelCfg(cell="lstm", layers=2, hidden=650, embed=650, dropout=0.0, tie_weights=True)
    model = LanguageModel(cfg, vocab, loss="full")
    opt = make_optimizer(name, model.parameters(), lr=1e-3, momentum=momentum)
    x = torch.randint(0, vocab, (2, 6))  # (B, T+1): one small step creates the state
    loss, _ = model(x[:, :-1], x[:, 1:])
    loss.backward()
    opt.step()
    shapes = [tuple(p.shape) for p in model.parameters() if p.requires_grad]
    rows.append({"optimizer": name + (f" momentum {momentum:g}" if momentum else ""),
                 "param_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
                 "predicted_bytes": optimizer_state_bytes(name, shapes, momentum=momentum),
                 "measured_bytes": measured_state_bytes(opt)})
print(json.dumps(rows))
"""


def _train_row(data: Path, work: Path, *, batch: int, precision: str, loss: str, steps: int, eval_batches: int,
               threads: int) -> dict:
    run_dir = work / f"run-b{batch}-{precision}-{loss}-{steps}"
    shutil.rmtree(run_dir, ignore_errors=True)
    child = run_child(TRAIN_CHILD, str(threads), "train", str(data), "--out", str(run_dir), *MODEL,
                      "--batch-size", str(batch), "--precision", precision, "--loss", loss,
                      "--max-steps", str(steps), "--eval-batches", str(eval_batches),
                      "--log-every", str(min(LOG_EVERY, steps)))
    summary = json.loads((run_dir / "summary.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rates = [r["tokens_per_s"] for r in records if r.get("kind") == "train"]
    rates = rates[1:] or rates  # the first window holds the warm-up (allocation, oneDNN primitive creation)
    shutil.rmtree(run_dir, ignore_errors=True)
    mib = 1 / 2**20
    return {"batch": batch, "precision": precision, "loss": loss, "steps": steps,
            "tokens_per_s": statistics.median(rates), "peak_train_MiB": summary["peak_rss"] * mib,
            "ru_maxrss_MiB": child["ru_maxrss"] * mib, "valid_ppl": summary["valid_ppl"],
            "valid_tokens": eval_batches * batch * BPTT, "seconds": child["seconds"],
            "load": [round(x, 1) for x in child["load"]]}


def run(quick: bool = False, threads: int = THREADS) -> dict:
    wiki = wikitext()
    if wiki is None:
        return {"name": "precision", "note": "skipped: ../shared/data/wikitext-2 not found", "rows": []}
    work = WORK / "precision"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    data = work / "data"
    run_child(TRAIN_CHILD, str(threads), "prepare", "--train", str(wiki / "test.txt"), "--valid",
              str(wiki / "valid.txt"), "--out", str(data))
    vocab = json.loads((data / "meta.json").read_text())["vocab_size"]

    rows = []
    for batch in (20, 64):
        steps = (QUICK_STEPS if quick else STEPS)[batch]
        eval_batches = 1 if quick else max(1, EVAL_TOKENS // (batch * BPTT))
        for precision in ("fp32", "bf16"):  # back to back, so the ratio sees the same machine load
            rows.append(_train_row(data, work, batch=batch, precision=precision, loss="full", steps=steps,
                                   eval_batches=eval_batches, threads=threads))
            print(_describe(rows[-1]), flush=True)
        if not quick:
            rows.append(_train_row(data, work, batch=batch, precision="bf16", loss="chunked", steps=SPEED_STEPS,
                                   eval_batches=1, threads=threads))
            rows[-1]["valid_ppl"] = None  # a speed row: too few steps for its perplexity to mean anything
            print(_describe(rows[-1]), flush=True)
    optim_rows = _optimizer_rows(threads, vocab)
    shutil.rmtree(work, ignore_errors=True)
    return {"name": "precision", "rows": rows, "optimizer_state": optim_rows, "threads": threads,
            "summary": _summary(rows)}


def _optimizer_rows(threads: int, vocab: int) -> list[dict]:
    rows = run_child(OPTIM_CHILD, str(threads), str(vocab))  # the child prints a JSON list
    mib = 1 / 2**20
    return [{"optimizer": r["optimizer"], "predicted_MiB": r["predicted_bytes"] * mib,
             "measured_MiB": r["measured_bytes"] * mib, "state/params": r["measured_bytes"] / r["param_bytes"],
             "predicted==measured": r["predicted_bytes"] == r["measured_bytes"]} for r in rows]


def _summary(rows: list[dict]) -> dict:
    out = {}
    for batch in sorted({r["batch"] for r in rows}):
        fp32 = next(r for r in rows if r["batch"] == batch and r["precision"] == "fp32")
        for r in rows:
            if r["batch"] != batch or r["precision"] == "fp32":
                continue
            key = f"batch {batch} {r['precision']}-{r['loss']}"
            out[f"{key} speedup"] = r["tokens_per_s"] / fp32["tokens_per_s"]
            out[f"{key} peak memory ratio"] = r["peak_train_MiB"] / fp32["peak_train_MiB"]
            if r["valid_ppl"] is not None:
                out[f"{key} ppl rel diff"] = r["valid_ppl"] / fp32["valid_ppl"] - 1
    key = "batch 64 bf16-full"
    if f"{key} speedup" in out:
        out["target (batch 64: bf16 >= 2x fp32 tokens/s, ppl within 2%) met"] = bool(
            out[f"{key} speedup"] >= 2.0 and abs(out[f"{key} ppl rel diff"]) <= 0.02)
    return out


def _describe(r: dict) -> str:
    ppl = f"ppl {r['valid_ppl']:.1f}" if r["valid_ppl"] is not None else "ppl -"
    return (f"batch {r['batch']:>2} {r['precision']} {r['loss']:>7} {r['steps']:>3} steps: "
            f"{r['tokens_per_s']:,.0f} tok/s, peak {r['peak_train_MiB']:,.0f} MiB, {ppl} "
            f"({r['seconds']:.0f}s, load {r['load']})")


if __name__ == "__main__":
    args = sys.argv[1:]
    threads = int(args[args.index("--threads") + 1]) if "--threads" in args else THREADS
    result = run(quick="--quick" in args, threads=threads)
    print_table(result)
    if result.get("optimizer_state"):
        print_table({"name": "optimizer state (2-layer LSTM 650, tied, WikiText-2 vocabulary)",
                     "rows": result["optimizer_state"]})
    print(f"-> {write_result(result)}")
