"""Gradient accumulation: N micro-batches of B streams equal one batch of N * B streams.

The reference is plain PyTorch on the whole batch (full logits, F.cross_entropy averaged over every
target token, one backward, SGD), independent of the engine's splitting and normalisation.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seqfit.config import MemoryCfg, ModelCfg, RunCfg, TrainCfg
from seqfit.data.store import TokenStore

from conftest import needs_cpu_bf16
from seqfit.engine.distributed import Dist
from seqfit.engine.lm import LanguageModelTask
from seqfit.engine.step import train_step
from seqfit.memory.estimate import DataInfo
from seqfit.memory.plan import requested_plan
from seqfit.models.lm import LanguageModel
from seqfit.nn.precision import make_precision

VOCAB, WIDTH, STREAMS, BPTT = 40, 12, 6, 7
LR = 0.5
FP32 = make_precision("fp32", "cpu")


def _model(loss: str, *, tie: bool = True, checkpoint_time: int = 0) -> LanguageModel:
    torch.manual_seed(0)
    cfg = ModelCfg(cell="lstm", layers=2, hidden=WIDTH, embed=WIDTH, dropout=0.0, tie_weights=tie)
    # loss_chunk 5 splits the 2-stream micro-batches (14 tokens) into several chunks
    return LanguageModel(cfg, VOCAB, loss=loss, loss_chunk=5, checkpoint_time=checkpoint_time)


def _windows(steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive truncated-BPTT windows (x, y) of STREAMS streams, as StreamBatches lays them out."""
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, VOCAB, (STREAMS, steps * BPTT + 1), generator=gen)  # (B, L)
    return [(tokens[:, i * BPTT:(i + 1) * BPTT], tokens[:, i * BPTT + 1:(i + 1) * BPTT + 1]) for i in range(steps)]


class WindowTask(LanguageModelTask):
    """The language-model task over given (x, y) windows instead of a store."""

    def __init__(self, windows, accumulate: int, state=None):
        self.windows, self.device = windows, torch.device("cpu")
        self.cfg = RunCfg(train=TrainCfg(state_reset=0.0))  # plain truncated BPTT, as the reference
        self.plan = {"accumulate": accumulate, "batch_size": STREAMS}
        self.state, self._new_states, self.steps_done = state, [], 0
        self.dist = Dist()

    def micro_batches(self, group: int):
        return self.split_streams(*self.windows[group])


def _train(model: LanguageModel, accumulate: int, clip: float, steps: int) -> tuple[list[float], list]:
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    windows = _windows(steps)
    task = WindowTask(windows, accumulate)
    losses = []
    for i, (x, y) in enumerate(windows):
        stats = train_step(task, model, i, precision=FP32, optimizer=opt, clip=clip)
        assert stats["tokens"] == y.numel()
        losses.append(stats["loss_sum"] / stats["tokens"])
    return losses, task.state


def _reference(model: LanguageModel, clip: float, steps: int) -> tuple[list[float], list]:
    """The whole batch at once in plain PyTorch: mean cross-entropy on full logits."""
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    state = model.init_state(STREAMS)
    weight = model.head.output_weight  # the tied embedding or the head's own (V, H)
    losses = []
    for x, y in _windows(steps):
        opt.zero_grad()
        feats, state = model.features(x, state)  # (B, T, H)
        logits = F.linear(feats, weight(), model.head.bias)  # (B, T, V)
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1))
        loss.backward()
        if clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        losses.append(loss.item())
        state = [tuple(t.detach() for t in s) for s in state]
    return losses, state


def _assert_close_params(a: nn.Module, b: nn.Module) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, rtol=1e-6, atol=1e-7), (name, (p - q).abs().max().item())


