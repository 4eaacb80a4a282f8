"""Build the model a config asks for, sized by the data it will train on."""

from __future__ import annotations

from torch import nn

from seqfit.config import RunCfg
from seqfit.data.vocab import Vocab
from seqfit.errors import SeqfitError
from seqfit.models.lm import LanguageModel

__all__ = ["build_model", "count_parameters"]


def build_model(cfg: RunCfg, vocab: Vocab, *, loss_kind: str) -> nn.Module:
    if cfg.model.task == "lm":
        return LanguageModel(cfg.model, len(vocab), loss=loss_kind, loss_chunk=cfg.memory.loss_chunk,
                             counts=vocab.counts, checkpoint_time=cfg.memory.checkpoint_time,
                             label_smoothing=cfg.train.label_smoothing)
    raise SeqfitError(f"task {cfg.model.task!r} is not available for this data directory")


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
