"""Optimizers by name, and how many bytes of state each one keeps.

Only parameters with requires_grad reach the optimizer, so a frozen embedding costs no state.

State per parameter of n elements (dtype_bytes each), as torch 2.x stores it:

    sgd         0                      (momentum 0: SGD keeps no state at all)
                n                      momentum_buffer
    adam/adamw  2n + step              exp_avg, exp_avg_sq, and a 0-d float32 `step` tensor
    adafactor   rows + cols + step     for a (..., R, C) parameter: row_var (..., R, 1) and
                                       col_var (..., 1, C) -- the factored second moment of
                n + step               Shazeer & Stern 2018 (arXiv:1804.04235); 1-D and 0-d
                                       parameters keep a full `variance`. No first moment.

(torch/optim/_adafactor.py `_init_group`; adam.py `_init_group`. The 0-d `step` is float32
unless the default dtype is float64 -- `torch.optim.optimizer._get_scalar_dtype`.)

Sparse embeddings (nn.Embedding(sparse=True)) produce sparse gradients that Adam, AdamW and
Adafactor refuse; `make_optimizers` puts them in their own SparseAdam or SGD optimizer, and the
loop steps every optimizer in the list together.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from seqfit.errors import SeqfitError

__all__ = ["OPTIMIZERS", "DEFAULT_LR", "default_lr", "optimizer_for", "make_optimizer", "optimizer_state_bytes",
           "measured_state_bytes", "split_sparse_params", "sparse_embedding_optimizer", "make_optimizers"]

OPTIMIZERS = ("sgd", "adam", "adamw", "adafactor")
_STEP_BYTES = 4  # the 0-d float32 `step` tensor Adam/AdamW/Adafactor keep per parameter


def _trainable(params_or_groups) -> list:
    """Drop parameters without requires_grad (and groups left empty); keep group options."""
    items = list(params_or_groups)
    if items and isinstance(items[0], dict):
        groups = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in items]
        return [g for g in groups if g["params"]]
    return [p for p in items if p.requires_grad]


def _fusable(params: list) -> bool:
    """Whether Adam/AdamW can take their fused kernel: dense floating-point parameters on CPU or CUDA.

    The unfused step makes two parameter-sized temporaries per parameter (sqrt of exp_avg_sq, then its
    quotient), each a fresh mapping on CPU: 17-24 ms a step for a 5M-parameter LM on 2 cores, 2.2-2.4 ms fused."""
    tensors = [p for g in params for p in g["params"]] if params and isinstance(params[0], dict) else params
    return all(p.is_floating_point() and p.device.type in ("cpu", "cuda") and not p.is_sparse for p in tensors)


DEFAULT_LR = {"sgd": 20.0, "adam": 1e-3, "adamw": 1e-3, "adafactor": 1e-2}  # sgd 20: the classic LSTM LM recipe


def default_lr(name: str, lr: float) -> float:
    """``lr`` if set (> 0), else the usual learning rate for the optimizer."""
    return lr if lr > 0 else DEFAULT_LR[name]


def optimizer_for(train, model: nn.Module) -> tuple[torch.optim.Optimizer, float]:
    """The optimizer a run's TrainCfg asks for over the model's trainable parameters, and its learning rate
    (--lr 0: the optimizer's usual one)."""
    lr = default_lr(train.optimizer, train.lr)
    return make_optimizer(train.optimizer, model.parameters(), lr=lr, momentum=train.momentum,
                          weight_decay=train.weight_decay), lr


def make_optimizer(name: str, params_or_groups, *, lr: float, momentum: float = 0.0,
                   weight_decay: float = 0.0) -> torch.optim.Optimizer:
    if name not in OPTIMIZERS:
        raise SeqfitError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    if momentum and name != "sgd":
        raise SeqfitError(f"--momentum applies to sgd only; {name} keeps its own moment estimates")
    params = _trainable(params_or_groups)
    if not params:
        raise SeqfitError("the model has no trainable parameters (everything is frozen)")
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    fused = _fusable(params)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused)  # L2 added to the gradient
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused)  # decoupled decay
    # torch's Adafactor treats lr as the cap on its relative step size (default 1e-2)
    return torch.optim.Adafactor(params, lr=lr, weight_decay=weight_decay)


