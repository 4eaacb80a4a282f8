"""Memory planner: predicted against measured peak, budget runs, and the planner's choice against brute force.

Three parts, every measurement in a fresh child process running real training steps (engine Session steps
on a synthetic token store; seqfit.memory.probe):

  accuracy    a grid of configs (cells, sizes, sequence lengths, vocabularies, batch sizes, precisions,
              checkpointing, loss kinds, optimizers): predicted peak next to measured peak.
              Target: |predicted - measured| / measured <= 10% on every row.
  budget      plan_for_budget under a budget, then the chosen plan measured: it must stay under.
  choice      for a budget, every candidate plan of a grid is measured; the best measured throughput
              among those that stayed under the budget is compared with the planner's choice.
              Target: >= 90% of the best.
  classify    the same for sequence classifiers (estimate_classify): a grid of cells, directions, pooling,
              modes (full, exact, truncated), token and numeric inputs, precisions, accumulation, on
              synthetic variable-length stores (lengths T/2..T); then budget runs. Same 10% target.

"Measured peak" = the process's largest anonymous resident size during the training steps (absolute,
runtime included), from VmHWM and a 2 ms sampler (see seqfit.memory.probe). Throughput in the choice
part is tokens per CPU-second with one torch thread: this machine is shared, so wall time is noise.

    python benchmarks/bench_planner.py [--quick] [--only=accuracy,budget,choice,classify]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from seqfit.config import RunCfg, merge
from seqfit.memory.calibrate import load_constants
from seqfit.memory.estimate import DataInfo, estimate
from seqfit.memory.plan import apply_plan, candidates, plan_for_budget, requested_plan
from seqfit.memory.probe import measure_run
from seqfit.memory.estimate_classify import estimate_classifier
from seqfit.memory.plan_classify import describe_classify_plan, requested_classify_plan, sequence_info_from_dir
from seqfit.memory.synthetic import write_synthetic_sequences, write_synthetic_store
from seqfit.memory.throughput import tokens_per_second
from seqfit.nn.precision import cpu_bf16_rnn_supported

MB = 2**20

# name: (model, train, memory) overrides; vocabulary from "vocab"
GRID = [
    ("lstm-small", dict(cell="lstm", layers=1, hidden=256, embed=256), dict(batch_size=32, bptt=35), {}, 1000),
    ("lstm-acts", dict(cell="lstm", layers=2, hidden=256, embed=256), dict(batch_size=64, bptt=100), {}, 1000),
    ("lstm-2x512", dict(cell="lstm", layers=2, hidden=512, embed=512), dict(batch_size=32, bptt=50), {}, 10000),
    ("lstm-3x256-long", dict(cell="lstm", layers=3, hidden=256, embed=256), dict(batch_size=16, bptt=200), {}, 1000),
    ("lstm-1024", dict(cell="lstm", layers=1, hidden=1024, embed=512), dict(batch_size=32, bptt=35), {}, 10000),
    ("lstm-b64", dict(cell="lstm", layers=2, hidden=256, embed=256), dict(batch_size=64, bptt=70), {}, 5000),
    ("lstm-adam", dict(cell="lstm", layers=2, hidden=512, embed=512), dict(batch_size=16, bptt=35, optimizer="adam", lr=0.001), {}, 30000),
    ("lstm-ckpt", dict(cell="lstm", layers=2, hidden=512, embed=512), dict(batch_size=32, bptt=100), dict(checkpoint_time=10), 2000),
    ("lstm-ckpt-sqrt", dict(cell="lstm", layers=3, hidden=256, embed=256), dict(batch_size=32, bptt=200), dict(checkpoint_time=-1), 1000),
    ("lstm-bf16", dict(cell="lstm", layers=2, hidden=512, embed=512), dict(batch_size=32, bptt=50), dict(precision="bf16"), 10000),
    ("lstm-chunked", dict(cell="lstm", layers=1, hidden=512, embed=512), dict(batch_size=32, bptt=50), dict(loss="chunked"), 30000),
    ("lstm-accum", dict(cell="lstm", layers=2, hidden=512, embed=512), dict(batch_size=16, bptt=50), dict(effective_batch=64), 10000),
    ("lstm-tied", dict(cell="lstm", layers=2, hidden=400, embed=400, tie_weights=True), dict(batch_size=32, bptt=35), {}, 20000),
    ("gru-small", dict(cell="gru", layers=1, hidden=256, embed=256), dict(batch_size=32, bptt=35), {}, 1000),
    ("gru-acts", dict(cell="gru", layers=2, hidden=256, embed=256), dict(batch_size=64, bptt=100), {}, 1000),
    ("gru-heap", dict(cell="gru", layers=2, hidden=256, embed=256), dict(batch_size=16, bptt=100), {}, 1000),
    ("gru-2x512", dict(cell="gru", layers=2, hidden=512, embed=256), dict(batch_size=32, bptt=50), {}, 10000),
    ("gru-long", dict(cell="gru", layers=2, hidden=256, embed=256), dict(batch_size=16, bptt=200), {}, 2000),
    ("gru-ckpt", dict(cell="gru", layers=2, hidden=512, embed=512), dict(batch_size=32, bptt=100), dict(checkpoint_time=10), 2000),
    ("gru-bf16", dict(cell="gru", layers=2, hidden=512, embed=512), dict(batch_size=32, bptt=35), dict(precision="bf16"), 5000),
    ("rnn-acts", dict(cell="rnn", layers=3, hidden=512, embed=256), dict(batch_size=32, bptt=100), {}, 1000),
    ("rnn-1024", dict(cell="rnn", layers=2, hidden=1024, embed=512), dict(batch_size=32, bptt=50), {}, 10000),
    ("rnn-bf16", dict(cell="rnn", layers=2, hidden=512, embed=512), dict(batch_size=64, bptt=50), dict(precision="bf16"), 5000),
    ("rnn-ckpt", dict(cell="rnn", layers=3, hidden=512, embed=512), dict(batch_size=32, bptt=100), dict(checkpoint_time=-1), 2000),
    ("lstm-adaptive", dict(cell="lstm", layers=2, hidden=512, embed=512), dict(batch_size=32, bptt=35), dict(loss="adaptive"), 30000),
    ("lstm-nodrop", dict(cell="lstm", layers=2, hidden=512, embed=512, dropout=0.0), dict(batch_size=32, bptt=50), {}, 10000),
    ("gru-adamw-wd", dict(cell="gru", layers=1, hidden=768, embed=384), dict(batch_size=32, bptt=35, optimizer="adamw", lr=0.001, weight_decay=0.01), {}, 20000),
]
QUICK = {"lstm-acts", "gru-acts", "rnn-acts", "lstm-ckpt", "lstm-bf16"}

# (name, config index in GRID or overrides, budget): plan under the budget, then measure
BUDGETS = [
    ("lstm-2x512 @ 700MB", "lstm-2x512", dict(batch_size=64), {}, 700 * MB),
    ("lstm-long @ 450MB", "lstm-3x256-long", dict(batch_size=32), {}, 450 * MB),
    ("gru-2x512 @ 650MB", "gru-2x512", dict(batch_size=64), {}, 650 * MB),
    ("lstm-adam-30k @ 1100MB", "lstm-adam", dict(batch_size=32), {}, 1100 * MB),
]
# (name, base, train overrides, budget) for the brute-force comparison (small models: every candidate is run)
CHOICES = [
    ("lstm 256, eff. batch 32, 450MB", "lstm-small", dict(batch_size=32, bptt=100), {}, 450 * MB, 5000),
    ("gru 512, eff. batch 32, 300MB", "gru-2x512", dict(batch_size=32, bptt=50), {}, 300 * MB, 2000),
]


# name: (T, numeric features (0: tokens), model, train, memory)
CLASSIFY_GRID = [
    ("c-lstm-400", 400, 0, dict(cell="lstm", layers=1, hidden=256, embed=128), dict(batch_size=32), {}),
    ("c-lstm-1600", 1600, 0, dict(cell="lstm", layers=1, hidden=256, embed=128), dict(batch_size=32), {}),
    ("c-lstm-2l-800", 800, 0, dict(cell="lstm", layers=2, hidden=256, embed=128), dict(batch_size=32), {}),
    ("c-gru-1600", 1600, 0, dict(cell="gru", layers=1, hidden=256, embed=128), dict(batch_size=32), {}),
    ("c-rnn-2l-1600", 1600, 0, dict(cell="rnn", layers=2, hidden=512, embed=128), dict(batch_size=32), {}),
    ("c-lstm-bi-1600", 1600, 0, dict(cell="lstm", layers=1, hidden=256, embed=128, bidirectional=True), dict(batch_size=32), {}),
    ("c-gru-bi-mean-800", 800, 0, dict(cell="gru", layers=2, hidden=256, embed=128, bidirectional=True, pooling="mean"), dict(batch_size=32), {}),
    ("c-lstm-exact-4000", 4000, 0, dict(cell="lstm", layers=2, hidden=256, embed=128), dict(batch_size=16), dict(checkpoint_time=-1)),
    ("c-lstm-trunc-4000", 4000, 0, dict(cell="lstm", layers=2, hidden=256, embed=128), dict(batch_size=16, bptt=100), {}),
    ("c-gru-feats-1000", 1000, 8, dict(cell="gru", layers=2, hidden=256), dict(batch_size=32), {}),
    ("c-lstm-bf16-1600", 1600, 0, dict(cell="lstm", layers=2, hidden=256, embed=128), dict(batch_size=32), dict(precision="bf16")),
    ("c-lstm-accum-800", 800, 0, dict(cell="lstm", layers=2, hidden=256, embed=128), dict(batch_size=16), dict(effective_batch=32)),
    ("c-gru-bi-exact-1600", 1600, 0, dict(cell="gru", layers=2, hidden=256, embed=128, bidirectional=True, pooling="mean"), dict(batch_size=16), dict(checkpoint_time=-1)),
    ("c-lstm-tokens-1600", 1600, 0, dict(cell="lstm", layers=1, hidden=256, embed=128), dict(batch_size=32), dict(max_tokens=24000)),
    # a few long rows: the CPU GRU's and RNN's per-step autograd records outweigh their per-token bytes
    ("c-gru-thin-6000", 6000, 0, dict(cell="gru", layers=2, hidden=64, embed=32), dict(batch_size=2), {}),
    ("c-rnn-thin-6000", 6000, 0, dict(cell="rnn", layers=1, hidden=64, embed=32), dict(batch_size=2), {}),
]
CLASSIFY_QUICK = {"c-lstm-400", "c-lstm-bi-1600", "c-lstm-exact-4000"}
# (name, grid row, budget): plan the row under the budget, then measure the chosen plan
CLASSIFY_BUDGETS = [("c-lstm-2l-1600 @ 600MB", "c-lstm-bf16-1600", dict(precision="fp32"), 600 * MB),
                    ("c-lstm-bi-1600 @ 900MB", "c-lstm-bi-1600", {}, 900 * MB)]


def _cfg(model: dict, train: dict, memory: dict) -> RunCfg:
    train = {"optimizer": "sgd", "lr": 0.1, **train}
    return merge(RunCfg(), {"model": {"dropout": 0.2, **model}, "train": train, "memory": {"device": "cpu", **memory}})


def _grid_entry(name: str):
    return next(g for g in GRID if g[0] == name)


class _Stores:
    """One synthetic store per vocabulary size, big enough for every row's batch."""

    def __init__(self, root: Path):
        self.root, self.dirs = root, {}

    def get(self, vocab: int) -> Path:
        if vocab not in self.dirs:
            self.dirs[vocab] = write_synthetic_store(self.root / f"v{vocab}", vocab, 400_000, seed=vocab)
        return self.dirs[vocab]


