"""Helpers the benchmarks share: child-process measurement, tables, JSON results, shared data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
WORK = HERE / "work"  # generated inputs; git-ignored
SHARED_DATA = HERE.parent.parent / "shared" / "data"


def wikitext() -> Path | None:
    """../shared/data/wikitext-2 if present (benchmarks that need it skip with a message otherwise)."""
    path = SHARED_DATA / "wikitext-2"
    return path if (path / "test.txt").is_file() and (path / "valid.txt").is_file() else None


# The start of a child script that runs seqfit commands in its own process: call(["train", ...]) returns
# what the command printed (its --json summary), and raises if it exited with an error.
CALL_CLI = """
import contextlib, io
from seqfit.cli.main import main

def call(args):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main(args)
        except SystemExit as e:
            if e.code:
                raise
    return out.getvalue()
"""


def seqfit_command(*args: str) -> None:
    """Run ``seqfit ARGS`` in a child process (e.g. ``prepare`` a store); raises if it exits with an error."""
    subprocess.run([sys.executable, "-m", "seqfit", *args], check=True, capture_output=True, text=True)


def run_child(code: str, *args: str, timeout: float = 1800) -> dict:
    """Run Python ``code`` in a fresh interpreter (so memory peaks don't bleed between rows).

    The child prints one JSON object as its last stdout line; its peak RSS is read from
    /usr/bin/time-like accounting through resource.getrusage in the child itself.
    """
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine() -> dict:
    """The machine block every result carries (seqfit.measure.machine; GEMM ceilings measured once per process)."""
    from seqfit.measure.machine import machine_info

    return machine_info()


def print_machine() -> None:
    from seqfit.measure.machine import describe_machine

    print(f"machine: {describe_machine(machine())}")


def print_table(result: dict, with_machine: bool = True) -> None:
    rows = result.get("rows", [])
    print(f"== {result['name']}" + (f": {result['note']}" if result.get("note") else ""))
    if with_machine:
        print_machine()
    if rows:
        cols = list(dict.fromkeys(k for r in rows for k in r))
        cells = [[_fmt(r.get(c, "")) for c in cols] for r in rows]
        widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
        print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
        for row in cells:
            print("  ".join(v.ljust(w) for v, w in zip(row, widths)))
    for key, value in result.get("summary", {}).items():
        print(f"{key}: {_fmt(value)}")


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int) and abs(value) >= 10000:
        return f"{value:,}"
    return str(value)


def write_result(result: dict, path: Path | None = None) -> Path:
    """Write ``result`` with its machine block to ``path`` (default: results/<name>.json)."""
    path = Path(path) if path else RESULTS / f"{result['name']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    result = {**result, "machine": machine()}
    path.write_text(json.dumps(result, indent=1, default=str))
    return path
