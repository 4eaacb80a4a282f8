"""Output-layer losses side by side: one-hot targets, full logits, chunked logits, adaptive softmax.

For V in {10k, 50k, 250k} and 20x35 / 64x200 tokens (hidden 512), each method runs loss + backward
in a fresh child process; we report its peak RSS above the child's baseline (inputs and parameters
already allocated) and its best time. Rows whose predicted peak would not fit (~16 GiB, or 70% of
the memory available now) are skipped, never run. Full logits at V=250k x 64x200 never fit (38 GB),
so a 64x50 row at V=250k compares chunked and full where both run. A V=100k 32x100 row at hidden 256
(also in --quick) checks the default chunk: chunked should need >= 4x less memory than full, at <= 1.3x
its time; chunked rows print both ratios.

    python benchmarks/bench_loss.py [--quick]   # table on stdout, JSON in benchmarks/results/loss.json
    python benchmarks/bench_loss.py --device cuda --skip-above 60GiB   # peak = max_memory_allocated
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

HIDDEN = 512  # rows may set their own ("hidden")
SKIP_ABOVE = 16 * 2**30  # predicted bytes above which a row is skipped
METHODS = ("onehot", "full", "chunked", "adaptive")


def predicted_bytes(method: str, tokens: int, vocab: int, hidden: int = HIDDEN, bf16: bool = False) -> int:
    """Peak above baseline: vocabulary-sized activations plus the (V, H) and (N, H) gradients."""
    from seqfit.nn.chunked_loss import default_chunk_tokens, full_logits_peak_bytes

    grads = (vocab * hidden + vocab + tokens * hidden) * 4
    logits = tokens * vocab * 4
    if method == "onehot":  # one-hot targets, logits, log-softmax, their product, and two gradients
        return 5 * logits + grads
    if method == "full":
        return full_logits_peak_bytes(tokens, vocab) + grads
    if method == "chunked":  # the planner's own count: the chunk's buffers (kept or fresh) and the gradients
        from seqfit.memory.estimate import head_bytes

        chunk = default_chunk_tokens(vocab, tokens, 2 if bf16 else 4)
        head = head_bytes("chunked", tokens, vocab, hidden, "bf16" if bf16 else "fp32", chunk, None, "cpu")
        return head["keep"] + head["fwd"] + head["held"] + vocab * 4  # + the bias gradient
    # adaptive: every token scores the head (shortlist + one logit per tail); the tokens of tail i (its
    # share of the Zipf mass) score its ids too. Logits, log-softmax and two gradients of each, fp32.
    counts, cutoffs = _zipf_targets_and_cutoffs(vocab)
    bounds = [0, *cutoffs, vocab]
    total = sum(counts)
    scored = tokens * (cutoffs[0] + len(cutoffs))
    for lo, hi in zip(bounds[1:-1], bounds[2:]):
        scored += tokens * sum(counts[lo:hi]) / total * (hi - lo)
    return int(4 * 4 * scored) + grads


def _zipf_targets_and_cutoffs(vocab: int) -> tuple[list[float], list[int]]:
    # Targets follow Zipf's law over frequency-sorted ids, as word tokens do; uniform targets would
    # send most tokens to the largest tail cluster and misrepresent the adaptive softmax.
    from seqfit.models.heads import adaptive_cutoffs, zipf_counts

    counts = zipf_counts(vocab)
    return counts, adaptive_cutoffs(counts)


# ---------------------------------------------------------------------------------------------- child


def _child(spec: dict) -> dict:
    import torch
    import torch.nn.functional as F

    from seqfit.measure.memory import MemorySampler, read_memory
    from seqfit.nn.chunked_loss import chunked_cross_entropy

    torch.manual_seed(0)
    n, v, method, width = spec["tokens"], spec["vocab"], spec["method"], spec.get("hidden", HIDDEN)
    dev = torch.device(spec.get("device", "cpu"))
    cuda = dev.type == "cuda"
    hidden = torch.randn(n, width, device=dev, requires_grad=True)  # (N, H)
    counts, cutoffs = _zipf_targets_and_cutoffs(v)
    targets = torch.multinomial(torch.tensor(counts), n, replacement=True).to(dev)  # (N,)
    if method == "adaptive":
        module = torch.nn.AdaptiveLogSoftmaxWithLoss(width, v, cutoffs, div_value=4.0).to(dev)
        params = list(module.parameters())

        def step():
            return -module(hidden, targets).output.sum()
    else:
        weight = (0.02 * torch.randn(v, width, device=dev)).requires_grad_()  # (V, H)
        bias = torch.zeros(v, device=dev, requires_grad=True)  # (V,)
        params = [weight, bias]
        dtype = torch.bfloat16 if spec.get("bf16") else None

        def step():
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dtype is not None):
                if method == "chunked":
                    return chunked_cross_entropy(hidden, weight, bias, targets, chunk_tokens=spec.get("chunk", 0))
                logits = F.linear(hidden, weight, bias)  # (N, V)
                if method == "full":
                    return F.cross_entropy(logits.float(), targets, reduction="sum")
                onehot = F.one_hot(targets, v).float()  # (N, V) dense target distribution
                return F.cross_entropy(logits.float(), onehot, reduction="sum")

    gc.collect()
    base = torch.cuda.memory_allocated() if cuda else read_memory().rss
    times, peak = [], 0
    for rep in range(spec["reps"] + cuda):  # on CUDA a first untimed run loads the kernels
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        with MemorySampler(interval=0.005) as sampler:
            t0 = time.perf_counter()
            step().backward()
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        hidden.grad = None
        for p in params:
            p.grad = None
        if cuda:
            peak = max(peak, torch.cuda.max_memory_allocated() - base)
        elif rep == 0:  # ru_maxrss misses no spike; the sampler covers platforms where it is coarse
            peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, sampler.peak_rss) - base
        gc.collect()
    times = times[1:] if cuda else times
    return {"peak_bytes": int(peak), "seconds": min(times), "all_seconds": [round(t, 3) for t in times]}


# --------------------------------------------------------------------------------------------- parent


def _rows(quick: bool) -> list[dict]:
    shapes = [(20, 35)] if quick else [(20, 35), (64, 200)]
    vocabs = [10_000, 50_000] if quick else [10_000, 50_000, 250_000]
    rows = []
    for v in vocabs:
        for b, t in shapes:
            for method in METHODS:
                rows.append({"vocab": v, "batch": f"{b}x{t}", "tokens": b * t, "method": method})
    if not quick:
        # Full logits at V=250k only fit at fewer tokens: compare chunked and full there too.
        rows += [{"vocab": 250_000, "batch": "64x50", "tokens": 3200, "method": m} for m in ("full", "chunked")]
        rows.append({"vocab": 250_000, "batch": "64x200", "tokens": 12_800, "method": "chunked", "bf16": True})
    for row in rows:
        # Big rows: one run. Rows of a fraction of a second: best of 7, since on a shared 2-core machine one
        # timing of 0.2 s swings by +-50% (V = 10k, 20 x 35 read 1.14x with best of 3, 0.90x in another run).
        row["reps"] = 1 if quick or row["tokens"] * row["vocab"] > 2 * 10**8 else 7
    # The default chunk's target (nn/chunked_loss.py DEFAULT_CHUNK_ROWS): two runs each, the time ratio matters.
    rows += [{"vocab": 100_000, "batch": "32x100", "tokens": 3200, "hidden": 256, "method": m, "reps": 2}
             for m in ("full", "chunked")]
    return rows


def _key(r: dict) -> str:
    """'V=100000 32x100' (+ ' H=256' when the row's hidden size is not HIDDEN)."""
    hidden = r.get("hidden", HIDDEN)
    return f"V={r['vocab']} {r['batch']}" + (f" H={hidden}" if hidden != HIDDEN else "")


def _ratios(chunked: dict, full: dict | None) -> dict:
    if not full or full.get("status") != "ok" or chunked.get("status") != "ok":
        return {}
    return {"memory_full_over_chunked": full["peak_bytes"] / max(chunked["peak_bytes"], 1),
            "time_chunked_over_full": chunked["seconds"] / full["seconds"]}


def _native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX); elsewhere torch emulates it, very slowly."""
    from seqfit.measure.machine import machine_info

    flags = machine_info(measure_ceilings=False)["flags"]
    return bool(flags.get("avx512_bf16") or flags.get("amx_bf16"))


def _run_child(spec: dict, timeout: float = 900) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "error": f"timed out after {timeout:.0f}s"}
    if proc.returncode != 0:  # on CPU an out-of-memory is a kill (-9), never an exception
        return {"status": "failed", "error": f"exit {proc.returncode}: {proc.stderr.strip()[-300:]}"}
    return {"status": "ok", **json.loads(proc.stdout.strip().splitlines()[-1])}


def run(quick: bool = False, *, device: str = "cpu", skip_above: int = SKIP_ABOVE, only: str = "") -> dict:
    import psutil
    import torch

    from seqfit.measure.memory import format_bytes

    if device == "cuda":
        limit = min(skip_above, int(0.9 * torch.cuda.mem_get_info()[0]))
    else:
        limit = min(skip_above, int(0.7 * psutil.virtual_memory().available))
    rows = []
    for spec in _rows(quick):
        spec["device"] = device
        label = spec["method"] + ("-bf16" if spec.get("bf16") else "")
        if only and not any(part in f"{_key(spec)} {label}" for part in only.split(",")):
            continue
        row = {"vocab": spec["vocab"], "batch": spec["batch"], "tokens": spec["tokens"], "method": label,
               "hidden": spec.get("hidden", HIDDEN),
               "predicted_bytes": predicted_bytes(spec["method"], spec["tokens"], spec["vocab"],
                                                  spec.get("hidden", HIDDEN), bf16=spec.get("bf16", False))}
        if row["predicted_bytes"] > limit:
            row.update(status="skipped", reason=f"predicted {format_bytes(row['predicted_bytes'])} > "
                                                f"{format_bytes(limit)}")
        elif spec.get("bf16") and device == "cpu" and not _native_bf16():
            row.update(status="skipped", reason="no native bf16 on this CPU (emulated products: minutes a step)")
        else:
            row.update(_run_child(spec))
        if label == "chunked":
            full = next((r for r in rows if _key(r) == _key(row) and r["method"] == "full"), None)
            row["ratios"] = _ratios(row, full)
        rows.append(row)
        print(_format_row(row), flush=True)
    return {"name": "loss", "rows": rows, "summary": _summary(rows), "hidden": HIDDEN, "skip_above_bytes": limit,
            "device": device, "threads": torch.get_num_threads()}


def _summary(rows: list[dict]) -> dict:
    ok = {(_key(r), r["method"]): r for r in rows if r.get("status") == "ok"}
    every = {(_key(r), r["method"]): r for r in rows}
    ratios = {}
    for (key, method), r in ok.items():
        if method != "chunked":
            continue
        full = ok.get((key, "full"))
        if full:
            ratios[key] = _ratios(r, full)
        elif (key, "full") in every:  # skipped: compare with the predicted bytes
            ratios[key] = {"memory_full_predicted_over_chunked":
                           every[(key, "full")]["predicted_bytes"] / max(r["peak_bytes"], 1)}
        else:
            ratios[key] = {}
        adaptive = ok.get((key, "adaptive"))
        if adaptive:
            ratios[key]["time_adaptive_over_chunked"] = adaptive["seconds"] / r["seconds"]
    return {"ratios": ratios}


def _format_row(r: dict) -> str:
    from seqfit.measure.memory import format_bytes

    measured = (f"{format_bytes(r['peak_bytes']):>10} {r['seconds']:8.2f}s" if r.get("status") == "ok"
                else f"{r.get('status', ''):>10} {'':9}")
    note = r.get("reason") or r.get("error") or ""
    if r.get("ratios"):  # chunked rows: how much less memory than full logits, at what time cost
        note = (f"full/chunked memory {r['ratios']['memory_full_over_chunked']:5.2f}x, "
                f"chunked/full time {r['ratios']['time_chunked_over_full']:4.2f}x  {note}")
    label = f"{r['batch']}" + (f" H={r['hidden']}" if r.get("hidden", HIDDEN) != HIDDEN else "")
    return (f"V={r['vocab']:>7} {label:>13} {r['method']:>13} predicted {format_bytes(r['predicted_bytes']):>10}"
            f"  peak {measured}  {note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small rows only (smoke test)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where the losses run")
    parser.add_argument("--skip-above", default="16GiB", help="skip rows predicted to need more (e.g. 64GiB)")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/loss.json)")
    parser.add_argument("--only", default="", help="run rows whose 'V=250000 64x50 full' label contains any of "
                                                   "these comma-separated parts")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return
    from common import print_machine, write_result

    from seqfit.measure.memory import parse_bytes

    result = run(quick=args.quick, device=args.device, skip_above=parse_bytes(args.skip_above), only=args.only)
    print()
    print_machine()
    for key, ratio in result["summary"]["ratios"].items():
        print(key, " ".join(f"{k}={v:.2f}" for k, v in ratio.items()))
    print(f"wrote {write_result(result, Path(args.out) if args.out else None)}")


if __name__ == "__main__":
    main()
