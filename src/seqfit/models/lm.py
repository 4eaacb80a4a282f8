"""Recurrent language model: embedding -> recurrent stack -> vocabulary output head.

The head returns summed sparse cross-entropy from integer targets; with the chunked or adaptive head
the batch x time x vocabulary logits never exist at once.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from seqfit.config import ModelCfg
from seqfit.errors import SeqfitError
from seqfit.models.heads import make_output_head
from seqfit.nn.embedding import SpareGradEmbedding
from seqfit.nn.recurrent import RecurrentStack, State
from seqfit.nn.regularisers import embedding_dropout, make_dropout, new_batch

__all__ = ["LanguageModel", "load_embedding_matrix", "spare_grad_bytes"]


def load_embedding_matrix(path: str, vocab_size: int, embed: int) -> torch.Tensor:
    """A (V, E) matrix written by `seqfit prepare --embeddings`, checked against the model's sizes."""
    try:
        matrix = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise SeqfitError(f"cannot read embedding matrix {path}: {e}") from None
    if not isinstance(matrix, np.ndarray) or matrix.ndim != 2 or matrix.dtype.kind != "f":  # e.g. an .npz (a zip)
        raise SeqfitError(f"{path} is not a 2-d float .npy matrix (as `seqfit prepare --embeddings` writes)")
    if matrix.shape != (vocab_size, embed):
        raise SeqfitError(f"embedding matrix {path} is {matrix.shape[0]}x{matrix.shape[1]}, "
                          f"the model needs {vocab_size}x{embed} (vocabulary x --embed)")
    return torch.tensor(np.asarray(matrix), dtype=torch.float32)  # a copy: the map stays read-only


def _embedding_spares(cfg: ModelCfg) -> bool:
    # whole-word dropout looks rows up in a masked copy of the weight, whose backward makes its own gradient
    return cfg.embed_dropout == 0 and not cfg.freeze_embeddings


def spare_grad_bytes(cfg: ModelCfg, vocab_size: int, loss: str) -> dict[str, int]:
    """The fp32 gradients a language model's kernels write into the last step's memory (nn/spare_grads.py), by
    the kernel that takes the spare: "loss" (the chunked loss's output weight, or the embedding's when tied to
    it: the loss's forward comes first) and "embedding". The planner counts them from the step's start."""
    spares = {}
    if loss == "chunked" and (not cfg.tie_weights or _embedding_spares(cfg)):
        spares["loss"] = 4 * vocab_size * cfg.hidden
    if _embedding_spares(cfg) and not (cfg.tie_weights and loss == "chunked"):
        spares["embedding"] = 4 * vocab_size * cfg.embed
    return spares


def _fp32_state(state: State) -> State:
    # Under CPU autocast the fused LSTM/GRU kernels return their final state in bf16. The state is carried
    # into the next truncated-BPTT window and saved in checkpoints, so keep it fp32 like the weights: its
    # dtype then never depends on the precision (an fp32 nn.LSTM refuses a bf16 state, e.g. when a bf16
    # run is resumed or evaluated in fp32). A no-op in fp32.
    return [tuple(t.float() for t in s) if isinstance(s, tuple) else s.float() for s in state]


class LanguageModel(nn.Module):
    def __init__(self, cfg: ModelCfg, vocab_size: int, *, loss: str = "full", loss_chunk: int = 0,
                 counts: Sequence[int] | None = None, checkpoint_time: int = 0, label_smoothing: float = 0.0):
        super().__init__()
        if cfg.tie_weights and cfg.embed != cfg.hidden:
            raise SeqfitError(f"--tie-weights needs --embed equal to --hidden (got {cfg.embed} and {cfg.hidden})")
        if cfg.bidirectional:
            raise SeqfitError("a language model cannot be bidirectional: it would see the tokens it predicts")
        self.vocab_size = vocab_size
        self.checkpoint_time = checkpoint_time  # exact activation checkpointing every k steps (0: off)
        self.embedding = (SpareGradEmbedding if _embedding_spares(cfg) else nn.Embedding)(vocab_size, cfg.embed)
        self.embed_dropout = cfg.embed_dropout  # whole words, one mask per batch (0: off)
        self.drop_in = make_dropout(cfg.dropout, cfg.locked_dropout)  # on the embeddings
        self.drop = make_dropout(cfg.dropout, cfg.locked_dropout)  # on the last layer's outputs
        self.rnn = RecurrentStack(cfg.cell, cfg.embed, cfg.hidden, cfg.layers, dropout=cfg.dropout,
                                  layer_norm=cfg.layer_norm, locked_dropout=cfg.locked_dropout,
                                  weight_drop=cfg.weight_drop)
        self.head = make_output_head(loss, cfg.hidden, vocab_size, counts=counts, chunk_tokens=loss_chunk,
                                     label_smoothing=label_smoothing,
                                     tied_embedding=self.embedding if cfg.tie_weights else None)
        self._init_weights(cfg)

    def _init_weights(self, cfg: ModelCfg) -> None:
        # Uniform(-0.1, 0.1) embeddings as in the classic word-language-model recipe (Zaremba et al. 2014).
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        if cfg.embeddings:
            with torch.no_grad():
                self.embedding.weight.copy_(load_embedding_matrix(cfg.embeddings, self.vocab_size, cfg.embed))
        if cfg.freeze_embeddings:
            self.embedding.weight.requires_grad_(False)

    def init_state(self, batch_size: int, device=None) -> State:
        return self.rnn.init_state(batch_size, device=device)

    def features(self, x: torch.Tensor, state: State | None = None, *, with_raw: bool = False):
        """x (B, T) ids -> features (B, T, H) before the output layer, and the carried state; ``with_raw``:
        (features, the last layer's outputs before dropout, state), for activation regularisation."""
        new_batch(self)  # a new batch: locked dropout draws its masks once, for every chunk of it
        emb = self.drop_in(embedding_dropout(self.embedding, x, self.embed_dropout, self.training))  # (B, T, E)
        raw, state = self.rnn(emb, state, checkpoint_time=self.checkpoint_time)  # (B, T, H)
        out = self.drop(raw)
        return (out, raw, _fp32_state(state)) if with_raw else (out, _fp32_state(state))

    def forward(self, x: torch.Tensor, state: State | None = None, *, with_raw: bool = False):
        """The same as features(): what a DistributedDataParallel wrapper calls. The output layer's loss
        (self.head.loss) is applied to the features outside, a chunk of rows at a time."""
        return self.features(x, state, with_raw=with_raw)

    def nll(self, x: torch.Tensor, y: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Summed negative log-likelihood (no label smoothing), for perplexity."""
        feats, state = self.features(x, state)
        return self.head.nll(feats.reshape(-1, feats.shape[-1]), y.reshape(-1)), state
