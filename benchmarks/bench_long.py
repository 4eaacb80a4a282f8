"""Long sequences: full BPTT vs exact time-chunked checkpointing vs truncated BPTT, side by side.

A sequence classifier (token ids -> embedding 256 -> 2-layer LSTM, 256 units -> mean pooling -> 10
classes), batch 16, one SGD step per timed step, T in {1k, 4k, 16k, 64k}. Each row runs in a fresh
child process; "act" is the peak over its steps minus the memory held before the first (model,
batch), from the kernel's resident high-water mark (CPU) or the CUDA allocator's peak; the time is
the last step's (two steps up to 4k, one above). k = ceil(sqrt(T)) for
both chunked modes. Two extra rows at T=4k ("/outputs") keep every step's top-layer output and put a
loss on it, as a language model does through RecurrentStack(checkpoint_time=k).

Before a row runs its memory is predicted -- linear in T from the previous row of the same mode
(full BPTT keeps every step), or from a per-step formula for a mode's first row -- and rows predicted
above the budget (16 GiB on this 24 GiB CPU machine; 80% of a GPU) are skipped, not crashed.

Children use one thread: on the shared 2-core machine OpenMP threads waiting on each other made
steps 5-30x slower. Other workers' load still shows in the seconds; compare within one run. They
also pin glibc's mmap threshold (see _fix_mmap_threshold; --no-malloc-fix to see the difference).

    python benchmarks/bench_long.py [--quick] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import print_table, run_child, write_result  # noqa: E402

B, H, E, LAYERS, VOCAB, CLASSES = 16, 256, 256, 2, 1000, 10
GiB = 1 << 30


def predict_bytes(mode: str, T: int, measured: dict[str, tuple[int, int]]) -> int:
    """Bytes a step will need on top of the baseline: scaled from the last measured row of the mode."""
    k = math.ceil(math.sqrt(T))
    if mode in measured:
        T0, bytes0 = measured[mode]
        scale = T / T0 if mode.startswith("full") or mode.endswith("outputs") else math.sqrt(T / T0)
        return int(bytes0 * scale)
    # about 12 H-sized fp32 values per step, layer and sequence (a fused LSTM's gates, cell, outputs)
    per_step = B * (E + 12 * LAYERS * H) * 4
    if mode.startswith("full"):
        return T * per_step
    kept = 3 * B * T * (E + H) * 4 if mode.endswith("outputs") else 0  # input, output and its gradient
    return k * per_step + (T // k + 1) * LAYERS * 2 * B * H * 4 + kept


def _fix_mmap_threshold(limit: int = 128 << 10) -> bool:
    """Pin glibc's mmap threshold, so blocks of >= 128 KiB are mapped and unmapped one by one.

    By default glibc raises the threshold (up to 32 MiB) whenever a mapped block is freed; the
    chunked modes then take their per-chunk tensors (a few MiB) from the heap, where small tensors
    that stay alive (pooled sums, boundary states) land in the freed holes and fragment it: resident
    memory grew by about one chunk input per chunk, linearly in T (1.5 GiB at T=64k for a 2 MiB
    chunk). mallopt(M_MMAP_THRESHOLD) also turns the dynamic adjustment off (mallopt(3)).
    """
    import ctypes

    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(-3, limit))  # M_MMAP_THRESHOLD = -3
    except (OSError, AttributeError):
        return False


def child(spec: dict) -> dict:
    """One row: build the model and a batch, take the steps, report time and memory."""
    import time

    import torch
    import torch.nn.functional as F

    from seqfit.config import ModelCfg
    from seqfit.measure.memory import read_peak_rss, reset_peak_rss
    from seqfit.models.classifier import SequenceClassifier
    from seqfit.nn.timechunk import truncated_chunks

    torch.set_num_threads(1)
    if spec["malloc_fix"]:
        _fix_mmap_threshold()
    torch.manual_seed(0)
    device = torch.device(spec["device"])
    T, mode = spec["T"], spec["mode"]
    k = math.ceil(math.sqrt(T))
    cfg = ModelCfg(task="classify", cell="lstm", layers=LAYERS, hidden=H, embed=E, dropout=0.0, pooling="mean")
    model = SequenceClassifier(cfg, CLASSES, vocab_size=VOCAB, checkpoint_time=k if mode.startswith("exact") else 0)
    model.to(device)
    per_step_head = torch.nn.Linear(H, CLASSES).to(device)  # the "/outputs" rows' loss on every step
    optimizer = torch.optim.SGD([*model.parameters(), *per_step_head.parameters()], lr=0.01)
    x = torch.randint(0, VOCAB, (B, T), device=device)
    lengths = torch.full((B,), T)
    y = torch.randint(0, CLASSES, (B,), device=device)
    y_steps = torch.randint(0, CLASSES, (B * T,), device=device)

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        if mode == "truncated":
            pooled, total = None, 0.0
            for chunk in truncated_chunks(model.rnn, model.chunk_inputs(x), None, lengths, k, total=T):
                part = model.pool_contribution(chunk.out, chunk.start, lengths)
                pooled = part if pooled is None else pooled + part
                if chunk.stop == T:
                    loss = F.cross_entropy(model.classify(model.summarize(pooled, lengths)), y)
                    loss.backward()
                    total = loss.item()
                pooled = pooled.detach()
            optimizer.step()
            return total
        if mode.endswith("outputs"):
            emb = model.chunk_inputs(x)(0, T)  # (B, T, E)
            out, _ = model.rnn(emb, None, None, checkpoint_time=model.checkpoint_time)  # (B, T, H)
            loss = F.cross_entropy(per_step_head(out).reshape(B * T, CLASSES), y_steps)
        else:
            loss = F.cross_entropy(model(x, lengths), y)
        loss.backward()
        optimizer.step()
        return loss.item()

    # The peak window spans every step: memory malloc keeps after a warm-up step (it returns small
    # blocks to the kernel late) is still memory the training needs.
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        reset_peak_rss()  # VmHWM := the current resident size
        base = read_peak_rss()
    times = []
    for _ in range(spec["steps"]):
        t0 = time.perf_counter()
        loss = step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() if cuda else read_peak_rss()) - base
    return {"seconds": times[-1], "act_bytes": max(0, int(peak)), "loss": loss}


_CHILD = "import json, sys; sys.path.insert(0, {here!r}); import bench_long; print(json.dumps(bench_long.child(json.loads(sys.argv[1]))))"


def run(quick: bool = False, device: str = "cpu", malloc_fix: bool = True) -> dict:
    lengths = [256, 1024] if quick else [1024, 4096, 16384, 65536]
    modes = ["full", "exact", "truncated"]
    if device == "cuda":
        import torch

        budget = int(0.8 * torch.cuda.get_device_properties(0).total_memory)
    else:
        budget = 16 * GiB
    plan = [(T, m) for T in lengths for m in modes]
    plan += [] if quick else [(4096, "full/outputs"), (4096, "exact/outputs")]
    rows, measured = [], {}
    for T, mode in plan:
        predicted = predict_bytes(mode, T, measured)
        row = {"T": T, "mode": mode, "k": math.ceil(math.sqrt(T)) if mode != "full" and not mode.startswith("full") else 0,
               "predicted_GiB": round(predicted / GiB, 3)}
        if predicted > budget:
            rows.append({**row, "status": f"skipped: predicted {predicted / GiB:.1f} GiB > budget {budget / GiB:.0f} GiB"})
            print(f"T={T} {mode}: skipped (predicted {predicted / GiB:.1f} GiB)", file=sys.stderr, flush=True)
            continue
        spec = {"T": T, "mode": mode, "device": device, "steps": 2 if T <= 4096 else 1, "malloc_fix": malloc_fix}
        try:
            out = run_child(_CHILD.format(here=str(HERE)), json.dumps(spec), timeout=1200)
        except Exception as e:  # a killed child (out of memory) is a row, not a crash
            rows.append({**row, "status": f"failed: {str(e).splitlines()[0][:80]}"})
            continue
        measured[mode] = (T, out["act_bytes"])
        rows.append({**row, "status": "ok", "s_per_step": round(out["seconds"], 3),
                     "act_GiB": round(out["act_bytes"] / GiB, 4), "loss": round(out["loss"], 4)})
        print(f"T={T} {mode}: {out['seconds']:.2f} s, {out['act_bytes'] / GiB:.3f} GiB", file=sys.stderr, flush=True)
    return {"name": "long" if device == "cpu" else f"long_{device}", "rows": rows,
            "summary": _summary(rows, 1024 if quick else 16384),
            "note": f"2-layer LSTM {H}, batch {B}, {device}; act = peak over the pre-run baseline"
                    + ("" if malloc_fix or device != "cpu" else "; glibc's dynamic mmap threshold left on")}


def _summary(rows: list[dict], T: int) -> dict:
    by = {(r["T"], r["mode"]): r for r in rows if r.get("status") == "ok"}
    out = {}
    for t, mode in sorted({(r["T"], r["mode"]) for r in rows}):
        if mode == "exact" and (t, "full") in by and (t, "exact") in by:
            full, exact = by[(t, "full")], by[(t, "exact")]
            out[f"T={t} memory full/exact"] = round(full["act_GiB"] / max(exact["act_GiB"], 1e-9), 1)
            out[f"T={t} time exact/full"] = round(exact["s_per_step"] / full["s_per_step"], 2)
    if (T, "full") in by and (T, "exact") in by:
        out["target (T=%d: >= 10x less memory at <= 1.5x time)" % T] = (
            out[f"T={T} memory full/exact"] >= 10 and out[f"T={T} time exact/full"] <= 1.5)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="T in {256, 1024} only")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--no-malloc-fix", action="store_true", help="leave glibc's dynamic mmap threshold on")
    args = parser.parse_args()
    result = run(quick=args.quick, device=args.device, malloc_fix=not args.no_malloc_fix)
    print_table(result)
    print(f"-> {write_result(result)}")
