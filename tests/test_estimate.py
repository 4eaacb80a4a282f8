"""The estimator against independent references: real models' parameters, optimizer state, saved tensors."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from seqfit.config import RunCfg, merge
from seqfit.data.vocab import Vocab
from seqfit.memory.constants import Constants
from seqfit.memory.estimate import PARTS, DataInfo, chunk_len, estimate
from seqfit.memory.plan import requested_plan
from seqfit.models.build import build_model
from seqfit.nn.optim import make_optimizer, measured_state_bytes

V = 300


def cfg_of(model=None, train=None, memory=None) -> RunCfg:
    return merge(RunCfg(), {"model": {"layers": 2, "hidden": 32, "embed": 32, **(model or {})},
                            "train": {"batch_size": 4, "bptt": 10, **(train or {})},
                            "memory": {"device": "cpu", **(memory or {})}})


def vocab(n: int = V) -> Vocab:
    return Vocab([f"t{i}" for i in range(n)], [n - i for i in range(n)], "word")


def plan_of(cfg: RunCfg, data: DataInfo = DataInfo(V)) -> dict:
    return requested_plan(cfg, data, "cpu")


@pytest.mark.parametrize("model,memory", [
    ({"cell": "lstm"}, {"loss": "full"}),
    ({"cell": "gru", "layer_norm": True}, {"loss": "chunked"}),
    ({"cell": "rnn", "layers": 3, "embed": 16}, {"loss": "full"}),
    ({"cell": "lstm", "tie_weights": True}, {"loss": "full"}),
    ({"cell": "lstm", "freeze_embeddings": True}, {"loss": "full"}),
    ({"cell": "lstm", "hidden": 64}, {"loss": "adaptive"}),
])
def test_weights_and_gradients_match_the_built_model(model, memory):
    cfg = cfg_of(model, memory=memory)
    v = vocab()
    data = DataInfo(V, counts=tuple(v.counts))
    est = estimate(cfg, data, plan_of(cfg, data))
    net = build_model(cfg, v, loss_kind=memory["loss"])
    params = list(net.parameters())
    assert est["sizes"]["parameters"] == sum(p.numel() for p in params)
    assert est["sizes"]["weights"] == 4 * sum(p.numel() for p in params)
    assert est["sizes"]["gradients"] == 4 * sum(p.numel() for p in params if p.requires_grad)


@pytest.mark.parametrize("name,momentum", [("adam", 0.0), ("adamw", 0.0), ("sgd", 0.9), ("adafactor", 0.0),
                                           ("sgd", 0.0)])
def test_optimizer_state_matches_a_real_step(name, momentum):
    cfg = cfg_of({"cell": "gru"}, {"optimizer": name, "momentum": momentum, "lr": 0.01})
    est = estimate(cfg, DataInfo(V), plan_of(cfg))
    net = build_model(cfg, vocab(), loss_kind="full")
    opt = make_optimizer(name, net.parameters(), lr=0.01, momentum=momentum)
    x = torch.randint(0, V, (4, 10))
    feats, _ = net(x)
    net.head.loss(feats.reshape(-1, feats.shape[-1]), x.reshape(-1)).backward()
    opt.step()
    assert est["sizes"]["optimizer_state"] == measured_state_bytes(opt)


@pytest.mark.parametrize("memory,train", [
    ({}, {}),
    ({"accumulate": 4}, {"batch_size": 2}),
    ({"checkpoint_time": 3}, {"bptt": 30}),
    ({"checkpoint_time": -1, "precision": "bf16"}, {"bptt": 50}),
    ({"loss": "chunked", "loss_chunk": 16}, {"optimizer": "adam"}),
    ({"loss": "adaptive"}, {"optimizer": "adafactor"}),
])
def test_parts_add_up_to_the_peak(memory, train):
    cfg = cfg_of({"cell": "lstm", "hidden": 64}, train, memory)
    est = estimate(cfg, DataInfo(V), plan_of(cfg))
    assert set(est["parts"]) == set(PARTS)
    assert all(v >= 0 for v in est["parts"].values())
    assert sum(est["parts"].values()) == est["peak"]
    assert est["peak"] == max(est["phases"].values())
    assert est["phase"] in est["phases"]


def test_full_loss_peak_is_three_times_the_log_softmax_it_saves():
    """Backward of F.cross_entropy holds the saved (N, V) log-softmax, its gradient and the logits' gradient."""
    big = 20_000
    cfg = cfg_of({"cell": "rnn", "dropout": 0.0}, {"batch_size": 4, "bptt": 10}, {"loss": "full"})
    net = build_model(cfg, vocab(big), loss_kind="full")
    feats = torch.randn(40, 32, requires_grad=True)
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net.head.loss(feats, torch.randint(0, big, (40,)))
    log_softmax = max(saved.values())
    assert log_softmax == 40 * big * 4
    est = estimate(cfg, DataInfo(big), plan_of(cfg, DataInfo(big)))
    assert est["phase"] == "loss backward"
    assert est["parts"]["output_loss"] == 3 * log_softmax
    chunked = estimate(cfg, DataInfo(big), {**plan_of(cfg, DataInfo(big)), "loss": "chunked", "loss_chunk": 8})
    assert chunked["peak"] < est["peak"]
    assert chunked["phases"]["loss backward"] < est["phases"]["loss backward"] - log_softmax


