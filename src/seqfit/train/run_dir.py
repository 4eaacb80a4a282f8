"""A finished or interrupted run read back from RUN_DIR: its config, plan, data and model."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from seqfit.config import RunCfg, from_dict, load_toml
from seqfit.data.store import TokenStore
from seqfit.errors import SeqfitError
from seqfit.models.build import build_model
from seqfit.train.checkpoint import load_weights
from seqfit.device import resolve_device
from seqfit.train.precision import make_precision

__all__ = ["LoadedRun", "load_run"]


@dataclass
class LoadedRun:
    cfg: RunCfg
    plan: dict
    store: TokenStore
    model: torch.nn.Module
    device: torch.device
    precision: object


def load_run(run_dir: str | Path, *, data_dir: str | Path | None = None, device: str = "auto") -> LoadedRun:
    run_dir = Path(run_dir)
    if not (run_dir / "config.toml").is_file():
        raise SeqfitError(f"{run_dir} is not a seqfit run directory (no config.toml)")
    cfg = from_dict(load_toml(run_dir / "config.toml"))
    try:
        plan = json.loads((run_dir / "plan.json").read_text())["plan"]
        info = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError, KeyError) as e:
        raise SeqfitError(f"{run_dir} is incomplete or corrupt ({e})") from None
    store = TokenStore(Path(data_dir or info["data_dir"]))
    dev = resolve_device(device)
    model = build_model(cfg, store.vocab, loss_kind=plan["loss"])
    load_weights(run_dir, model)
    model.to(dev).eval()
    precision = make_precision(plan["precision"] if dev.type == "cuda" or plan["precision"] != "fp16" else "fp32", dev)
    return LoadedRun(cfg, plan, store, model, dev, precision)
