"""The files every run directory holds, written and read the same way by every task's loop."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from seqfit.atomic import write_text_atomic
from seqfit.config import RunCfg, dump_toml, from_dict, load_toml
from seqfit.errors import SeqfitError
from seqfit.measure.memory import parse_bytes
from seqfit.measure.metrics import read_metrics
from seqfit.nn.precision import make_precision
from seqfit.version import __version__

__all__ = ["start_run_dir", "budget_bytes", "read_run", "inference_precision", "trim_metrics", "mean_throughput"]


def start_run_dir(run_dir: Path, cfg: RunCfg, data_dir: Path) -> None:
    """Create RUN_DIR with the resolved config.toml and run.json (where the data lives)."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / "config.toml", dump_toml(cfg))
        write_text_atomic(run_dir / "run.json", json.dumps({"data_dir": str(Path(data_dir).resolve()), "seqfit": __version__}))
    except OSError as e:
        raise SeqfitError(f"cannot write to {run_dir}: {e.strerror}") from None


def budget_bytes(cfg: RunCfg) -> int:
    """--budget in bytes (0: none)."""
    if not cfg.memory.budget:
        return 0
    try:
        return parse_bytes(cfg.memory.budget)
    except ValueError as e:
        raise SeqfitError(f"--budget: {e}") from None


def read_run(run_dir: Path) -> tuple[RunCfg, dict, dict]:
    """(config, plan, run info) of a run directory, with one-line errors when it is not one."""
    if not (run_dir / "config.toml").is_file():
        raise SeqfitError(f"{run_dir} is not a seqfit run directory (no config.toml)")
    cfg = from_dict(load_toml(run_dir / "config.toml"))
    try:
        plan = json.loads((run_dir / "plan.json").read_text())["plan"]
        info = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError, KeyError) as e:
        raise SeqfitError(f"{run_dir} is incomplete or corrupt ({e})") from None
    return cfg, plan, info


def inference_precision(name: str, device: torch.device):
    """The run's precision, except that an fp16 (CUDA-only) run evaluated on CPU falls back to fp32."""
    return make_precision(name if device.type == "cuda" or name != "fp16" else "fp32", device)


def trim_metrics(path: Path, step: int) -> None:
    """Drop records logged after the checkpoint being resumed (they will be logged again)."""
    if path.exists():
        kept = [r for r in read_metrics(path) if r.get("step", 0) <= step and r.get("kind") != "end"]
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))


def mean_throughput(path: Path) -> float | None:
    rates = [r["tokens_per_s"] for r in read_metrics(path) if r.get("kind") == "train"]
    return sum(rates) / len(rates) if rates else None
