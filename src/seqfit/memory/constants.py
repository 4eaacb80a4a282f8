"""The machine- and build-dependent numbers the estimator needs, with defaults measured on one machine.

Everything else in the estimate is exact arithmetic on shapes (parameters, gradients, optimizer state,
logits). What is not: how many bytes a fused recurrent kernel keeps per token for backward, how much
scratch its backward touches, and what the Python + PyTorch runtime itself holds. Those differ between
PyTorch builds (oneDNN's LSTM keeps ~10 H-sized values per step, the native GRU ~8) and devices, so
they live here and `seqfit.memory.calibrate` refits them with short probes on the machine at hand.

A layer's bytes are linear in its sizes, with n = micro-batch x steps tokens, b the micro-batch, I its
input size, H its hidden size (I = E for the first layer) and P = gates x H x (I + H) its weights:

    keep   = k[0] n H + k[1] n I + k[2] b H + k[3] P    kept from its forward until its backward
    fwd    = f[0] n H + ...                             forward scratch above `keep` (freed by its end)
    rise   = r[0] n H + ...                             backward scratch above `keep` (workspace, weight
                                                        copies in the kernel's layout, grad of input)
    + per_step x steps                                  kept too: bytes per time step whatever the batch
                                                        and width (a kernel's autograd records, below)

"Bytes" are resident bytes: pages a kernel allocates but never touches (oneDNN's workspace has
regions only backward writes) count only once written, which is why these are measured, not derived.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

__all__ = ["CellCoefs", "Constants", "DEFAULT_CONSTANTS", "cell_key", "default_constants", "dot", "with_cell"]


def dot(c: tuple[float, ...], f: tuple[float, ...]) -> int:
    """Bytes of coefficients ``c`` over features ``f`` (see the module docstring)."""
    return int(sum(a * b for a, b in zip(c, f)))


@dataclass(frozen=True)
class CellCoefs:
    keep: tuple[float, float, float, float]  # bytes per (n H, n I, b H, P) kept from forward to backward
    rise: tuple[float, float, float, float]  # ... of backward scratch above `keep`
    fwd: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # ... of forward scratch above `keep`
    const: float = 0.0  # bytes the kernel library keeps from its first call on (oneDNN's RNN state)
    # bytes a layer direction keeps per time step from forward to backward, whatever its batch and width: the
    # CPU's GRU and RNN loop over time in ATen and record each step's ops for autograd (16 and 5.5 KiB a step,
    # torch 2.13), oneDNN's LSTM about 1.4 KiB. Negligible at 35 steps; at one row of 6,400 steps a 1 x 256 GRU
    # classifier measured 406 MB where the per-token terms alone predicted 309.
    per_step: float = 0.0

    def kept(self, feats: tuple[int, int, int, int], steps: int) -> int:
        """Bytes kept from forward to backward by a layer direction of ``feats`` (see the module docstring) over
        ``steps`` time steps."""
        return dot(self.keep, feats) + int(self.per_step * steps)


def _defaults() -> dict[str, CellCoefs]:
    # Fitted on CPU, torch 2.13 (oneDNN 3.12 LSTM; native GRU/RNN), glibc mmap threshold pinned
    # (seqfit.memory.allocator); see /tmp notes in the planner report. Keys: "<cell>/<precision>".
    # per_step: one row of 200 and 1,600 steps, H = 16 (calibrate.py's thin probes); bf16 records as many ops.
    lstm, gru, rnn = 1.4 * 2**10, 16 * 2**10, 5.5 * 2**10
    return {
        "lstm/fp32": CellCoefs(keep=(24.0, 0.0, 19.0, 0.0), rise=(35.0, 12.0, 13.0, 7.4), fwd=(16.0, 4.0, 0.0, 4.0),
                               const=4 * 2**20, per_step=lstm),
        "gru/fp32": CellCoefs(keep=(28.0, 4.0, 0.0, 0.0), rise=(7.5, 2.2, 0.0, 3.8), fwd=(16.0, 4.0, 0.0, 0.0),
                              per_step=gru),
        "rnn/fp32": CellCoefs(keep=(4.0, 4.0, 4.0, 0.0), rise=(4.0, 4.0, 0.0, 4.0), fwd=(4.0, 0.0, 0.0, 0.0),
                              per_step=rnn),
        "lstm/bf16": CellCoefs(keep=(13.5, 0.0, 0.0, 1.85), rise=(9.5, 13.9, 150.0, 7.5), fwd=(0.0, 8.0, 0.0, 1.5),
                               const=4 * 2**20, per_step=lstm),
        "gru/bf16": CellCoefs(keep=(14.0, 2.0, 0.0, 2.0), rise=(8.0, 4.0, 0.0, 4.0), fwd=(8.0, 2.0, 0.0, 0.0),
                              per_step=gru),
        "rnn/bf16": CellCoefs(keep=(2.0, 2.0, 2.0, 2.0), rise=(4.0, 4.0, 0.0, 4.0), fwd=(2.0, 0.0, 0.0, 0.0),
                              per_step=rnn),
    }


@dataclass(frozen=True)
class Constants:
    device: str = "cpu"
    baseline: int = 216 * 2**20  # anonymous bytes of python + torch + seqfit after one tiny (RNN) training step
    cells: dict[str, CellCoefs] = field(default_factory=_defaults)
    blas_cap: int = int(12.5 * 2**20)  # MKL's retained packing buffers after large matmuls (2 threads here)
    # relative throughput model (seqfit.memory.throughput): seconds per multiply-add and per-call overhead
    seconds_per_flop: float = 2.5e-11
    seconds_per_call: float = 4.0e-5  # per time step per layer kernel launch / Python overhead
    batch_half: float = 8.0  # micro-batch at which a time step's matmuls reach half their best speed
    # per cell key: [seconds_per_flop, seconds_per_call], the first fitted on that cell's own probes (the
    # second is seconds_per_call: calibrate._fit_timing); keys not probed use the two above. One fit over
    # every cell's probes was off 10x: the CPU's GRU and RNN kernels ran at 23-29 GFLOP/s where the fused
    # LSTM ran at 48-67 (2 cores, H = 256), and a later probe of GRU alone refitted it for every cell.
    cell_speed: dict[str, list[float]] = field(default_factory=dict)
    calibrated: bool = False  # True once fitted on this machine
    source: str = "defaults measured on the development machine"

    def coefs(self, cell: str, precision: str) -> CellCoefs:
        return self.cells[cell_key(cell, precision)]

    def speed(self, cell: str, precision: str) -> tuple[float, float]:
        """(seconds_per_flop, seconds_per_call) for this cell and precision."""
        fitted = self.cell_speed.get(cell_key(cell, precision))
        return (fitted[0], fitted[1]) if fitted else (self.seconds_per_flop, self.seconds_per_call)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Constants":
        base = _cuda_defaults() if data.get("device") == "cuda" else _defaults()
        # a cell written before per_step was measured keeps the default one
        cells = {k: CellCoefs(**{"per_step": base[k].per_step if k in base else 0.0,
                                 **{f: tuple(v) if isinstance(v, list) else v for f, v in c.items()}})
                 for k, c in data.get("cells", {}).items()}
        rest = {k: v for k, v in data.items() if k != "cells" and k in cls.__dataclass_fields__}
        if data.get("calibrated") and "cell_speed" not in data:
            # a cache written before per-cell timing: its one fit may describe only the cells probed last
            defaults = default_constants(data.get("device", "cpu"))
            rest.update(seconds_per_flop=defaults.seconds_per_flop, seconds_per_call=defaults.seconds_per_call)
        return cls(**rest, cells={**base, **cells})


def with_cell(consts: Constants, key: str, **changes) -> Constants:
    """``consts`` with the cell ``key``'s coefficients changed (CellCoefs fields), the other cells as they are."""
    return replace(consts, cells={**consts.cells, key: replace(consts.cells[key], **changes)})


