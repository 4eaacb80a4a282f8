"""The speed model's per-cell timing constants (memory/calibrate._fit_timing, Constants.speed), without probes:
probe timings are made from known constants and fitted back."""

from __future__ import annotations

import dataclasses

from seqfit.memory.calibrate import PROBE_VOCAB, _fit_timing, probe_config
from seqfit.memory.constants import Constants, default_constants
from seqfit.memory.estimate import DataInfo
from seqfit.memory.requested import requested_plan
from seqfit.memory.throughput import step_seconds


def _probe_timings(cell: str, spf: float, spc: float) -> list:
    """What the two probes of ``cell`` would time on a machine with these constants."""
    machine = dataclasses.replace(default_constants("cpu"), seconds_per_flop=spf, seconds_per_call=spc)
    out = []
    for bptt in (8, 32):
        cfg = probe_config(cell, "fp32", "cpu", 64, bptt)
        out.append((cfg, step_seconds(cfg.model, PROBE_VOCAB, requested_plan(cfg, DataInfo(PROBE_VOCAB), "cpu"),
                                      machine)))
    return out


def test_each_cell_keeps_its_own_fit_and_a_later_probe_leaves_the_others_alone():
    consts = default_constants("cpu")
    spc = consts.seconds_per_call
    consts = _fit_timing(consts, "lstm/fp32", _probe_timings("lstm", 1.5e-11, spc))
    consts = _fit_timing(consts, "gru/fp32", _probe_timings("gru", 4e-11, spc))  # a slower kernel, probed later
    lstm, gru = consts.speed("lstm", "fp32"), consts.speed("gru", "fp32")
    assert abs(lstm[0] / 1.5e-11 - 1) < 1e-9 and abs(gru[0] / 4e-11 - 1) < 1e-9
    assert lstm[1] == gru[1] == spc
    assert consts.speed("rnn", "fp32") == (consts.seconds_per_flop, spc)  # never probed
    # probes faster than the per-call overhead alone leave no time for the FLOPs: what was there stays
    too_fast = [(cfg, 1e-9) for cfg, _ in _probe_timings("lstm", 1e-11, spc)]
    assert _fit_timing(consts, "lstm/fp32", too_fast).speed("lstm", "fp32") == lstm


def test_a_cache_written_before_per_cell_timing_falls_back_to_the_default_speeds():
    old = dataclasses.replace(default_constants("cpu"), seconds_per_flop=1.2e-10, seconds_per_call=2e-18,
                              calibrated=True).to_dict()
    del old["cell_speed"]
    consts = Constants.from_dict(old)
    assert consts.speed("lstm", "fp32") == (default_constants("cpu").seconds_per_flop,
                                            default_constants("cpu").seconds_per_call)
    fresh = dataclasses.replace(default_constants("cpu"), cell_speed={"lstm/fp32": [1e-11, 0.0]}, calibrated=True)
    assert Constants.from_dict(fresh.to_dict()).speed("lstm", "fp32") == (1e-11, 0.0)