def _runs_here(name: str, memory: dict, echo) -> bool:
    """A bf16 row needs the CPU's bf16 recurrent kernels; elsewhere training refuses it, so the row is skipped."""
    if memory.get("precision") == "bf16" and not cpu_bf16_rnn_supported():
        echo(f"{name:<18} skipped: this CPU has no bf16 recurrent kernels")
        return False
    return True


def _accuracy(names, stores: _Stores, echo) -> list[dict]:
    rows = []
    for name, model, train, memory, vocab in GRID:
        if name not in names or not _runs_here(name, memory, echo):
            continue
        cfg = _cfg(model, train, memory)
        data = DataInfo(vocab)
        plan = requested_plan(cfg, data, "cpu")
        consts = load_constants("cpu", [(cfg.model.cell, cfg.memory.precision)])
        est = estimate(cfg, data, plan, consts)
        got = measure_run(cfg, stores.get(vocab), steps=4)
        err = (est["peak"] - got["peak_bytes"]) / got["peak_bytes"]
        rows.append({"name": name, "cell": cfg.model.cell, "layers": cfg.model.layers, "hidden": cfg.model.hidden,
                     "vocab": vocab, "batch": plan["batch_size"], "micro": plan["micro_batch"], "bptt": plan["bptt"],
                     "precision": plan["precision"], "loss": plan["loss"], "ckpt": plan["checkpoint_time"],
                     "optimizer": plan["optimizer"], "predicted_mb": est["peak"] / MB,
                     "measured_mb": got["peak_bytes"] / MB, "sampled_mb": got["peak_anon_sampled"] / MB,
                     "error": err, "phase": est["phase"]})
        echo(f"{name:<18} predicted {est['peak'] / MB:8.1f} MB  measured {got['peak_bytes'] / MB:8.1f} MB  {err:+6.1%}")
    return rows


