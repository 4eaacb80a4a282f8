"""fp32 against bf16 training on CPU, side by side: tokens/s, peak memory, validation perplexity.

WikiText-2 (train on test.txt, validate on valid.txt), 2-layer LSTM, 650 units, tied embedding,
dropout 0.5, bptt 35, Adam lr 1e-3 with clipping 0.25 (smoother early steps than SGD at lr 20, so
perplexities after a few dozen steps compare precisions rather than a chaotic start); batch 20 and
batch 64. Every row is one ``seqfit train`` in a fresh interpreter (so memory peaks don't bleed
between rows) with torch.set_num_threads(THREADS). The rows of a batch size run back to back and the
summary reports ratios to fp32, since absolute timings on a shared machine drift with its load (the
"load" column: 1-minute load average before and after the row).

    tokens/s    median over logging windows of LOG_EVERY steps, the first (warm-up) window left out
    peak        the training loop's sampled peak RSS; ru_maxrss also covers validation and the checkpoint
    ppl         perplexity on the first ~EVAL_TOKENS tokens of valid.txt after the same number of steps,
                evaluated in the precision the row trained in

Quality rows (fp32 and bf16, STEPS steps) give perplexity and peak memory. Speed rows come from
ROUNDS interleaved rounds of short runs (SPEED_STEPS) of every variant: fp32, bf16, bf16 "full-plain"
(the full head as it was before train/narrow_loss.py, F.cross_entropy on widened logits, patched in
that child only: a plain autocast of the whole step) and bf16 with the chunked loss; each variant's
tokens/s is its median over the rounds, and the speedups in the summary come from these.

With 2 threads on a machine that other jobs load, the LSTM's per-time-step kernels stall on OpenMP
barriers and absolute numbers swing 5x; compare rows of one round, or use --threads 1.

A last table gives the optimizer state of SGD, SGD with momentum, Adam(W) and Adafactor for this
model: predicted from shapes (optimizer_state_bytes) and measured after one step (measured_state_bytes).

    python benchmarks/bench_precision.py [--quick] [--threads N]   # JSON: benchmarks/results/precision.json
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
STEPS = {20: 80, 64: 30}  # quality rows: same steps for fp32 and bf16 of a batch size
QUICK_STEPS = {20: 8, 64: 4}
SPEED_STEPS = 12  # speed rounds: short runs, the first LOG_EVERY steps left out as warm-up
ROUNDS = 2
SPEED_VARIANTS = (("fp32", "full", False), ("bf16", "full", False), ("bf16", "full", True), ("bf16", "chunked", False))
LOG_EVERY = 4
EVAL_TOKENS = 10_000  # validation tokens per quality row (whole batches of batch x bptt)
BPTT = 35
MODEL = ["--cell", "lstm", "--layers", "2", "--hidden", "650", "--embed", "650", "--tie-weights",
         "--dropout", "0.5", "--bptt", str(BPTT), "--optimizer", "adam", "--lr", "0.001", "--clip", "0.25",
         "--schedule", "constant", "--device", "cpu", "--checkpoint-every", "0", "--seed", "1111"]

TRAIN_CHILD = """
import json, os, resource, sys, time
import torch
torch.set_num_threads(int(sys.argv[1]))
if sys.argv[2] == "plain":  # the full head as before train/narrow_loss.py: F.cross_entropy on widened logits
    import seqfit.models.heads
    seqfit.models.heads.narrow_autocast = lambda x: None
