"""A finished or interrupted run read back from RUN_DIR: its config, plan, data and model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from seqfit.config import RunCfg
from seqfit.data.store import TokenStore
from seqfit.device import resolve_device
from seqfit.models.build import build_model
from seqfit.engine.checkpoint import load_weights
from seqfit.engine.run_files import inference_precision, read_run

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
    cfg, plan, info = read_run(run_dir)
    store = TokenStore(Path(data_dir or info["data_dir"]))
    dev = resolve_device(device)
    model = build_model(cfg, store.vocab, loss_kind=plan["loss"])
    load_weights(run_dir, model)
    model.to(dev).eval()
    precision = inference_precision(plan["precision"], dev)
    return LoadedRun(cfg, plan, store, model, dev, precision)