def _budget_runs(stores: _Stores, echo, quick: bool) -> list[dict]:
    rows = []
    for name, base, train, memory, budget in BUDGETS[:2] if quick else BUDGETS:
        _, model, train0, memory0, vocab = _grid_entry(base)
        cfg = _cfg(model, {**train0, **train}, {**memory0, **memory})
        choice = plan_for_budget(cfg, DataInfo(vocab), budget, device="cpu")
        got = measure_run(choice.cfg, stores.get(vocab), steps=4)
        rows.append({"name": name, "budget_mb": budget / MB, "plan": _short(choice.plan),
                     "predicted_mb": choice.plan["predicted_peak_bytes"] / MB, "measured_mb": got["peak_bytes"] / MB,
                     "under_budget": got["peak_bytes"] <= budget})
        echo(f"{name:<24} {_short(choice.plan):<32} predicted {choice.plan['predicted_peak_bytes'] / MB:7.1f} "
             f"measured {got['peak_bytes'] / MB:7.1f} budget {budget / MB:.0f} MB")
    return rows


def _short(plan: dict) -> str:
    ck = f" ck{plan['checkpoint_time']}" if plan["checkpoint_time"] else ""
    loss = f" {plan['loss']}" + (f"/{plan['loss_chunk']}" if plan["loss"] == "chunked" else "")
    return f"{plan['micro_batch']}x{plan['accumulate']}{ck}{loss}"


