"""Fit the estimator's machine constants with short probes, and cache them per machine and version.

Probes (each a fresh child process running real training steps, seqfit.memory.probe):

    baseline      a tiny model (H = 16): what it measures minus what the estimate gives for its
                  tensors is the runtime's own anonymous memory (python, torch, seqfit, thread pools)
    per step      one row of a 1 x 16 layer at 200 and 1,600 steps: the bytes a layer keeps per time step
                  whatever its size (constants.CellCoefs.per_step), which the per-token bytes hardly touch
    per cell      the same 2-layer model at two small token counts (b x T = 64 x 8 and 64 x 32-128, H = 256);
                  the slope between them, against the estimate's slope, scales that cell's
                  per-token constants -- two sizes, so the baseline's error cancels -- and what is
                  left at both sizes is that kernel library's one-time state (``const``)
    timing        the same runs' step times fit that cell's seconds_per_flop and seconds_per_call

Probes stay small on purpose (the largest about 210 MB above the runtime's own): on CPU an out-of-memory is
a kill, so a probe must never be what runs out. The cache lives in $SEQFIT_CACHE_DIR (default ~/.cache/seqfit) as
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
from seqfit.memory.constants import Constants, cell_key, default_constants, with_cell
from seqfit.memory.estimate import DataInfo, estimate
from seqfit.memory.requested import requested_plan

__all__ = ["cache_dir", "cache_path", "load_constants", "calibrate", "probe_config", "NO_CALIBRATE_ENV"]

# Bumped when what the probes measure changes under the same torch (2: the LM window pool, oneDNN loss products,
# fused Adam; 3: the per-step bytes, which the per-cell fit now leaves out), so that constants fitted before are
# measured again.
PROBE_REVISION = 3
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


def _growth(cfgs: list[RunCfg], consts: Constants, device: str) -> int:
    """Predicted peak of the longer probe of ``cfgs`` less that of the shorter."""
    return _predicted(cfgs[1], consts, device) - _predicted(cfgs[0], consts, device)


def _scale(consts: Constants, key: str, s: float, const: float | None = None) -> Constants:
    """The cell's per-token coefficients times ``s`` (its per_step stays), and its const when given."""
    c = consts.cells[key]
    return with_cell(consts, key, keep=tuple(s * v for v in c.keep), rise=tuple(s * v for v in c.rise),
                     fwd=tuple(s * v for v in c.fwd), const=c.const if const is None else const)


# The per-cell probes' lengths at 64 rows: 8 steps, and as many as it takes for the longer one to grow by
# PROBE_GROWTH by the constants before the fit. Its peak varied by up to 8 MB from run to run (2 cores), so a
# fixed 32 steps fitted the LSTM's scale anywhere in 1.02-1.11 (45 MB of growth), and the RNN's (20 MB) at 0.8-1.3.
PROBE_SHORT = 8
PROBE_LONG = (32, 64, 128)  # 128 x 64 rows of the probe store's 40,000 tokens: 4 steps without a repeat
PROBE_GROWTH = 80 * 2**20
# The thin probes' lengths: one row, a 16-wide layer, so the per-step bytes dominate what grows between them.
THIN_STEPS = (200, 1600)
MAX_PER_STEP = 256 * 2**10  # a fit above this is taken for noise, and the default stays
MIN_SCALED_SHARE = 0.5  # _fit_scale


def _probe_lengths(cell: str, precision: str, device: str, consts: Constants) -> tuple[int, int]:
    """The per-cell probes' steps: PROBE_SHORT, and the first of PROBE_LONG that grows by PROBE_GROWTH."""
    short = probe_config(cell, precision, device, 64, PROBE_SHORT)
    for steps in PROBE_LONG:
        if _growth([short, probe_config(cell, precision, device, 64, steps)], consts, device) >= PROBE_GROWTH:
            break
    return PROBE_SHORT, steps


def _fit_per_step(consts: Constants, key: str, cfgs: list[RunCfg], measured: list[int], device: str) -> Constants:
    """The cell's per_step from the thin probes: what grew between them beyond the prediction without it."""
    grown = (measured[1] - measured[0]) - _growth(cfgs, with_cell(consts, key, per_step=0.0), device)
    per_step = grown / (THIN_STEPS[1] - THIN_STEPS[0])
    return with_cell(consts, key, per_step=per_step) if 0 <= per_step <= MAX_PER_STEP else consts


def _fit_scale(consts: Constants, key: str, cfgs: list[RunCfg], measured: list[int], device: str) -> float:
    """Scale of the cell's constants whose predicted slope between the two probes matches the measured one.

    A slope the scale cannot reach within [1/4, 4] means the probes disagree with the model's shape
    rather than its size: keep the constants as they are (1.0) instead of clamping. So does a cell whose scaled
    bytes are less than MIN_SCALED_SHARE of the probes' predicted growth (the RNN's: 40%): the fit would turn the
    probe's noise into several times as much of its per-token bytes (two fits here: 0.87 and 1.04).
    """
    plain = _growth(cfgs, consts, device)
    if plain <= 0 or (_growth(cfgs, _scale(consts, key, 1.1), device) - plain) / (0.1 * plain) < MIN_SCALED_SHARE:
        return 1.0
    want = measured[1] - measured[0]
    lo, hi = 0.25, 4.0
    for _ in range(40):  # the predicted slope grows with the scale: bisect
        mid = (lo * hi) ** 0.5
        lo, hi = (mid, hi) if _growth(cfgs, _scale(consts, key, mid), device) < want else (lo, mid)
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
            say(f"calibrating: {key}, bytes per time step")
            thin = [probe_config(cell, precision, device, 1, steps, hidden=16, layers=1) for steps in THIN_STEPS]
            consts = _fit_per_step(consts, key, thin, [measure_run(c, data_dir, steps=3)["peak_bytes"] for c in thin],
                                   device)
            say(f"calibrating: {key} at two sizes")
            # 64 streams of 256 units: a time step's (b, H) fp32 tensors are 64 KiB, mmapped like a real run's
            cfgs = [probe_config(cell, precision, device, 64, bptt)
                    for bptt in _probe_lengths(cell, precision, device, consts)]
            runs = [measure_run(c, data_dir, steps=4) for c in cfgs]
            # the longer probe's peak came out 8-12 MB above its usual one in about one run of four (RNN, LSTM),
            # and a user's run can too: the higher of two runs (the lower fitted the LSTM's scale at 0.95, and the
            # LM rows of bench_planner 2-5% under)
            again = measure_run(cfgs[1], data_dir, steps=4)
            runs[1] = max(runs[1], again, key=lambda run: run["peak_bytes"])
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
