"""Fit the estimator's machine constants with short probes, and cache them per machine and version.

Probes (each a fresh child process running real training steps, seqfit.memory.probe):

    baseline      a tiny model (H = 16): what it measures minus what the estimate gives for its
                  tensors is the runtime's own anonymous memory (python, torch, seqfit, thread pools)
    per cell      the same 2-layer model at two small token counts (b x T = 64 x 8 and 64 x 32, H = 256);
                  the slope between them, against the estimate's slope, scales that cell's
                  per-token constants -- two sizes, so the baseline's error cancels -- and what is
                  left at both sizes is that kernel library's one-time state (``const``)
    timing        the same runs' step times fit that cell's seconds_per_flop and seconds_per_call

Probes stay small on purpose (under ~200 MB): on CPU an out-of-memory is a kill, so a probe must
never be what runs out. The cache lives in $SEQFIT_CACHE_DIR (default ~/.cache/seqfit) as
calibration-<torch version>-<device>-<cpu hash>.json, holding the keys ("lstm/fp32", ...) calibrated so far.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path

from seqfit.cache import cache_dir
from seqfit.config import RunCfg, merge
from seqfit.cpu import cpu_model
from seqfit.memory.constants import CellCoefs, Constants, cell_key, default_constants
from seqfit.memory.estimate import DataInfo, estimate
from seqfit.memory.requested import requested_plan

__all__ = ["cache_dir", "cache_path", "load_constants", "calibrate", "probe_config", "NO_CALIBRATE_ENV"]

# Bumped when what the probes measure changes under the same torch (2: the LM window pool, oneDNN loss products,
# fused Adam), so that constants fitted before are measured again.
PROBE_REVISION = 2
NO_CALIBRATE_ENV = "SEQFIT_NO_CALIBRATE"  # set to 1: never run probes, use the cache or the defaults
PROBE_VOCAB = 64
PROBE_TOKENS = 40_000


def cache_path(device: str) -> Path:
    import torch

    name = torch.cuda.get_device_name() if device == "cuda" else cpu_model()
    digest = hashlib.sha256(f"{name}|{os.cpu_count()}|{PROBE_REVISION}".encode()).hexdigest()[:12]
    return cache_dir() / f"calibration-{torch.__version__}-{device}-{digest}.json"


def _read_cache(device: str) -> dict:
    try:
        return json.loads(cache_path(device).read_text())
    except (OSError, ValueError):
        return {}


def load_constants(device: str, keys: list[tuple[str, str]] | None = None, *, calibrate_missing: bool = True,
                   echo=None) -> Constants:
    """Cached constants for this machine; probes the (cell, precision) keys not calibrated yet.

    With SEQFIT_NO_CALIBRATE=1 or calibrate_missing=False, missing keys keep the defaults.
    """
    data = _read_cache(device)
    consts = Constants.from_dict(data["constants"]) if data else default_constants(device)
    # a key probed before per-cell timing (no cell_speed) is probed again, once
    probed = set(data.get("keys", [])) & set(consts.cell_speed)
    missing = [k for k in (keys or []) if cell_key(*k) not in probed]
    if missing and calibrate_missing and os.environ.get(NO_CALIBRATE_ENV, "") in ("", "0"):
        consts = calibrate(device, missing, echo=echo)
    return consts


def probe_config(cell: str, precision: str, device: str, micro: int, bptt: int, hidden: int = 256,
                 layers: int = 2) -> RunCfg:
    return merge(RunCfg(), {
        "model": {"cell": cell, "layers": layers, "hidden": hidden, "embed": hidden, "dropout": 0.2},
        "train": {"batch_size": micro, "bptt": bptt, "optimizer": "sgd", "lr": 0.1},
        "memory": {"device": device, "precision": precision, "loss": "full"}})


def _predicted(cfg: RunCfg, consts: Constants, device: str) -> int:
    data = DataInfo(PROBE_VOCAB)
    return estimate(cfg, data, requested_plan(cfg, data, device), consts)["peak"]


def _scale(consts: Constants, key: str, s: float, const: float | None = None) -> Constants:
    c = consts.cells[key]
    scaled = CellCoefs(*(tuple(s * v for v in vec) for vec in (c.keep, c.rise, c.fwd)),
                       const=c.const if const is None else const)
    return dataclasses.replace(consts, cells={**consts.cells, key: scaled})


def _fit_scale(consts: Constants, key: str, cfgs: list[RunCfg], measured: list[int], device: str) -> float:
    """Scale of the cell's constants whose predicted slope between the two probes matches the measured one.

    A slope the scale cannot reach within [1/4, 4] means the probes disagree with the model's shape
    rather than its size: keep the constants as they are (1.0) instead of clamping.
    """
    want = measured[1] - measured[0]
    lo, hi = 0.25, 4.0
    for _ in range(40):  # the predicted slope grows with the scale: bisect
        mid = (lo * hi) ** 0.5
        c = _scale(consts, key, mid)
        got = _predicted(cfgs[1], c, device) - _predicted(cfgs[0], c, device)
        lo, hi = (mid, hi) if got < want else (lo, mid)
    scale = (lo * hi) ** 0.5
    return 1.0 if scale < 0.26 or scale > 3.9 else scale


def calibrate(device: str, keys: list[tuple[str, str]], *, echo=None) -> Constants:
    """Run the probes for ``keys`` [(cell, precision)], refit, merge into the cache; returns the constants."""
    from seqfit.memory.probe import measure_run
    from seqfit.memory.synthetic import write_synthetic_store

    say = echo or (lambda text: None)
    cached = _read_cache(device)
    consts = Constants.from_dict(cached["constants"]) if cached else default_constants(device)
    done = set(cached.get("keys", []))
    with tempfile.TemporaryDirectory(prefix="seqfit-calibrate-") as tmp:
        data_dir = write_synthetic_store(Path(tmp) / "data", PROBE_VOCAB, PROBE_TOKENS)
        if "baseline" not in done:
            say("calibrating: runtime baseline (tiny model)")
            tiny = probe_config("rnn", "fp32", device, 2, 4, hidden=16, layers=1)
            got = measure_run(tiny, data_dir, steps=3)["peak_bytes"]
            rest = _predicted(tiny, consts, device) - consts.baseline
            consts = dataclasses.replace(consts, baseline=int(got - rest))
            done.add("baseline")
        for cell, precision in keys:
            key = cell_key(cell, precision)
            say(f"calibrating: {key} at two sizes")
            # 64 streams of 256 units: a time step's (b, H) fp32 tensors are 64 KiB, mmapped like a real run's
            cfgs = [probe_config(cell, precision, device, 64, bptt) for bptt in (8, 32)]
            runs = [measure_run(c, data_dir, steps=4) for c in cfgs]
            measured = [r["peak_bytes"] for r in runs]
            consts = _scale(consts, key, _fit_scale(consts, key, cfgs, measured, device))
            # the intercept left over is the kernel library's one-time state (oneDNN's RNN primitives)
            left = sum(m - _predicted(c, consts, device) for c, m in zip(cfgs, measured)) / len(cfgs)
            consts = _scale(consts, key, 1.0, const=max(0.0, consts.cells[key].const + left))
            consts = _fit_timing(consts, key, [(c, min(r["step_seconds"][1:])) for c, r in zip(cfgs, runs)])
            done.add(key)
    consts = dataclasses.replace(consts, calibrated=True, device=device,
                                 source=f"probes on this machine ({cpu_model()})")
    path = cache_path(device)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"keys": sorted(done), "constants": consts.to_dict()}, indent=1))
    return consts


def _fit_timing(consts: Constants, key: str, timings: list[tuple[RunCfg, float]]) -> Constants:
    """The cell key's seconds_per_flop from its timed probes, kept when the fit is not sane (no probe, or no
    time left for the FLOPs).

    The per-call overhead cannot be told apart from the FLOPs by these probes: both grow with the time steps
    alone (every probe has the same batch and width), so a free fit put everything on one of them. It stays
    at seconds_per_call, and the FLOPs take the rest of the measured time."""
    from seqfit.memory.throughput import step_seconds

    if not timings:
        return consts
    others = {k: v for k, v in consts.cell_speed.items() if k != key}
    spc = consts.seconds_per_call
    flops, rest = 0.0, 0.0
    for cfg, seconds in timings:
        plan = requested_plan(cfg, DataInfo(PROBE_VOCAB), consts.device)
        # step_seconds is linear in (seconds_per_flop, seconds_per_call): evaluate it on unit vectors
        per_flop, per_call = (step_seconds(cfg.model, PROBE_VOCAB, plan, dataclasses.replace(
            consts, seconds_per_flop=f, seconds_per_call=1.0 - f, cell_speed=others)) for f in (1.0, 0.0))
        flops += per_flop
        rest += seconds - per_call * spc
    if rest <= 0:
        return consts
    return dataclasses.replace(consts, cell_speed={**others, key: [rest / flops, spc]})
