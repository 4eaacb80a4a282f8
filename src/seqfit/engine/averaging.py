"""Weight averaging for evaluation: NT-ASGD's trigger, or polynomial-decay averaging from the first step.

``--average nt`` (Merity et al. 2017, arXiv:1708.02182, section 3): the run trains as asked until the
validation loss fails to improve on the best of all but the last ``--nonmono`` validations
(non-monotonically triggered); from then on it keeps the running mean of the weights after every step.
With SGD that is NT-ASGD.

``--average poly`` (Shamir & Zhang 2013, arXiv:1212.1824, "polynomial-decay averaging"): from the first
step, mean <- mean + (p + 1) / (t + p) * (weights - mean), so step s weighs about (s / t)^p in the mean at
step t: the early, poor weights fade while the noise of a large constant learning rate averages out. It
needs no trigger and no budget, so a run stopped at any CPU minute (or resumed for more) holds the average
that a run of exactly that length would (p = ``--average-power``).

Either way validation, the checkpoint's model.safetensors and so inference use the average; the raw
training weights travel in the checkpoint's state, so --resume continues the raw ones exactly.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

__all__ = ["WeightAverage"]


class WeightAverage:
    def __init__(self, model: nn.Module, *, enabled: bool, nonmono: int, mode: str = "nt", power: float = 3.0):
        self.model, self.enabled, self.nonmono = model, enabled, nonmono
        self.polynomial, self.power = enabled and mode == "poly", power
        self.history: list[float] = []  # validation losses seen
        self.count = 0  # steps averaged (0: not triggered)
        self.mean: dict[str, torch.Tensor] = {}

    @property
    def active(self) -> bool:
        return self.count > 0

    def _params(self) -> dict[str, torch.Tensor]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def on_validation(self, loss: float) -> bool:
        """Record a validation loss; True when it triggers the averaging (from the next step)."""
        if not self.enabled:
            return False
        self.history.append(loss)
        if self.polynomial or self.active or len(self.history) <= self.nonmono:
            return False
        if loss > min(self.history[:-self.nonmono]):
            self.mean = {n: p.detach().clone() for n, p in self._params().items()}
            self.count = 1
            return True
        return False

    @torch.no_grad()
    def step(self) -> None:
        """After an optimizer step: fold the new weights into the mean."""
        if self.polynomial and not self.active:  # the first step's weights start the mean
            self.mean = {n: p.detach().clone() for n, p in self._params().items()}
            self.count = 1
            return
        if not self.active:
            return
        self.count += 1
        rate = (self.power + 1) / (self.count + self.power) if self.polynomial else 1.0 / self.count
        for n, p in self._params().items():
            self.mean[n].add_(p.detach() - self.mean[n], alpha=rate)

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        """The model holds the averaged weights inside (nothing changes before the trigger)."""
        if not self.active:
            yield
            return
        params = self._params()
        raw = {n: p.detach().clone() for n, p in params.items()}
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(self.mean[n])
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(raw[n])

    def state_dict(self) -> dict:
        """History and count; the raw weights (the model file holds the mean) once triggered."""
        out: dict = {"history": list(self.history), "count": self.count}
        if self.active:
            out["raw"] = {n: p.detach().cpu().clone() for n, p in self._params().items()}
        return out

    @torch.no_grad()
    def load_state_dict(self, state: dict | None) -> None:
        """From a checkpoint whose weights are already loaded into the model (the mean, once triggered)."""
        if not state:
            return
        self.history, self.count = [float(v) for v in state.get("history", [])], int(state.get("count", 0))
        if self.active:
            params = self._params()
            self.mean = {n: p.detach().clone() for n, p in params.items()}
            for n, p in params.items():
                p.copy_(state["raw"][n])
