"""Frozen embeddings (--freeze-embeddings): no gradient, no optimizer state, weights unchanged by training."""

import numpy as np
import pytest
import torch

from seqfit.config import MemoryCfg, ModelCfg, RunCfg, TrainCfg
from seqfit.data.store import TokenStore
from seqfit.engine.session import Session
from seqfit.nn.optim import measured_state_bytes, optimizer_state_bytes

WIDTH = 16


def _cfg(optimizer: str, *, embeddings: str = "", tie: bool = False, weight_decay: float = 0.1) -> RunCfg:
    # weight decay on: decay (AdamW's decoupled one too) must not reach a frozen weight either
    momentum = 0.9 if optimizer == "sgd" else 0.0
    return RunCfg(model=ModelCfg(layers=1, hidden=WIDTH, embed=WIDTH, dropout=0.0, tie_weights=tie,
                                 embeddings=embeddings, freeze_embeddings=True),
                  train=TrainCfg(batch_size=4, bptt=8, optimizer=optimizer, lr=0.05, momentum=momentum,
                                 weight_decay=weight_decay, clip=0.25),
                  memory=MemoryCfg(device="cpu", loss="full"))


def _train_steps(s: Session, steps: int = 3) -> None:
    for i in range(steps):
        s.step(i)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw", "adafactor"])
def test_frozen_embedding_is_unchanged_and_has_no_optimizer_state(data_dir, optimizer):
    s = Session.build(_cfg(optimizer), data_dir)
    emb = s.model.embedding.weight
    before = emb.detach().clone()
    others = {n: p.detach().clone() for n, p in s.model.named_parameters() if p is not emb}
    _train_steps(s)

    assert not emb.requires_grad and emb.grad is None
    assert torch.equal(emb, before)
    assert all(p is not emb for group in s.optimizer.param_groups for p in group["params"])
    assert emb not in s.optimizer.state
    # everything else trained, and the state held is exactly that of the trainable parameters
    assert all(not torch.equal(p, others[n]) for n, p in s.model.named_parameters() if p is not emb)
    trainable = [tuple(p.shape) for p in s.model.parameters() if p.requires_grad]
    assert len(trainable) == len(others)
    momentum = s.cfg.train.momentum
    assert measured_state_bytes(s.optimizer) == optimizer_state_bytes(optimizer, trainable, momentum=momentum)
    every = [tuple(p.shape) for p in s.model.parameters()]
    assert measured_state_bytes(s.optimizer) < optimizer_state_bytes(optimizer, every, momentum=momentum)


def test_frozen_pretrained_matrix_stays_exactly_as_loaded(data_dir, tmp_path):
    vocab = len(TokenStore(data_dir).vocab)
    matrix = np.random.default_rng(0).standard_normal((vocab, WIDTH)).astype(np.float32)  # (V, E)
    path = tmp_path / "vectors.npy"
    np.save(path, matrix)
    s = Session.build(_cfg("adamw", embeddings=str(path)), data_dir)
    _train_steps(s)
    assert torch.equal(s.model.embedding.weight, torch.from_numpy(matrix))


def test_frozen_tied_embedding_freezes_the_output_layer_too(data_dir):
    # a tied head reads the embedding's weight: frozen input means a fixed output projection (bias still learns)
    s = Session.build(_cfg("adam", tie=True), data_dir)
    emb = s.model.embedding.weight
    before = emb.detach().clone()
    bias = s.model.head.bias.detach().clone()
    _train_steps(s)
    assert torch.equal(emb, before) and emb.grad is None and emb not in s.optimizer.state
    assert not torch.equal(s.model.head.bias, bias)
