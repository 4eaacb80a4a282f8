"""Spare gradients (nn/spare_grads.py): the last step's gradient memory reused by the kernels that make the next.

The references are the plain paths: nn.Embedding's backward, the chunked loss with a fresh gradient, and
training without spares (which tests/test_accumulation.py compares with plain PyTorch).
"""

import copy

import pytest
import torch
import torch.nn.functional as F

from seqfit.config import ModelCfg, RunCfg, merge
from seqfit.memory.estimate import DataInfo, estimate
from seqfit.memory.constants import default_constants
from seqfit.memory.plan import SAFETY_MARGIN, plan_for_budget
from seqfit.memory.plan_lm import candidates
from seqfit.memory.requested import requested_plan
from seqfit.memory.throughput import tokens_per_second
from seqfit.models.lm import LanguageModel, spare_grad_bytes
from seqfit.nn import spare_grads
from seqfit.models.heads import LinearHead
from seqfit.nn.embedding import SpareGradEmbedding

from test_accumulation import FP32, WindowTask, _windows


class _Owner(torch.nn.Module, spare_grads.SparesGradients):
    """Two parameters, one of which its kernel would write with take()."""

    def __init__(self):
        super().__init__()
        self.spared, self.other = torch.nn.Parameter(torch.ones(4, 3)), torch.nn.Parameter(torch.ones(4, 3))

    def spared_parameters(self):
        return [self.spared]


def test_hand_back_moves_only_the_named_gradients_and_take_returns_them_once():
    owner = _Owner()
    owner.spared.grad, owner.other.grad = torch.full((4, 3), 2.0), torch.full((4, 3), 3.0)
    kept = owner.spared.grad
    assert spare_grads.hand_back(torch.nn.Sequential(owner)) == 4 * 3 * 4  # found inside a wrapper
    assert owner.spared.grad is None and owner.other.grad is not None  # the other is the optimizer's as before
    assert spare_grads.spare(owner.spared) is kept
    assert spare_grads.take(owner.spared, (4, 3), torch.float32, torch.device("cpu")) is kept
    assert spare_grads.spare(owner.spared) is None  # taken once: the caller holds the only reference
    fresh = spare_grads.take(owner.spared, (4, 3), torch.float32, torch.device("cpu"))
    assert fresh is not kept and fresh.shape == (4, 3)
    copied = copy.deepcopy(owner)  # a copy's parameters are named by the copy
    copied.spared.grad = torch.ones(4, 3)
    assert spare_grads.hand_back(copied) == 4 * 3 * 4 and copied.spared.grad is None


def test_a_spare_of_another_shape_or_dtype_is_dropped_not_returned():
    owner = _Owner()
    p = owner.spared
    p.grad = torch.ones(4, 3)
    spare_grads.hand_back(owner)
    out = spare_grads.take(p, (5, 3), torch.float32, torch.device("cpu"))
    assert out.shape == (5, 3) and spare_grads.spare(p) is None
    p.grad = torch.ones(4, 3)
    spare_grads.hand_back(owner)
    assert spare_grads.take(p, (4, 3), torch.float64, torch.device("cpu")).dtype == torch.float64


@pytest.mark.parametrize("padding_idx", [None, 2])
def test_the_embedding_equals_nn_embedding_and_reuses_its_spare(padding_idx):
    torch.manual_seed(0)
    plain = torch.nn.Embedding(20, 6, padding_idx=padding_idx)
    spare = SpareGradEmbedding(20, 6, padding_idx=padding_idx)
    spare.load_state_dict(plain.state_dict())  # the same keys
    ids = torch.tensor([[1, 2, 2, 7], [7, 7, 0, 2]])  # repeats and the padding row
    up = torch.randn(2, 4, 6)
    for step in range(2):
        for module in (plain, spare):
            module.weight.grad = None
            (module(ids) * up).sum().backward()
        assert torch.equal(spare(ids), plain(ids))
        assert torch.allclose(spare.weight.grad, plain.weight.grad, rtol=0, atol=1e-6)
        if padding_idx is not None:
            assert not spare.weight.grad[padding_idx].any()
        if step == 0:
            first = spare.weight.grad.data_ptr()
            spare_grads.hand_back(spare)
    assert spare.weight.grad.data_ptr() == first  # the second backward wrote into the first's memory


