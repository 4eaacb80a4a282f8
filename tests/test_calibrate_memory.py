"""The memory probes' fits (memory/calibrate.py), without probes: measurements are made from known constants and
fitted back."""

from __future__ import annotations

from seqfit.memory.calibrate import (
    PROBE_GROWTH,
    PROBE_LONG,
    THIN_STEPS,
    _fit_per_step,
    _predicted,
    _probe_lengths,
    _scale,
    probe_config,
)
from seqfit.memory.constants import Constants, default_constants, with_cell

KEY = "gru/fp32"


def _thin(cell: str = "gru") -> list:
    return [probe_config(cell, "fp32", "cpu", 1, steps, hidden=16, layers=1) for steps in THIN_STEPS]


def test_the_thin_probes_give_back_the_per_step_bytes_whatever_the_baseline():
    machine = with_cell(default_constants("cpu"), KEY, per_step=21_000.0)
    offset = 7 * 2**20  # the runtime's baseline misjudged: the same at both lengths, so it cancels
    measured = [_predicted(cfg, machine, "cpu") + offset for cfg in _thin()]
    fitted = _fit_per_step(default_constants("cpu"), KEY, _thin(), measured, "cpu")
    assert abs(fitted.cells[KEY].per_step / 21_000 - 1) < 1e-3
    assert fitted.cells["lstm/fp32"] == default_constants("cpu").cells["lstm/fp32"]  # the other cells stay


def test_a_per_step_fit_out_of_reach_keeps_the_default():
    consts = default_constants("cpu")
    shrunk = [_predicted(cfg, with_cell(consts, KEY, per_step=0.0), "cpu") for cfg in _thin()]
    shrunk[1] -= 16 * 2**20  # the longer probe measured below what its tensors alone take: noise, not a fit
    assert _fit_per_step(consts, KEY, _thin(), shrunk, "cpu").cells[KEY].per_step == consts.cells[KEY].per_step


def test_the_longer_cell_probe_grows_enough_to_be_read_beside_the_noise():
    consts = default_constants("cpu")
    lengths = {cell: _probe_lengths(cell, "fp32", "cpu", consts) for cell in ("lstm", "gru", "rnn")}
    for cell, (short, long) in lengths.items():
        grown = (_predicted(probe_config(cell, "fp32", "cpu", 64, long), consts, "cpu")
                 - _predicted(probe_config(cell, "fp32", "cpu", 64, short), consts, "cpu"))
        assert grown >= PROBE_GROWTH or long == PROBE_LONG[-1]
    assert lengths["rnn"][1] > lengths["lstm"][1]  # an RNN keeps fewer bytes a token: a longer probe


def test_scaling_a_cell_keeps_its_per_step_bytes():
    consts = with_cell(default_constants("cpu"), KEY, per_step=12_345.0)
    scaled = _scale(consts, KEY, 0.5).cells[KEY]
    assert scaled.per_step == 12_345.0 and scaled.keep[0] == 0.5 * consts.cells[KEY].keep[0]


def test_a_cache_written_before_per_step_takes_the_default_per_step():
    data = default_constants("cpu").to_dict()
    for cell in data["cells"].values():
        del cell["per_step"]
    consts = Constants.from_dict(data)
    assert consts.cells[KEY].per_step == default_constants("cpu").cells[KEY].per_step > 0