def test_memory_grows_with_batch_and_shrinks_with_checkpointing_and_chunking():
    big_vocab = DataInfo(50_000)
    base = cfg_of({"cell": "lstm", "hidden": 256, "embed": 256}, {"batch_size": 16, "bptt": 200})
    peak = lambda cfg, **plan: estimate(cfg, big_vocab, {**plan_of(cfg, big_vocab), **plan})["peak"]  # noqa: E731
    p16 = peak(base)
    p32 = peak(dataclasses.replace(base, train=dataclasses.replace(base.train, batch_size=32)))
    assert p32 > p16
    assert peak(base, checkpoint_time=14) < p16
    assert peak(base, loss="chunked", loss_chunk=512) < peak(base, loss="full")


def test_accumulation_keeps_gradients_through_later_micro_batches():
    cfg = cfg_of({"cell": "lstm", "hidden": 128, "embed": 128}, {"batch_size": 8}, {"accumulate": 2})
    est = estimate(cfg, DataInfo(V), plan_of(cfg))
    one = estimate(cfg, DataInfo(V), {**plan_of(cfg), "accumulate": 1})
    assert est["peak"] >= one["peak"]
    assert est["parts"]["gradients"] > 0


def test_calibrated_constants_change_the_activation_part_only():
    cfg = cfg_of({"cell": "gru", "hidden": 128}, {"batch_size": 16, "bptt": 50})
    base = Constants()
    doubled = dataclasses.replace(base, baseline=2 * base.baseline)
    a, b = estimate(cfg, DataInfo(V), plan_of(cfg), base), estimate(cfg, DataInfo(V), plan_of(cfg), doubled)
    assert b["peak"] - a["peak"] == base.baseline
    assert a["sizes"] == b["sizes"]


def test_chunk_len_matches_the_time_chunker():
    from seqfit.nn.timechunk import resolve_chunk

    for k in (-1, 1, 7, 35, 100):
        for total in (1, 10, 35, 99):
            assert chunk_len(k, total) == resolve_chunk(k, total)
    assert chunk_len(0, 35) == 35


@pytest.mark.parametrize("vocab,tokens,bf16", [(100_000, 3200, False), (18_000, 12_800, False),
                                              (250_000, 12_800, True), (10_000, 700, False), (50_000, 4000, True)])
def test_default_chunk_is_the_runtime_chunk(monkeypatch, vocab, tokens, bf16):
    from test_chunked_loss import spy_chunk

    from seqfit.memory.estimate import _default_chunk

    assert _default_chunk(vocab, tokens, bf16) == spy_chunk(monkeypatch, tokens, vocab, bf16)
