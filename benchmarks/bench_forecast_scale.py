"""Forecasting at scale (issue 14): 2,000 series x 50,000 steps x 4 columns in float16 (a 0.8 GB store) train
with lookback 512 at the peak memory of the same run on 20 series, and the planner predicts that peak.

Each step runs in a fresh process:

  data     a long-format Parquet file (id, c0..c3) per size, written a few series at a time (memory bounded
           by one row group, whatever the size), then `seqfit prepare --task series --group-field id
           --dtype float16` (its peak resident memory is reported too: bounded by a reader batch)
  plan     `seqfit plan DATA ... --json`: the predicted peak
  train    `seqfit train DATA ... --max-steps N`: windows drawn across every series and time, the measured peak

"Peak" is the largest anonymous resident size of the training process (summary.json's peak_anon; what a
budget governs and what the planner predicts, as in bench_planner); whole RSS beside it. Windows are read
with positioned reads (seqfit.data.pread), so RSS does not grow with the store either: read through the memory
map, the first version's 300 steps left 426 MB more file pages resident on the 2,000-series store (836 MB
against 410), the kernel's fault-around mapping ~64 KB around each random window.

Results (2 shared cores, 1 thread, 300 steps, LSTM 64, batch 32, lookback 512, horizon 24):

    series  rows         store    prepare peak  predicted  peak anon  peak RSS
    20      1,000,000    7.6 MB   167 MB        288 MB     291 MB     402 MB
    2,000   100,000,000  763 MB   180 MB        289 MB     291 MB     402 MB    (+0.03% anon, -0.9% plan)

Targets: |peak(large) - peak(small)| / peak(small) <= 10%, and |predicted - measured| / measured <= 10% for both.

    python benchmarks/bench_forecast_scale.py [--quick] [--steps N] [--keep]

--quick: 200 series x 5,000 steps against 2 series (the same 100x), 60 steps. Data lives in benchmarks/work/
(git-ignored) and is reused when present; --keep leaves the Parquet files there (else they are deleted once
prepared: they are twice the store's size).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import HERE, WORK, print_table, run_child, write_result  # noqa: E402

MB = 1 << 20
COLUMNS = ("c0", "c1", "c2", "c3")
SERIES_PER_GROUP = 10  # series per Parquet row group written at once (10 x 50,000 rows x 4 float32: 8 MB)
MODEL = ["--task", "forecast", "--target", "c0", "--covariates", "c1,c2,c3", "--lookback", "512", "--horizon", "24",
         "--cell", "lstm", "--layers", "1", "--hidden", "64", "--dropout", "0", "--batch-size", "32",
         "--optimizer", "adam", "--lr", "0.003"]


def generate(path: Path, series: int, steps: int, seed: int = 0) -> None:
    """Long format, each series' rows consecutive: id, then c0 (a level + a season + noise) and three covariates;
    one row group of SERIES_PER_GROUP series in memory at a time."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    names = pa.array([f"s{i:05d}" for i in range(series)])
    t = np.arange(steps, dtype=np.float32)
    schema = pa.schema([("id", pa.dictionary(pa.int32(), pa.string()))] + [(c, pa.float32()) for c in COLUMNS])
    tmp = path.with_suffix(".partial")
    with pq.ParquetWriter(tmp, schema) as writer:
        for lo in range(0, series, SERIES_PER_GROUP):
            k = np.arange(lo, min(series, lo + SERIES_PER_GROUP))
            level, period = rng.uniform(-50, 50, len(k))[:, None], rng.choice([12, 24, 168], len(k))[:, None]
            season = np.sin(2 * np.pi * t / period).astype(np.float32)  # (S, T)
            c0 = level + 5 * season + rng.normal(0, 1, (len(k), steps))
            cols = [c0, np.cos(2 * np.pi * t / period), rng.normal(0, 1, (len(k), steps)), level + 0.001 * t]  # (S, T) each
            ids = pa.DictionaryArray.from_arrays(pa.array(np.repeat(k, steps).astype(np.int32)), names)
            arrays = [ids] + [pa.array(c.astype(np.float32).ravel()) for c in cols]
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
    tmp.rename(path)