def _choice_runs(stores: _Stores, echo, quick: bool) -> list[dict]:
    rows = []
    for name, base, train, memory, budget, vocab in CHOICES[:1] if quick else CHOICES:
        _, model, train0, memory0, _ = _grid_entry(base)
        cfg = _cfg(model, {**train0, **train}, {**memory0, "loss": "auto", **memory})
        data = DataInfo(vocab)
        choice = plan_for_budget(cfg, data, budget, device="cpu")
        # every micro-batch down to 4 streams, with and without checkpointing (its largest k), full or chunked
        # loss (its largest chunk); smaller micro-batches are always slower here
        grid = [p for p in candidates(cfg, data, "cpu") if p["micro_batch"] >= 4 and p["checkpoint_time"] in (0, max(
            c["checkpoint_time"] for c in candidates(cfg, data, "cpu")))]
        grid = [p for p in grid if p["loss"] == "full" or p["loss_chunk"] == max(
            c["loss_chunk"] for c in grid if c["loss"] == "chunked")]
        if not any(_same(p, choice.plan) for p in grid):
            grid.append({k: choice.plan[k] for k in grid[0]})
        measured = []
        for p in grid:
            got = measure_run(apply_plan(cfg, p), stores.get(vocab), steps=4, threads=1)
            cpu = min(got["step_cpu_seconds"][1:])
            tps = p["batch_size"] * p["bptt"] / cpu
            measured.append({"plan": _short(p), "peak_mb": got["peak_bytes"] / MB, "tokens_per_cpu_s": tps,
                             "fits": got["peak_bytes"] <= budget, "chosen": _same(p, choice.plan),
                             "predicted_tokens_per_s": tokens_per_second(cfg.model, vocab, p)})
        fitting = [m for m in measured if m["fits"]]
        best = max(fitting, key=lambda m: m["tokens_per_cpu_s"]) if fitting else None
        chosen = next(m for m in measured if m["chosen"])
        ratio = chosen["tokens_per_cpu_s"] / best["tokens_per_cpu_s"] if best else 0.0
        rows.append({"name": name, "budget_mb": budget / MB, "chosen": chosen["plan"],
                     "best": best["plan"] if best else None, "ratio": ratio, "grid": measured})
        echo(f"{name:<34} chosen {chosen['plan']:<18} best {best['plan'] if best else '-':<18} ratio {ratio:.2f}")
    return rows