def _assert_close_states(a: list, b: list) -> None:
    for la, lb in zip(a, b):
        for ta, tb in zip(la, lb):
            assert ta.shape == tb.shape == (1, STREAMS, WIDTH)
            assert torch.allclose(ta, tb, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("loss", ["full", "chunked"])
@pytest.mark.parametrize("clip", [0.0, 0.1])
def test_accumulated_micro_batches_equal_one_large_batch(loss, clip):
    """Two truncated-BPTT windows, carrying the state: accumulate 3 and 1 both equal the reference."""
    ref_model = _model(loss)
    one, three = copy.deepcopy(ref_model), copy.deepcopy(ref_model)
    ref_losses, ref_state = _reference(ref_model, clip, steps=2)
    losses_1, state_1 = _train(one, accumulate=1, clip=clip, steps=2)
    losses_3, state_3 = _train(three, accumulate=3, clip=clip, steps=2)
    _assert_close_params(ref_model, one)
    _assert_close_params(ref_model, three)
    assert losses_3 == pytest.approx(ref_losses, rel=1e-6) and losses_1 == pytest.approx(ref_losses, rel=1e-6)
    _assert_close_states(ref_state, state_3)  # micro-batch states are joined back in stream order
    _assert_close_states(ref_state, state_1)
    assert any(not torch.equal(p, q) for p, q in zip(ref_model.parameters(), _model(loss).parameters()))


def test_accumulation_with_time_checkpointing_equals_one_batch():
    # exact activation checkpointing over time (another "chunked" mode) inside each micro-batch
    base = _model("chunked", tie=False)
    plain, ckpt = copy.deepcopy(base), copy.deepcopy(base)
    ckpt.checkpoint_time = 3
    _train(plain, accumulate=1, clip=0.0, steps=2)
    _train(ckpt, accumulate=2, clip=0.0, steps=2)
    _assert_close_params(plain, ckpt)


def test_accumulation_needs_a_divisible_batch():
    model = _model("full")
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    x, y = _windows(1)[0]
    with pytest.raises(ValueError, match="does not split into 4 micro-batches"):
        train_step(WindowTask([(x, y)], 4), model, 0, precision=FP32, optimizer=opt, clip=0.0)


def test_effective_batch_sets_accumulate(data_dir):
    data = DataInfo(len(TokenStore(data_dir).vocab))
    cfg = RunCfg(train=TrainCfg(batch_size=4), memory=MemoryCfg(effective_batch=12, device="cpu"))
    plan = requested_plan(cfg, data, "cpu")
    assert (plan["micro_batch"], plan["accumulate"], plan["batch_size"]) == (4, 3, 12)
    plan = requested_plan(RunCfg(train=TrainCfg(batch_size=4), memory=MemoryCfg(accumulate=2)), data, "cpu")
    assert (plan["micro_batch"], plan["accumulate"], plan["batch_size"]) == (4, 2, 8)
    # not a multiple of the micro-batch: the largest divisor under it (the default --batch-size never blocks)
    plan = requested_plan(RunCfg(train=TrainCfg(batch_size=4), memory=MemoryCfg(effective_batch=10)), data, "cpu")
    assert (plan["micro_batch"], plan["accumulate"], plan["batch_size"]) == (2, 5, 10)
    plan = requested_plan(RunCfg(memory=MemoryCfg(effective_batch=256)), data, "cpu")  # default --batch-size 20
    assert (plan["micro_batch"], plan["accumulate"], plan["batch_size"]) == (16, 16, 256)


@needs_cpu_bf16
def test_bf16_accumulation_is_close_to_one_batch_and_carries_an_fp32_state():
    bf16 = make_precision("bf16", "cpu")
    base = _model("full")
    one, two = copy.deepcopy(base), copy.deepcopy(base)
    x, y = _windows(1)[0]
    results, tasks = [], []
    for model, accumulate in ((one, 1), (two, 2)):
        opt = torch.optim.SGD(model.parameters(), lr=LR)
        tasks.append(WindowTask([(x, y)], accumulate))
        results.append(train_step(tasks[-1], model, 0, precision=bf16, optimizer=opt, clip=0.0))
    assert results[1]["loss_sum"] == pytest.approx(results[0]["loss_sum"], rel=1e-2)
    for p, q in zip(one.parameters(), two.parameters()):
        assert p.dtype == torch.float32 and torch.allclose(p, q, rtol=1e-2, atol=1e-3)
    # the carried state stays fp32 under autocast, so an fp32 step (e.g. a resumed run) can take it
    assert all(t.dtype == torch.float32 for layer in tasks[1].state for t in layer)
    opt = torch.optim.SGD(two.parameters(), lr=LR)
    train_step(tasks[1], two, 0, precision=FP32, optimizer=opt, clip=0.0)
