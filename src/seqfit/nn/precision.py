"""Mixed precision: one object that owns the autocast context and, for fp16, the GradScaler.

The loop calls it the same way for every precision, so there are no `if fp16:` branches there:

    with precision.autocast():
        loss = model_loss(...)
    precision.backward(loss)
    precision.unscale_(optimizer)          # before clipping, so the clip sees true gradients
    clip_grad_norm_(...)
    stepped = precision.step(optimizer)    # False when fp16 found inf/nan and skipped the step

bf16 keeps fp32's exponent range, so it needs no loss scaling; fp16 does (its smallest normal is
6e-5, and small gradients underflow to 0 without scaling). Recipe as in the PyTorch AMP docs:
https://pytorch.org/docs/stable/notes/amp_examples.html
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from seqfit.errors import SeqfitError

__all__ = ["PRECISIONS", "Precision", "make_precision", "widen", "cpu_bf16_rnn_supported"]

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _as_list(optimizers) -> list[torch.optim.Optimizer]:
    # one optimizer or several (dense + sparse embeddings) are stepped the same way
    return list(optimizers) if isinstance(optimizers, Sequence) else [optimizers]


@dataclass
class Precision:
    name: str  # "fp32" | "bf16" | "fp16"
    device_type: str  # "cpu" | "cuda"
    scaler: torch.amp.GradScaler | None = None  # only for fp16

    @property
    def dtype(self) -> torch.dtype:
        """The dtype autocast computes in (float32 for fp32)."""
        return _DTYPES.get(self.name, torch.float32)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def backward(self, loss: Tensor) -> None:
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()

    def unscale_(self, optimizers) -> None:
        """Divide gradients by the loss scale in place; call once per step, before clipping."""
        if self.scaler is not None:
            for opt in _as_list(optimizers):
                self.scaler.unscale_(opt)

    def step(self, optimizers) -> bool:
        """Step one optimizer or a list of them; False if fp16 skipped the step for inf/nan grads."""
        opts = _as_list(optimizers)
        if self.scaler is None:
            for opt in opts:
                opt.step()
            return True
        for opt in opts:
            self.scaler.step(opt)  # skips opt.step() itself when its grads hold inf/nan
        # the scaler backs off (scale shrinks) exactly when some optimizer found inf/nan;
        # get_scale() syncs once per step, which the loop pays anyway for logging
        before = self.scaler.get_scale()
        self.scaler.update()  # once per step, after every optimizer (AMP docs, "multiple optimizers")
        return self.scaler.get_scale() >= before

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, d: dict) -> None:
        if self.scaler is not None and d:
            self.scaler.load_state_dict(d)
        elif self.scaler is not None:
            raise SeqfitError("checkpoint has no GradScaler state but this run uses fp16; resume with the precision it was saved with")


def make_precision(name: str, device: torch.device | str) -> Precision:
    device = torch.device(device)
    if name not in PRECISIONS:
        raise SeqfitError(f"unknown precision {name!r}; choose one of {', '.join(PRECISIONS)}")
    if name == "fp32":
        return Precision(name, device.type)
    if device.type not in ("cpu", "cuda"):
        raise SeqfitError(f"{name} is supported on cpu and cuda devices, not {device.type}; use --precision fp32")
    if name == "fp16":
        if device.type != "cuda":
            raise SeqfitError("fp16 needs a CUDA device; use --precision bf16 on CPU")
        return Precision(name, device.type, scaler=torch.amp.GradScaler("cuda"))
    if device.type == "cpu" and not cpu_bf16_rnn_supported():
        raise SeqfitError("this CPU has no bf16 recurrent kernels (oneDNN needs AVX-512 for them); use --precision fp32")
    if device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        # pre-Ampere GPUs emulate bf16 slowly; fp16 with loss scaling is the fast path there
        raise SeqfitError(f"{torch.cuda.get_device_name(device)} has no native bf16; use --precision fp16")
    return Precision(name, device.type)


def widen(x: Tensor) -> Tensor:
    """float16 stored data (e.g. a half-precision feature store) -> float32 for compute; others pass."""
    return x.float() if x.dtype == torch.float16 else x


@functools.cache
def cpu_bf16_rnn_supported() -> bool:
    """Whether PyTorch's fused recurrent kernels run in bf16 on this CPU.

    oneDNN's bf16 RNN primitive needs AVX-512 (seen: an AVX2-only AMD EPYC raises "could not create a
    primitive descriptor for the LSTM forward propagation primitive"), so a one-step probe asks the
    kernel itself instead of guessing from CPU flags.
    """
    lstm = torch.nn.LSTM(1, 1, batch_first=True)
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            lstm(torch.zeros(1, 1, 1))
    except RuntimeError:
        return False
    return True