class _SequenceStores:
    """One synthetic labelled store per (T, features): 300 sequences of lengths T/2..T (the first T long)."""

    def __init__(self, root: Path):
        self.root, self.dirs = root, {}

    def get(self, T: int, features: int) -> Path:
        if (T, features) not in self.dirs:
            lengths = np.random.default_rng(T).integers(T // 2, T + 1, 300)
            lengths[0] = T
            self.dirs[T, features] = write_synthetic_sequences(self.root / f"s{T}-{features}", lengths,
                                                               vocab_size=0 if features else 1000, num_features=features)
        return self.dirs[T, features]


def _classify_cfg(model: dict, train: dict, memory: dict) -> RunCfg:
    return _cfg({"task": "classify", **model}, train, memory)


def _classify(quick: bool, root: Path, echo) -> tuple[list[dict], list[dict]]:
    stores = _SequenceStores(root)
    rows = []
    for name, T, features, model, train, memory in CLASSIFY_GRID:
        if (quick and name not in CLASSIFY_QUICK) or not _runs_here(name, memory, echo):
            continue
        cfg = _classify_cfg(model, train, memory)
        data_dir = stores.get(T, features)
        data = sequence_info_from_dir(data_dir)
        plan = requested_classify_plan(cfg, "cpu")
        consts = load_constants("cpu", [(cfg.model.cell, cfg.memory.precision)])
        est = estimate_classifier(cfg, data, plan, consts)
        got = measure_run(cfg, data_dir, steps=3)
        err = (est["peak"] - got["peak_bytes"]) / got["peak_bytes"]
        rows.append({"name": name, "cell": cfg.model.cell, "layers": cfg.model.layers, "hidden": cfg.model.hidden,
                     "bidirectional": cfg.model.bidirectional, "T": T, "features": features, "mode": plan["mode"],
                     "batch": list(est["batch"]), "precision": plan["precision"], "predicted_mb": est["peak"] / MB,
                     "measured_mb": got["peak_bytes"] / MB, "error": err, "phase": est["phase"]})
        echo(f"{name:<20} predicted {est['peak'] / MB:8.1f} MB  measured {got['peak_bytes'] / MB:8.1f} MB  {err:+6.1%}")
    budgets = []
    for name, base, memory, budget in CLASSIFY_BUDGETS[:1] if quick else CLASSIFY_BUDGETS:
        _, T, features, model, train0, memory0 = next(g for g in CLASSIFY_GRID if g[0] == base)
        cfg = _classify_cfg(model, train0, {**memory0, **memory})
        data_dir = stores.get(T, features)
        choice = plan_for_budget(cfg, sequence_info_from_dir(data_dir), budget, device="cpu")
        got = measure_run(choice.cfg, data_dir, steps=3)
        budgets.append({"name": name, "budget_mb": budget / MB, "plan": describe_classify_plan(choice.plan),
                        "predicted_mb": choice.plan["predicted_peak_bytes"] / MB, "measured_mb": got["peak_bytes"] / MB,
                        "under_budget": got["peak_bytes"] <= budget})
        echo(f"{name:<24} {describe_classify_plan(choice.plan)}: predicted "
             f"{choice.plan['predicted_peak_bytes'] / MB:7.1f} measured {got['peak_bytes'] / MB:7.1f} budget {budget / MB:.0f} MB")
    return rows, budgets


def _same(a: dict, b: dict) -> bool:
    keys = ("micro_batch", "accumulate", "checkpoint_time", "loss", "loss_chunk")
    return all(a[k] == b[k] for k in keys)


def run(quick: bool = False, echo=print, parts: tuple[str, ...] = ("accuracy", "budget", "choice", "classify")) -> dict:
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="bench-planner-") as tmp:
        stores = _Stores(Path(tmp))
        names = QUICK if quick else {g[0] for g in GRID}
        accuracy = _accuracy(names, stores, echo) if "accuracy" in parts else []
        budgets = _budget_runs(stores, echo, quick) if "budget" in parts else []
        choices = _choice_runs(stores, echo, quick) if "choice" in parts else []
        classify, classify_budgets = _classify(quick, Path(tmp), echo) if "classify" in parts else ([], [])
    errors = [abs(r["error"]) for r in accuracy] or [0.0]
    classify_errors = [abs(r["error"]) for r in classify] or [0.0]
    summary = {"rows": len(accuracy), "max_abs_error": max(errors), "mean_abs_error": sum(errors) / len(errors),
               "within_10pct": sum(e <= 0.10 for e in errors), "budget_runs_under": sum(r["under_budget"] for r in budgets),
               "budget_runs": len(budgets), "min_choice_ratio": min((c["ratio"] for c in choices), default=None),
               "classify_rows": len(classify), "classify_max_abs_error": max(classify_errors),
               "classify_mean_abs_error": sum(classify_errors) / len(classify_errors),
               "classify_budget_runs_under": sum(r["under_budget"] for r in classify_budgets),
               "classify_budget_runs": len(classify_budgets), "seconds": round(time.time() - started, 1)}
    return {"name": "planner", "rows": accuracy, "budget_rows": budgets, "choice_rows": choices,
            "classify_rows": classify, "classify_budget_rows": classify_budgets, "summary": summary}


