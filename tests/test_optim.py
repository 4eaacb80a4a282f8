import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seqfit.errors import SeqfitError
from seqfit.nn.optim import (OPTIMIZERS, make_optimizer, make_optimizers, measured_state_bytes,
                                optimizer_state_bytes, split_sparse_params)


class _LM(nn.Module):
    """LSTM LM like the word_language_model one: tied embedding/decoder, 2 layers."""

    def __init__(self, vocab: int = 97, width: int = 24, layers: int = 2, sparse: bool = False, tie: bool = True):
        super().__init__()
        self.emb = nn.Embedding(vocab, width, sparse=sparse)
        self.rnn = nn.LSTM(width, width, num_layers=layers, batch_first=True)
        self.dec = nn.Linear(width, vocab)
        if tie:
            self.dec.weight = self.emb.weight

    def forward(self, x):  # x: (B, T) -> (B, T, V)
        h, _ = self.rnn(self.emb(x))  # (B, T, H)
        return self.dec(h)


def _one_step(model: nn.Module, opts) -> None:
    opts = opts if isinstance(opts, list) else [opts]
    x = torch.randint(0, model.emb.num_embeddings, (3, 8))  # (B, T+1)
    loss = F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
    loss.backward()
    for opt in opts:
        opt.step()


def _shapes(model: nn.Module) -> list[tuple[int, ...]]:
    return [tuple(p.shape) for p in model.parameters() if p.requires_grad]


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_each_optimizer_builds_and_steps(name):
    torch.manual_seed(0)
    model = _LM()
    before = copy.deepcopy(model.state_dict())
    opt = make_optimizer(name, model.parameters(), lr=1e-2, weight_decay=0.01)
    _one_step(model, opt)
    changed = [not torch.equal(before[k], v) for k, v in model.state_dict().items()]
    assert all(changed)


@pytest.mark.parametrize("name,momentum", [("sgd", 0.0), ("sgd", 0.9), ("adam", 0.0), ("adamw", 0.0),
                                           ("adafactor", 0.0)])
def test_analytic_state_bytes_equal_measured(name, momentum):
    torch.manual_seed(0)
    model = _LM()
    model.extra = nn.Parameter(torch.randn(2, 3, 5))  # a 3-D parameter: Adafactor factors the last two dims
    opt = make_optimizer(name, model.parameters(), lr=1e-3, momentum=momentum)
    _one_step(model, opt)
    model.extra.grad = torch.ones_like(model.extra)
    opt.step()
    measured = measured_state_bytes(opt)
    assert optimizer_state_bytes(name, _shapes(model), momentum=momentum) == measured
    if name == "sgd" and not momentum:
        assert measured == 0


@pytest.mark.parametrize("name", ["adam", "adafactor"])
def test_analytic_state_bytes_for_bf16_params(name):
    # state follows the parameter dtype; the 0-d `step` stays float32
    model = _LM().to(torch.bfloat16)
    opt = make_optimizer(name, model.parameters(), lr=1e-3)
    _one_step(model, opt)
    assert optimizer_state_bytes(name, _shapes(model), dtype_bytes=2) == measured_state_bytes(opt)


def test_frozen_parameter_gets_no_state():
    model = _LM(tie=False)
    model.emb.weight.requires_grad_(False)
    opt = make_optimizer("adam", model.parameters(), lr=1e-3)
    _one_step(model, opt)
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    assert id(model.emb.weight) not in held and model.emb.weight not in opt.state
    assert len(opt.state) == len(held)
    assert measured_state_bytes(opt) == optimizer_state_bytes("adam", _shapes(model))


def test_param_groups_are_filtered_and_empty_ones_dropped():
    model = _LM(tie=False)
    model.emb.weight.requires_grad_(False)
    groups = [{"params": [model.emb.weight], "lr": 5.0}, {"params": list(model.rnn.parameters())}]
    opt = make_optimizer("sgd", groups, lr=1.0)
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["lr"] == 1.0


def test_bad_names_and_options_raise():
    params = [nn.Parameter(torch.zeros(2))]
    with pytest.raises(SeqfitError, match="unknown optimizer"):
        make_optimizer("lion", params, lr=1.0)
    with pytest.raises(SeqfitError, match="momentum"):
        make_optimizer("adam", params, lr=1.0, momentum=0.9)
    with pytest.raises(SeqfitError, match="no trainable"):
        make_optimizer("sgd", [nn.Parameter(torch.zeros(2), requires_grad=False)], lr=1.0)
    with pytest.raises(SeqfitError, match="unknown optimizer"):
        optimizer_state_bytes("lion", [(2,)])


