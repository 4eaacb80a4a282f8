"""Checkpoints that never unpickle: tensors in safetensors, everything else in JSON.

Layout of RUN_DIR/checkpoint/::

    model.safetensors   model weights
    state.safetensors   every tensor of the training state (optimizer moments, RNG states, carried hidden state)
    state.json          the rest of the training state; tensors appear as {"__tensor__": key}

The directory is written under a temporary name and swapped in whole (seqfit.atomic.replace_directory),
so a crash mid-write leaves the previous checkpoint intact; a kill in the middle of a two-rename swap
leaves it as ``.checkpoint.old-PID``, which every reader here renames back first. A write that fails
(disk full, permissions) raises a one-line SeqfitError and also leaves the previous checkpoint as it was.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from seqfit.atomic import recover_directory, replace_directory, sweep_stale
from seqfit.errors import SeqfitError

__all__ = ["save_checkpoint", "load_checkpoint", "load_weights", "has_checkpoint", "flatten_tensors", "unflatten_tensors"]

CHECKPOINT_DIR = "checkpoint"
FORMAT = "seqfit-checkpoint"
VERSION = 1


def flatten_tensors(obj: Any, tensors: dict[str, torch.Tensor], prefix: str = "") -> Any:
    """Replace tensors in a nested dict/list/tuple with references, collecting them into ``tensors``."""
    if isinstance(obj, torch.Tensor):
        key = prefix or "tensor"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        for k in obj:
            if not isinstance(k, (str, int)):
                raise TypeError(f"cannot store a dict key of type {type(k).__name__}")
        # JSON keys are strings: remember which were ints (optimizer state is keyed by int).
        return {"__dict__": [[k, flatten_tensors(v, tensors, f"{prefix}.{k}" if prefix else str(k))] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        items = [flatten_tensors(v, tensors, f"{prefix}.{i}" if prefix else str(i)) for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint")


def unflatten_tensors(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__tuple__" in obj:
            return tuple(unflatten_tensors(v, tensors) for v in obj["__tuple__"])
        if "__dict__" in obj:
            return {k: unflatten_tensors(v, tensors) for k, v in obj["__dict__"]}
        raise ValueError("unexpected object in checkpoint state")
    if isinstance(obj, list):
        return [unflatten_tensors(v, tensors) for v in obj]
    return obj


def _checkpoint_dir(run_dir: Path) -> Path:
    """RUN_DIR/checkpoint, first renamed back from ``.checkpoint.old-*`` if a swap was cut short."""
    final = Path(run_dir) / CHECKPOINT_DIR
    recover_directory(final, complete="state.json")
    return final


def has_checkpoint(run_dir: Path) -> bool:
    return (_checkpoint_dir(run_dir) / "state.json").is_file()


def save_checkpoint(run_dir: Path, model: torch.nn.Module, state: dict[str, Any]) -> Path:
    """Write model weights and training state; replaces the previous checkpoint only when complete."""
    final = _checkpoint_dir(run_dir)
    stage = Path(run_dir) / f".{CHECKPOINT_DIR}.tmp-{os.getpid()}"
    try:
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir(parents=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, stage / "model.safetensors")
        tensors: dict[str, torch.Tensor] = {}
        tree = flatten_tensors(state, tensors)
        save_file(tensors, stage / "state.safetensors")
        (stage / "state.json").write_text(json.dumps({"format": FORMAT, "version": VERSION, "state": tree}))
        replace_directory(stage, final)
        sweep_stale(final)  # what a killed process left half-written
    except OSError as e:  # disk full, read-only, permissions: the previous checkpoint is untouched
        why = os.strerror(e.errno) if e.errno else str(e)
        hint = "; free some space and --resume" if e.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        raise SeqfitError(f"cannot write a checkpoint in {run_dir}: {why}{hint}") from None
    except SafetensorError as e:  # safetensors reports its own write failures (e.g. disk full) this way
        raise SeqfitError(f"cannot write a checkpoint in {run_dir}: {e}") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return final


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except FileNotFoundError:
        raise SeqfitError(f"{path} is missing: the checkpoint is incomplete") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise SeqfitError(f"{path} is not a readable safetensors file ({e}): corrupt or foreign checkpoint") from None


def load_weights(run_dir: Path, model: torch.nn.Module) -> None:
    """Load model weights, failing with one line when they do not fit the model's options."""
    path = _checkpoint_dir(run_dir) / "model.safetensors"
    weights = _read_tensors(path)
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    wrong = sorted(k for k in set(own) & set(weights) if own[k].shape != weights[k].shape)
    if missing or unexpected or wrong:
        detail = "; ".join(filter(None, [
            f"missing {', '.join(missing[:3])}" if missing else "",
            f"unexpected {', '.join(unexpected[:3])}" if unexpected else "",
            ", ".join(f"{k} is {tuple(weights[k].shape)} in the checkpoint, {tuple(own[k].shape)} in the model" for k in wrong[:2]),
        ]))
        raise SeqfitError(f"the checkpoint in {run_dir} does not match the model options ({detail})")
    model.load_state_dict(weights)


def load_checkpoint(run_dir: Path, model: torch.nn.Module) -> dict[str, Any]:
    """Load weights into ``model`` and return the training state saved beside them."""
    path = _checkpoint_dir(run_dir) / "state.json"
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise SeqfitError(f"no checkpoint in {run_dir} to resume from") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise SeqfitError(f"{path} is corrupt ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise SeqfitError(f"{path} is not a seqfit checkpoint")
    if doc.get("version") != VERSION:
        raise SeqfitError(f"{path} has checkpoint version {doc.get('version')}; this seqfit reads {VERSION}")
    load_weights(run_dir, model)
    tensors = _read_tensors(path.with_name("state.safetensors"))
    try:
        return unflatten_tensors(doc["state"], tensors)
    except (KeyError, ValueError, TypeError) as e:
        raise SeqfitError(f"{path} is corrupt ({e})") from None
