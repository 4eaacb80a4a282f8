"""Run every benchmark (or those named), print their tables and write JSON to benchmarks/results/.

    python benchmarks/run.py                 # all of them
    python benchmarks/run.py foundation loss --quick
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import print_table, write_result  # noqa: E402


def discover() -> dict[str, Path]:
    return {p.stem.removeprefix("bench_"): p for p in sorted(HERE.glob("bench_*.py"))}


def load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    found = discover()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default: all of {', '.join(found)})")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    args = parser.parse_args()
    unknown = set(args.names) - set(found)
    if unknown:
        parser.error(f"unknown benchmark(s) {sorted(unknown)}; known: {', '.join(found)}")
    for name in args.names or found:
        started = time.perf_counter()
        result = load(found[name]).run(quick=args.quick)
        result.setdefault("seconds", round(time.perf_counter() - started, 1))
        print_table(result)
        print(f"-> {write_result(result)}\n")


if __name__ == "__main__":
    main()