def _measured(code: str, *args: str) -> dict:
    """Run ``code`` in a fresh interpreter with seqfit importable; it sets ``result``; adds the child's VmHWM."""
    wrapper = (f"import json, sys\nsys.path.insert(0, {str(HERE)!r})\nresult = {{}}\n{code}\n"
               "hwm = [int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
               "print(json.dumps({**result, 'peak_rss': hwm}))")
    return run_child(wrapper, *args, timeout=7200)


def _cli(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "seqfit", *args], capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip()[-2000:])
    return proc.stdout


def prepare_size(series: int, steps: int, keep: bool) -> tuple[Path, dict]:
    work = WORK / "forecast-scale"
    work.mkdir(parents=True, exist_ok=True)
    data = work / f"{series}x{steps}-data"
    meta_path = data / "meta.json"
    if meta_path.is_file():
        info = json.loads((work / f"{series}x{steps}-prepare.json").read_text())
        return data, info
    parquet = work / f"{series}x{steps}.parquet"
    gen = {}
    if not parquet.is_file():
        gen = _measured("import bench_forecast_scale as b\nfrom pathlib import Path\n"
                        "b.generate(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))",
                        str(parquet), str(series), str(steps))
    prep = _measured("from seqfit.cli.main import main\n"
                     "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    assert not e.code, e.code\n",
                     "prepare", str(parquet), "--task", "series", "--group-field", "id", "--columns", ",".join(COLUMNS),
                     "--dtype", "float16", "--valid-fraction", "0", "--out", str(data), "--overwrite")
    meta = json.loads(meta_path.read_text())
    info = {"parquet_mb": parquet.stat().st_size / MB, "generate_peak_mb": gen.get("peak_rss", 0) / MB,
            "prepare_peak_mb": prep["peak_rss"] / MB, "prepare_s": meta["report"]["seconds"],
            "store_mb": sum(f.stat().st_size for f in data.glob("*.bin")) / MB, "rows": meta["report"]["rows"]["train"]}
    (work / f"{series}x{steps}-prepare.json").write_text(json.dumps(info))
    if not keep:
        parquet.unlink()
    return data, info


def run_size(series: int, steps: int, train_steps: int, keep: bool) -> dict:
    data, info = prepare_size(series, steps, keep)
    flags = MODEL + ["--max-steps", str(train_steps)]
    plan = json.loads(_cli("plan", str(data), *flags, "--json"))
    run = WORK / "forecast-scale" / f"{series}x{steps}-run"
    shutil.rmtree(run, ignore_errors=True)
    _cli("train", str(data), "--out", str(run), *flags, "--checkpoint-every", "0", "--eval-every", "0",
         "--log-every", "50")
    summary = json.loads((run / "summary.json").read_text())
    predicted, measured = plan["predicted_peak_bytes"], summary["peak_anon"]
    return {"series": series, "steps": steps, **info, "train_steps": summary["step"],
            "predicted_mb": predicted / MB, "peak_anon_mb": measured / MB, "peak_rss_mb": summary["peak_rss"] / MB,
            "plan_error": (predicted - measured) / measured}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=0, help="training steps per run (default 300, quick 60)")
    parser.add_argument("--keep", action="store_true", help="keep the generated Parquet files")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # a shared machine; the plan and the runs alike
    small, large, steps = ((2, 200, 5_000) if args.quick else (20, 2_000, 50_000))
    train_steps = args.steps or (60 if args.quick else 300)
    rows = [run_size(n, steps, train_steps, args.keep) for n in (small, large)]
    a, b = rows
    result = {"name": "forecast-scale" + ("-quick" if args.quick else ""),
              "note": f"lookback 512, {train_steps} steps; peak = anonymous resident bytes of the training process",
              "rows": rows,
              "summary": {"peak_anon_change": (b["peak_anon_mb"] - a["peak_anon_mb"]) / a["peak_anon_mb"],
                          "peak_rss_change": (b["peak_rss_mb"] - a["peak_rss_mb"]) / a["peak_rss_mb"],
                          "worst_plan_error": max(abs(r["plan_error"]) for r in rows),
                          "targets_met": abs(b["peak_anon_mb"] - a["peak_anon_mb"]) <= 0.1 * a["peak_anon_mb"]
                          and all(abs(r["plan_error"]) <= 0.1 for r in rows)}}
    print_table(result)
    print(f"wrote {write_result(result)}")


if __name__ == "__main__":
    main()