def _print_table(result: dict) -> None:
    from common import print_machine

    print_machine()
    print(f"\n{'config':<18}{'cell':>5}{'L':>3}{'H':>6}{'V':>7}{'B':>5}{'T':>5}{'prec':>6}{'loss':>9}{'ckpt':>5}"
          f"{'opt':>6}{'predicted':>11}{'measured':>10}{'error':>8}")
    for r in result["rows"]:
        print(f"{r['name']:<18}{r['cell']:>5}{r['layers']:>3}{r['hidden']:>6}{r['vocab']:>7}{r['batch']:>5}{r['bptt']:>5}"
              f"{r['precision']:>6}{r['loss']:>9}{r['ckpt']:>5}{r['optimizer']:>6}{r['predicted_mb']:>9.1f}MB"
              f"{r['measured_mb']:>8.1f}MB{r['error']:>+8.1%}")
    print("\nbudget runs:")
    for r in result["budget_rows"]:
        print(f"  {r['name']:<26} plan {r['plan']:<24} predicted {r['predicted_mb']:7.1f} MB  measured "
              f"{r['measured_mb']:7.1f} MB  {'under' if r['under_budget'] else 'OVER'} {r['budget_mb']:.0f} MB")
    print("\nplanner choice vs brute force (tokens per CPU-second, 1 thread):")
    for c in result["choice_rows"]:
        print(f"  {c['name']}: chosen {c['chosen']}, best {c['best']}, ratio {c['ratio']:.2f}")
        for m in c["grid"]:
            print(f"      {m['plan']:<22} peak {m['peak_mb']:7.1f} MB  {m['tokens_per_cpu_s']:8.0f} tok/cpu-s"
                  f"  {'fits' if m['fits'] else 'over'}{'  <- chosen' if m['chosen'] else ''}")
    if result["classify_rows"]:
        print(f"\n{'classifier':<22}{'cell':>5}{'L':>3}{'H':>6}{'bi':>4}{'T':>6}{'mode':>10}{'prec':>6}"
              f"{'predicted':>11}{'measured':>10}{'error':>8}")
        for r in result["classify_rows"]:
            print(f"{r['name']:<22}{r['cell']:>5}{r['layers']:>3}{r['hidden']:>6}{'y' if r['bidirectional'] else '-':>4}"
                  f"{r['T']:>6}{r['mode']:>10}{r['precision']:>6}{r['predicted_mb']:>9.1f}MB{r['measured_mb']:>8.1f}MB"
                  f"{r['error']:>+8.1%}")
        for r in result["classify_budget_rows"]:
            print(f"  {r['name']:<26} {r['plan']}: predicted {r['predicted_mb']:7.1f} MB  measured "
                  f"{r['measured_mb']:7.1f} MB  {'under' if r['under_budget'] else 'OVER'} {r['budget_mb']:.0f} MB")
    print("\nsummary:", json.dumps(result["summary"]))


if __name__ == "__main__":
    every = "accuracy,budget,choice,classify"
    only = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--only=")), every)
    result = run(quick="--quick" in sys.argv, parts=tuple(only.split(",")))
    _print_table(result)
    # a partial run gets its own file, so it never overwrites the full run's figures
    from common import RESULTS, write_result

    out = RESULTS / ("planner.json" if only == every else f"planner-{only.replace(',', '-')}.json")
    print(f"-> {write_result(result, out)}")