def test_the_chunked_loss_writes_its_weight_gradient_into_the_spare():
    torch.manual_seed(0)
    head = LinearHead(8, 30, chunked=True, chunk_tokens=4)
    h = torch.randn(10, 8, requires_grad=True)
    t = torch.randint(0, 30, (10,))
    head.loss(h, t).backward()
    first, ptr = head.weight.grad.clone(), head.weight.grad.data_ptr()
    assert spare_grads.hand_back(head) == 30 * 8 * 4  # the weight's; the bias stays the optimizer's
    head.bias.grad = None
    head.loss(h, t).backward()
    assert head.weight.grad.data_ptr() == ptr and torch.equal(head.weight.grad, first)  # the same memory, zeroed
    ref_w = head.weight.detach().clone().requires_grad_()
    F.cross_entropy(h @ ref_w.t() + head.bias, t, reduction="sum").backward()
    assert torch.allclose(head.weight.grad, ref_w.grad, rtol=1e-5, atol=1e-6)
    tied = LinearHead(8, 30, chunked=True, tied_embedding=torch.nn.Embedding(30, 8))
    assert tied.spared_parameters() == [] and LinearHead(8, 30, chunked=False).spared_parameters() == []


def _lm(loss: str, tie: bool) -> LanguageModel:
    torch.manual_seed(0)
    cfg = ModelCfg(cell="lstm", layers=2, hidden=12, embed=12, dropout=0.0, tie_weights=tie)
    return LanguageModel(cfg, 40, loss=loss, loss_chunk=5)


@pytest.mark.parametrize("loss, tie", [("chunked", False), ("chunked", True), ("full", False)])
def test_training_with_spares_equals_training_without(loss, tie):
    from seqfit.engine.step import train_step

    base = _lm(loss, tie)
    runs = {}
    for spare in (False, True):
        model = copy.deepcopy(base)
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        windows = _windows(3)
        task = WindowTask(windows, accumulate=2)
        ptrs = []
        for i in range(len(windows)):
            train_step(task, model, i, precision=FP32, optimizer=opt, clip=0.1, spare_grads=spare)
            ptrs.append(model.embedding.weight.grad.data_ptr())
        runs[spare] = model
        if spare:  # the embedding's gradient lives in the same memory every step
            assert len(set(ptrs)) == 1
    for (name, p), q in zip(runs[True].named_parameters(), runs[False].parameters()):
        assert torch.equal(p, q), name
    assert not torch.equal(runs[True].embedding.weight, base.embedding.weight)


def test_the_model_and_the_planner_agree_on_which_gradients_are_spared():
    cfg = ModelCfg(cell="lstm", layers=1, hidden=16, embed=8)
    assert spare_grad_bytes(cfg, 100, "chunked") == {"loss": 4 * 100 * 16, "embedding": 4 * 100 * 8}
    assert spare_grad_bytes(cfg, 100, "full") == {"embedding": 4 * 100 * 8}
    tied = ModelCfg(cell="lstm", layers=1, hidden=16, embed=16, tie_weights=True)
    assert spare_grad_bytes(tied, 100, "chunked") == {"loss": 4 * 100 * 16}  # one weight: the loss takes it
    dropped = ModelCfg(cell="lstm", layers=1, hidden=16, embed=8, embed_dropout=0.1)
    assert spare_grad_bytes(dropped, 100, "full") == {}
    assert type(LanguageModel(dropped, 100)).__name__ and not isinstance(LanguageModel(dropped, 100).embedding,
                                                                          SpareGradEmbedding)
    assert isinstance(LanguageModel(cfg, 100).embedding, SpareGradEmbedding)


