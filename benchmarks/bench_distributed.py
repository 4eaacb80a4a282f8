"""Data-parallel training on this machine: 2 processes x 1 thread (gloo) against 1 process x 2 threads.

The same language model, the same effective batch (2 x B streams per optimizer step), the same steps on a
synthetic token store; tokens/s from each run's own metrics (its mean over logging windows), side by side.
On a GPU machine (`--device cuda`) the one-process row runs on one GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import WORK, print_table, write_result  # noqa: E402

MODEL = ["--layers", "2", "--hidden", "256", "--embed", "128", "--bptt", "35", "--optimizer", "sgd", "--lr", "1",
         "--dropout", "0", "--log-every", "5", "--checkpoint-every", "0", "--eval-batches", "1"]


def _train(data: Path, out: Path, *, batch: int, nproc: int, threads: int, steps: int, device: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "seqfit", "train", str(data), "--out", str(out), *MODEL, "--batch-size", str(batch),
           "--max-steps", str(steps), "--nproc", str(nproc), "--device", device, "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    if proc.returncode != 0:
        return {"status": "failed", "error": proc.stderr.strip()[-300:]}
    summary = json.loads(proc.stdout)
    return {"status": "ok", "tokens_per_s": summary["tokens_per_s"], "peak_rss": summary["peak_rss"],
            "valid_loss": summary["valid_loss"]}


def run(quick: bool = False, device: str = "cpu") -> dict:
    from seqfit.memory.synthetic import write_synthetic_store

    steps, batch = (20, 16) if quick else (100, 32)
    work = WORK / "distributed"
    data = write_synthetic_store(work / "data", 10_000, 2_000_000, valid_tokens=20_000)
    rows = []
    setups = [("1 process x 2 threads", 1, 2, 2 * batch), ("2 processes x 1 thread", 2, 1, batch)]
    if device == "cuda":
        setups = [("1 GPU", 1, 1, 2 * batch)]
    for name, nproc, threads, micro in setups:
        out = work / f"run-{nproc}x{threads}"
        subprocess.run(["rm", "-rf", str(out)], check=True)
        row = {"setup": name, "processes": nproc, "threads_each": threads, "batch_per_process": micro,
               "effective_batch": micro * nproc, **_train(data, out, batch=micro, nproc=nproc, threads=threads,
                                                            steps=steps, device=device)}
        rows.append(row)
    ok = [r for r in rows if r["status"] == "ok"]
    ratio = ok[1]["tokens_per_s"] / ok[0]["tokens_per_s"] if len(ok) == 2 else None
    return {"name": "distributed", "rows": rows, "steps": steps, "device": device,
            "note": "report only: 2 ranks share this machine's 2 cores",
            "summary": {"two_processes_over_one": ratio}}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    result = run(quick=args.quick, device=args.device)
    print_table(result)
    print(f"-> {write_result(result)}")
