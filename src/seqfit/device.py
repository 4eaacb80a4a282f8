"""Which device a run uses."""

from __future__ import annotations

import torch

from seqfit.errors import SeqfitError

__all__ = ["resolve_device"]


def resolve_device(name: str) -> torch.device:
    """"auto" picks CUDA when present; asking for CUDA without one is an error, not a silent CPU run."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SeqfitError("--device cuda asked for, but no CUDA device is available")
    return torch.device(name)
