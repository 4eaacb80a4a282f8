"""Soak: one long `seqfit train --budget` run, resident memory read at every step; is there an upward drift?

A character-level LSTM on the Python standard library's source (as `make run`), logging every step.
Drift is the least-squares slope of anonymous resident memory over time after a warm-up (the first 10%
of the run), reported in MB per hour, with the spread (max - min) after warm-up. 60 minutes by default;
--quick runs 3.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, WORK, print_table, write_result  # noqa: E402

MB = 2**20


def _slope(xs: list[float], ys: list[float]) -> float:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0


def run(quick: bool = False, minutes: float = 0.0) -> dict:
    minutes = minutes or (3.0 if quick else 60.0)
    work = WORK / "soak"
    data, out = work / "data", work / "run"
    subprocess.run(["rm", "-rf", str(out)], check=True)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    if not (data / "meta.json").exists():
        subprocess.run([sys.executable, "-m", "seqfit", "prepare", *(str(stdlib / p) for p in ("email", "asyncio", "logging")),
                        "--pattern", "*.py", "--level", "char", "--encoding-errors", "replace", "--valid-fraction", "0.02",
                        "--out", str(data)], check=True, capture_output=True)
    budget = "900MB"
    cmd = [sys.executable, "-m", "seqfit", "train", str(data), "--out", str(out), "--layers", "2", "--hidden", "256",
           "--embed", "64", "--batch-size", "32", "--bptt", "128", "--optimizer", "adam", "--lr", "0.002",
           "--budget", budget, "--max-minutes", str(minutes), "--epochs", "1000", "--log-every", "1",
           "--eval-every", "500", "--eval-batches", "20", "--checkpoint-every", "500", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    return {"name": "soak", "minutes": minutes, "budget": budget, "exit_code": proc.returncode, **analyze(out)}


def analyze(out: Path) -> dict:
    """Drift of a finished run's memory readings (RUN/metrics.jsonl, one line a step). A reading lands anywhere
    inside a step, so single readings swing by a step's working set: the drift is taken from each minute's
    highest and lowest reading (the step's peak and the floor between steps), after the warm-up."""
    records = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if l.strip()]
    train = [r for r in records if r.get("kind") == "train"]
    t0 = train[0]["time"]
    minutes: dict[int, list[dict]] = {}
    for r in train:
        minutes.setdefault(int((r["time"] - t0) // 60), []).append(r)
    keys = sorted(minutes)[max(1, len(minutes) // 10):]  # warm-up: the first tenth (at least a minute)
    rows = []
    for series in ("anon", "rss"):
        for kind, pick in (("peak", max), ("floor", min)):
            ys = [pick(r[series] for r in minutes[k]) / MB for k in keys]
            rows.append({"series": f"{'anonymous' if series == 'anon' else 'resident'} {kind}", "first_mb": ys[0],
                         "last_mb": ys[-1], "max_mb": max(ys), "spread_mb": max(ys) - min(ys),
                         "slope_mb_per_hour": _slope([k / 60 for k in keys], ys)})
    return {"steps": len(train), "warmup_minutes": keys[0], "rows": rows}


def plot(out: Path, png: Path) -> Path:
    """Anonymous memory at every step, with each minute's peak and floor and the warm-up cut-off marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in (json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if l.strip())
             if r.get("kind") == "train"]
    t0 = train[0]["time"]
    xs, ys = [(r["time"] - t0) / 60 for r in train], [r["anon"] / MB for r in train]
    fig, ax = plt.subplots(figsize=(9, 3.5))
    ax.plot(xs, ys, ".", markersize=2, alpha=0.5, label="anonymous resident memory, each step")
    summary = analyze(out)
    ax.axvline(summary["warmup_minutes"], color="grey", linestyle="--", label="end of warm-up")
    ax.set_xlabel("minutes")
    ax.set_ylabel("MiB")
    floor = next(r for r in summary["rows"] if r["series"] == "anonymous floor")
    ax.set_title(f"soak: {summary['steps']} steps, floor drift {floor['slope_mb_per_hour']:+.1f} MB/h after warm-up")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 minutes")
    parser.add_argument("--minutes", type=float, default=0.0)
    args = parser.parse_args()
    result = run(quick=args.quick, minutes=args.minutes)
    print_table(result)
    print(f"-> {write_result(result)}")
    png = RESULTS / f"soak-{result['minutes']:g}min.png"
    print(f"-> {plot(WORK / 'soak' / 'run', png)}")