from seqfit.cli.main import main
load_before = os.getloadavg()[0]
started = time.perf_counter()
try:
    main(sys.argv[3:])
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
from seqfit.nn.optim import make_optimizer, measured_state_bytes, optimizer_state_bytes
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
               threads: int, plain: bool = False) -> dict:
    run_dir = work / f"run-b{batch}-{precision}-{loss}{'-plain' if plain else ''}-{steps}"
    shutil.rmtree(run_dir, ignore_errors=True)
    child = run_child(TRAIN_CHILD, str(threads), "plain" if plain else "-", "train", str(data), "--out", str(run_dir),
                      *MODEL, "--batch-size", str(batch), "--precision", precision, "--loss", loss,
                      "--max-steps", str(steps), "--eval-batches", str(eval_batches),
                      "--log-every", str(min(LOG_EVERY, steps)))
    summary = json.loads((run_dir / "summary.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rates = [r["tokens_per_s"] for r in records if r.get("kind") == "train"]
    rates = rates[1:] or rates  # the first window holds the warm-up (allocation, oneDNN primitive creation)
    shutil.rmtree(run_dir, ignore_errors=True)
    mib = 1 / 2**20
    return {"role": "quality", "batch": batch, "precision": precision, "loss": loss + ("-plain" if plain else ""),
            "steps": steps,
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
    run_child(TRAIN_CHILD, str(threads), "-", "prepare", "--train", str(wiki / "test.txt"), "--valid",
              str(wiki / "valid.txt"), "--out", str(data))
    vocab = json.loads((data / "meta.json").read_text())["vocab_size"]

    rows = []
    for batch in (20, 64):
        steps = (QUICK_STEPS if quick else STEPS)[batch]
        eval_batches = 1 if quick else max(1, EVAL_TOKENS // (batch * BPTT))
        for precision in ("fp32", "bf16"):  # quality: perplexity and peak memory after the same steps
            rows.append(_train_row(data, work, batch=batch, precision=precision, loss="full", steps=steps,
                                   eval_batches=eval_batches, threads=threads))
            print(_describe(rows[-1]), flush=True)
        if quick:
            continue
        # speed: short runs of every variant, interleaved round by round, so a change in the machine's
        # load falls on all of them alike; each variant's tokens/s is its median over the rounds
        runs: dict[tuple, list[dict]] = {v: [] for v in SPEED_VARIANTS}
        for _ in range(ROUNDS):
            for precision, loss, plain in SPEED_VARIANTS:
                runs[(precision, loss, plain)].append(_train_row(
                    data, work, batch=batch, precision=precision, loss=loss, steps=SPEED_STEPS, eval_batches=1,
                    threads=threads, plain=plain))
                print(_describe(runs[(precision, loss, plain)][-1], speed=True), flush=True)
        for done in runs.values():
            rate = statistics.median(r["tokens_per_s"] for r in done)
            rows.append({**done[0], "role": "speed", "steps": f"{ROUNDS}x{SPEED_STEPS}", "tokens_per_s": rate,
                         "round_tokens_per_s": [round(r["tokens_per_s"]) for r in done], "valid_ppl": None,
                         "peak_train_MiB": max(r["peak_train_MiB"] for r in done),
                         "ru_maxrss_MiB": max(r["ru_maxrss_MiB"] for r in done),
                         "seconds": sum(r["seconds"] for r in done),
                         "load": [min(r["load"][0] for r in done), max(r["load"][1] for r in done)]})
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
    """Ratios to fp32 of the same batch size: speed from the speed rounds (the quality rows without them)."""
    out = {}
    for batch in sorted({r["batch"] for r in rows}):
        quality = {r["precision"]: r for r in rows if r["batch"] == batch and r["role"] == "quality"}
        speed = {(r["precision"], r["loss"]): r for r in rows if r["batch"] == batch and r["role"] == "speed"}
        if not speed:
            speed = {(r["precision"], r["loss"]): r for r in quality.values()}
        base = speed[("fp32", "full")]["tokens_per_s"]
        for (precision, loss), r in speed.items():
            if precision != "fp32":
                out[f"batch {batch} {precision}-{loss} speedup"] = r["tokens_per_s"] / base
        fp32, bf16 = quality["fp32"], quality["bf16"]
        out[f"batch {batch} bf16-full peak memory ratio"] = bf16["peak_train_MiB"] / fp32["peak_train_MiB"]
        out[f"batch {batch} bf16-full ppl rel diff"] = bf16["valid_ppl"] / fp32["valid_ppl"] - 1
    if "batch 64 bf16-full speedup" in out:
        out["target (batch 64: bf16 >= 2x fp32 tokens/s, ppl within 2%) met"] = bool(
            out["batch 64 bf16-full speedup"] >= 2.0 and abs(out["batch 64 bf16-full ppl rel diff"]) <= 0.02)
    return out


def _describe(r: dict, speed: bool = False) -> str:
    ppl = f"ppl {r['valid_ppl']:.1f}" if r["valid_ppl"] is not None and not speed else "ppl -"
    return (f"batch {r['batch']:>2} {r['precision']} {r['loss']:>12} {r['steps']:>3} steps: "
            f"{r['tokens_per_s']:,.0f} tok/s, peak {r['peak_train_MiB']:,.0f} MiB, {ppl} "
            f"({r['seconds']:.0f}s, load {r['load']})")


if __name__ == "__main__":
    args = sys.argv[1:]
    threads = int(args[args.index("--threads") + 1]) if "--threads" in args else THREADS
    result = run(quick="--quick" in args, threads=threads)
    print_table(result)
    if result.get("optimizer_state"):
        print_table({"name": "optimizer state (2-layer LSTM 650, tied, WikiText-2 vocabulary)",
                     "rows": result["optimizer_state"]}, with_machine=False)
    print(f"-> {write_result(result)}")