def _param_state_elems(name: str, shape: tuple[int, ...], momentum: float) -> tuple[int, int]:
    """(state elements in the parameter's dtype, step scalars) for one parameter."""
    n = math.prod(shape)
    if name == "sgd":
        return (n if momentum else 0), 0
    if name in ("adam", "adamw"):
        return 2 * n, 1
    if len(shape) >= 2:  # adafactor, factored
        lead = math.prod(shape[:-2])
        rows, cols = shape[-2], shape[-1]
        return lead * rows + lead * cols, 1
    return n, 1  # adafactor, 1-D or 0-d: full variance


def optimizer_state_bytes(name: str, param_shapes: list[tuple[int, ...]], *, momentum: float = 0.0,
                          dtype_bytes: int = 4) -> int:
    """Bytes of optimizer state after the first step, from parameter shapes alone (pure)."""
    if name not in OPTIMIZERS:
        raise SeqfitError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    total = 0
    for shape in param_shapes:
        elems, steps = _param_state_elems(name, tuple(shape), momentum)
        total += elems * dtype_bytes + steps * _STEP_BYTES
    return total


def _tensor_bytes(t: torch.Tensor) -> int:
    if t.is_sparse:  # e.g. SGD's momentum_buffer for a sparse embedding gradient
        return _tensor_bytes(t._indices()) + _tensor_bytes(t._values())
    return t.numel() * t.element_size()


def measured_state_bytes(optimizers) -> int:
    """Sum of tensor bytes held in optimizer.state (one optimizer or a list); Python scalars count 0."""
    opts = optimizers if isinstance(optimizers, (list, tuple)) else [optimizers]
    return sum(_tensor_bytes(v) for opt in opts for state in opt.state.values()
               for v in state.values() if torch.is_tensor(v))


def split_sparse_params(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(dense, sparse) trainable parameters; sparse = weights of Embedding/EmbeddingBag(sparse=True)."""
    sparse_mods = [m for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and m.sparse]
    sparse_ids = {id(m.weight) for m in sparse_mods if m.weight.requires_grad}
    for m in model.modules():
        if any(m is s for s in sparse_mods):
            continue
        if any(id(p) in sparse_ids for p in m.parameters(recurse=False)):
            # a tied output layer adds a dense gradient to the same tensor, so it is no longer sparse
            raise SeqfitError("sparse embeddings cannot share weights with another layer; drop --tie-weights or --sparse-embeddings")
    seen: set[int] = set()
    dense, sparse = [], []
    for p in model.parameters():  # model.parameters() already yields tied tensors once
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (sparse if id(p) in sparse_ids else dense).append(p)
    return dense, sparse


def sparse_embedding_optimizer(name: str, params: Iterable[nn.Parameter], *, lr: float,
                               momentum: float = 0.0) -> torch.optim.Optimizer:
    """SGD for sgd (accepts sparse grads); SparseAdam for the adaptive ones.

    No weight decay here: adding `wd * param` to a sparse gradient makes it dense, which is the
    cost sparse embeddings exist to avoid. SparseAdam only updates rows seen in the batch ("lazy
    Adam"), but its exp_avg/exp_avg_sq are still full-size: the saving is in gradient memory
    and update time, not in optimizer state.
    """
    params = list(params)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum)
    if name in ("adam", "adamw", "adafactor"):
        return torch.optim.SparseAdam(params, lr=lr)
    raise SeqfitError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def make_optimizers(name: str, model: nn.Module, *, lr: float, momentum: float = 0.0,
                    weight_decay: float = 0.0, sparse_embeddings: bool = False) -> list[torch.optim.Optimizer]:
    """The optimizers the loop steps together: [dense] or [dense, sparse-embedding]."""
    if not sparse_embeddings:
        return [make_optimizer(name, model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)]
    dense, sparse = split_sparse_params(model)
    opts = []
    if dense:
        opts.append(make_optimizer(name, dense, lr=lr, momentum=momentum, weight_decay=weight_decay))
    if sparse:
        opts.append(sparse_embedding_optimizer(name, sparse, lr=lr, momentum=momentum))
    if not opts:
        raise SeqfitError("the model has no trainable parameters (everything is frozen)")
    return opts