def _cfg(**memory) -> RunCfg:
    return merge(RunCfg(), {"model": {"cell": "lstm", "layers": 1, "hidden": 64, "embed": 64},
                            "train": {"batch_size": 8, "bptt": 20},
                            "memory": {"device": "cpu", "loss": "chunked", **memory}})


def test_the_estimate_counts_spares_held_through_the_forward():
    data = DataInfo(20_000)
    cfg = _cfg()
    plan = requested_plan(cfg, data, "cpu")
    assert plan["spare_grads"] is True
    assert requested_plan(_cfg(spare_grads=False), data, "cpu")["spare_grads"] is False
    assert requested_plan(cfg, data, "cuda")["spare_grads"] is False
    with_spares = estimate(cfg, data, plan)
    without = estimate(cfg, data, {**plan, "spare_grads": False})
    # the loss phase holds the embedding's spare beside what it held before; the loss's own spare is the memory
    # its weight gradient took there anyway
    extra = with_spares["phases"]["loss"] - without["phases"]["loss"]
    assert extra == spare_grad_bytes(cfg.model, data.vocab_size, "chunked")["embedding"]
    assert with_spares["phases"]["optimizer"] == without["phases"]["optimizer"]


def test_the_planner_prefers_spares_and_drops_them_when_only_that_fits():
    data = DataInfo(20_000)
    cfg = _cfg(loss_chunk=160)  # one chunk option: the plans differ by their spares alone
    plans = [p for p in candidates(cfg, data, "cpu") if p["micro_batch"] == 8 and p["checkpoint_time"] == 0]
    assert sorted(p["spare_grads"] for p in plans) == [False, True]
    spared = next(p for p in plans if p["spare_grads"])
    plain = next(p for p in plans if not p["spare_grads"])
    assert tokens_per_second(cfg.model, data.vocab_size, spared) > tokens_per_second(cfg.model, data.vocab_size, plain)
    consts = default_constants("cpu")  # estimate()'s, not this machine's calibration
    roomy = plan_for_budget(cfg, data, 4 * 2**30, consts, device="cpu")
    assert roomy.plan["spare_grads"] is True and roomy.cfg.memory.spare_grads is True
    need_plain, need_spared = estimate(cfg, data, plain)["peak"], estimate(cfg, data, spared)["peak"]
    assert need_plain < need_spared
    # a budget between the two: the spared plan no longer fits, the same plan without spares does
    usable = (need_plain + need_spared) // 2
    tight = plan_for_budget(cfg, data, int(usable / (1 - SAFETY_MARGIN)) + 1, consts, device="cpu")
    ranked = {(a["micro_batch"], a["checkpoint_time"], a["spare_grads"]): a for a in tight.alternatives}
    assert ranked[(8, 0, True)]["fits"] is False and ranked[(8, 0, False)]["fits"] is True
    assert tight.plan["predicted_peak_bytes"] <= usable
    assert tight.plan["predicted_tokens_per_s"] >= ranked[(8, 0, False)]["predicted_tokens_per_s"]
    assert tight.cfg.memory.spare_grads is tight.plan["spare_grads"]  # the run takes the plan's choice


def test_a_users_own_loop_spares_the_embedding_through_seqfit_nn():
    import seqfit.nn as snn

    torch.manual_seed(0)
    emb = snn.SpareGradEmbedding(50, 8)
    opt = torch.optim.SGD(emb.parameters(), lr=0.1)
    ptrs = []
    for _ in range(3):
        snn.hand_back_grads(emb)  # before zero_grad, which would free the gradient
        opt.zero_grad()
        emb(torch.randint(0, 50, (4, 5))).pow(2).sum().backward()
        opt.step()
        ptrs.append(emb.weight.grad.data_ptr())
    assert len(set(ptrs)) == 1