def cell_key(cell: str, precision: str) -> str:
    """The key of a cell's constants ("lstm/fp32", ...): fp16 (CUDA) is sized like bf16."""
    return f"{cell}/{'fp32' if precision == 'fp32' else 'bf16'}"


def _cuda_defaults() -> dict[str, CellCoefs]:
    # Not measured: cuDNN keeps its "reserve space" (gates and states, ~10 H-sized values per step for an
    # LSTM, fp32 or the compute dtype) plus the layer output; calibrate.py refits these on a CUDA machine.
    # cuDNN runs a layer as one op (one autograd record), so per_step starts at 0 there.
    return {
        "lstm/fp32": CellCoefs(keep=(44.0, 4.0, 0.0, 0.0), rise=(20.0, 4.0, 0.0, 4.0)),
        "gru/fp32": CellCoefs(keep=(36.0, 4.0, 0.0, 0.0), rise=(16.0, 4.0, 0.0, 4.0)),
        "rnn/fp32": CellCoefs(keep=(12.0, 4.0, 0.0, 0.0), rise=(8.0, 4.0, 0.0, 4.0)),
        "lstm/bf16": CellCoefs(keep=(24.0, 2.0, 0.0, 2.0), rise=(12.0, 2.0, 0.0, 4.0)),
        "gru/bf16": CellCoefs(keep=(20.0, 2.0, 0.0, 2.0), rise=(10.0, 2.0, 0.0, 4.0)),
        "rnn/bf16": CellCoefs(keep=(8.0, 2.0, 0.0, 2.0), rise=(6.0, 2.0, 0.0, 4.0)),
    }


def default_constants(device: str) -> Constants:
    """Uncalibrated constants for a device: the CPU ones were measured, the CUDA ones are estimates.

    On CUDA the budget governs the caching allocator's reserved bytes, which start near zero: the
    CUDA context lives outside it, so the baseline is small.
    """
    if device == "cuda":
        return Constants(device="cuda", baseline=16 * 2**20, cells=_cuda_defaults(), seconds_per_flop=2e-14,
                         seconds_per_call=2e-5, batch_half=64.0, source="uncalibrated CUDA estimates")
    return Constants()


DEFAULT_CONSTANTS = Constants()