def _lstm_lm_650_shapes(vocab: int = 33278, h: int = 650, layers: int = 2) -> list[tuple[int, ...]]:
    shapes = [(vocab, h)]  # embedding, tied with the decoder weight
    for _ in range(layers):
        shapes += [(4 * h, h), (4 * h, h), (4 * h,), (4 * h,)]  # weight_ih, weight_hh, bias_ih, bias_hh
    return shapes + [(vocab,)]  # decoder bias


def test_adafactor_state_is_much_smaller_than_adams_for_a_650_unit_lstm():
    shapes = _lstm_lm_650_shapes()
    adam = optimizer_state_bytes("adam", shapes)
    ada = optimizer_state_bytes("adafactor", shapes)
    n = sum(torch.Size(s).numel() for s in shapes)
    assert adam == 2 * 4 * n + 4 * len(shapes)
    assert ada * 100 < adam


@pytest.mark.slow
def test_650_unit_lstm_state_bytes_measured():
    torch.manual_seed(0)
    model = _LM(vocab=33278, width=650)
    for name, momentum in [("sgd", 0.0), ("sgd", 0.9), ("adam", 0.0), ("adafactor", 0.0)]:
        for p in model.parameters():
            p.grad = torch.full_like(p, 1e-3)  # any finite gradient creates the full state
        opt = make_optimizer(name, model.parameters(), lr=1e-3, momentum=momentum)
        opt.step()
        assert measured_state_bytes(opt) == optimizer_state_bytes(name, _lstm_lm_650_shapes(), momentum=momentum)
        del opt


def test_split_sparse_params():
    model = _LM(sparse=True, tie=False)
    dense, sparse = split_sparse_params(model)
    assert [id(p) for p in sparse] == [id(model.emb.weight)]
    assert {id(p) for p in dense} == {id(p) for p in model.parameters()} - {id(model.emb.weight)}
    with pytest.raises(SeqfitError, match="tie"):
        split_sparse_params(_LM(sparse=True, tie=True))


def test_sparse_sgd_matches_dense_sgd():
    torch.manual_seed(0)
    dense_model = _LM(tie=False)
    sparse_model = _LM(sparse=True, tie=False)
    sparse_model.load_state_dict(dense_model.state_dict())
    ref = torch.optim.SGD(dense_model.parameters(), lr=0.5, momentum=0.9)
    opts = make_optimizers("sgd", sparse_model, lr=0.5, momentum=0.9, sparse_embeddings=True)
    assert len(opts) == 2
    for seed in range(3):
        for model, o in ((dense_model, [ref]), (sparse_model, opts)):
            torch.manual_seed(seed)
            for opt in o:
                opt.zero_grad()
            _one_step(model, o)
    assert sparse_model.emb.weight.grad.is_sparse
    for a, b in zip(dense_model.parameters(), sparse_model.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_sparse_adam_touches_only_seen_rows():
    torch.manual_seed(0)
    model = _LM(sparse=True, tie=False)
    opts = make_optimizers("adamw", model, lr=1e-2, weight_decay=0.1, sparse_embeddings=True)
    assert [type(o).__name__ for o in opts] == ["AdamW", "SparseAdam"]
    before = model.emb.weight.detach().clone()
    x = torch.tensor([[1, 2, 3, 4]])
    F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten()).backward()
    for opt in opts:
        opt.step()
    moved = (model.emb.weight != before).any(dim=1).nonzero().flatten().tolist()
    assert moved == [1, 2, 3]
    assert make_optimizers("adam", model, lr=1e-3)[0].__class__ is torch.optim.Adam  # flag off: one optimizer


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_takes_the_fused_kernel_and_tracks_the_plain_update(name):
    """The fused step reorders the same float arithmetic: after several steps the weights agree with
    torch's for-each implementation to float32 rounding, not bit for bit (tests/data/engine_reference.json
    was recorded with the fused step)."""
    torch.manual_seed(0)
    fused_model = _LM(tie=False)
    plain_model = copy.deepcopy(fused_model)
    fused = make_optimizer(name, fused_model.parameters(), lr=0.01, weight_decay=0.01)
    assert fused.defaults["fused"]
    cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
    plain = cls(plain_model.parameters(), lr=0.01, weight_decay=0.01, foreach=True)
    for step in range(5):
        for model, opt in ((fused_model, fused), (plain_model, plain)):
            torch.manual_seed(step)
            opt.zero_grad()
            _one_step(model, opt)
    for (key, a), b in zip(fused_model.state_dict().items(), plain_model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=key)
