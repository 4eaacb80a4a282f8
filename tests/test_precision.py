import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seqfit.errors import SeqfitError
from seqfit.nn.precision import Precision, make_precision, widen

from conftest import needs_cpu_bf16

CPU = torch.device("cpu")


@needs_cpu_bf16
def test_bf16_autocast_on_cpu_computes_in_bf16_and_keeps_fp32_params():
    prec = make_precision("bf16", CPU)
    lin = nn.Linear(8, 4)
    x = torch.randn(3, 8)
    with prec.autocast():
        y = lin(x)  # (3, 4)
        z = x @ x.T  # (3, 3)
    assert y.dtype == torch.bfloat16 and z.dtype == torch.bfloat16
    assert lin.weight.dtype == torch.float32
    assert lin(x).dtype == torch.float32  # outside the context: back to fp32


def test_fp32_autocast_is_a_no_op():
    prec = make_precision("fp32", CPU)
    with prec.autocast():
        assert (torch.randn(2, 2) @ torch.randn(2, 2)).dtype == torch.float32
    assert prec.dtype == torch.float32


def test_fp16_on_cpu_raises_with_a_hint():
    with pytest.raises(SeqfitError, match=r"^fp16 needs a CUDA device; use --precision bf16 on CPU$"):
        make_precision("fp16", CPU)


def test_bf16_without_cpu_kernels_is_refused_with_one_line(monkeypatch):
    import seqfit.nn.precision as precision

    monkeypatch.setattr(precision, "cpu_bf16_rnn_supported", lambda: False)
    with pytest.raises(SeqfitError, match=r"^this CPU has no bf16 recurrent kernels .*use --precision fp32$"):
        make_precision("bf16", CPU)


def test_unknown_precision_raises():
    with pytest.raises(SeqfitError, match="unknown precision"):
        make_precision("fp8", CPU)


def test_fp32_backward_and_step_equal_plain_torch():
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 2))
    ours = copy.deepcopy(ref)
    x, t = torch.randn(7, 6), torch.randint(0, 2, (7,))
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.1)
    opt_ours = torch.optim.SGD(ours.parameters(), lr=0.1)

    F.cross_entropy(ref(x), t).backward()
    opt_ref.step()

    prec = make_precision("fp32", CPU)
    with prec.autocast():
        loss = F.cross_entropy(ours(x), t)
    prec.backward(loss)
    prec.unscale_(opt_ours)
    assert prec.step(opt_ours) is True
    for a, b in zip(ref.parameters(), ours.parameters()):
        assert torch.equal(a.grad, b.grad) and torch.equal(a, b)


def _fp16_cpu() -> Precision:
    # make_precision refuses fp16 on CPU; the scaler logic itself is device-independent,
    # so test it with torch's CPU GradScaler
    return Precision("fp16", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=2))


def test_fp16_scaler_unscales_to_true_gradients_and_steps():
    torch.manual_seed(0)
    ref = nn.Linear(4, 3)
    ours = copy.deepcopy(ref)
    x = torch.randn(5, 4)
    ref(x).pow(2).mean().backward()

    prec = _fp16_cpu()
    opt = torch.optim.SGD(ours.parameters(), lr=0.1)
    prec.backward(ours(x).pow(2).mean())
    assert torch.allclose(ours.weight.grad, ref.weight.grad * 2.0**10)  # scaled before unscale_
    prec.unscale_(opt)
    assert torch.allclose(ours.weight.grad, ref.weight.grad)
    before = ours.weight.detach().clone()
    assert prec.step(opt) is True
    assert torch.allclose(ours.weight, before - 0.1 * ref.weight.grad)


def test_fp16_scaler_skips_step_on_inf_and_backs_off():
    lin = nn.Linear(4, 3)
    prec = _fp16_cpu()
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    prec.backward(lin(torch.randn(2, 4)).sum())
    lin.weight.grad[0, 0] = float("inf")
    before = lin.weight.detach().clone()
    assert prec.step(opt) is False
    assert torch.equal(lin.weight, before)
    assert prec.scaler.get_scale() == 2.0**9


def test_fp16_steps_a_list_of_optimizers_with_one_update():
    a, b = nn.Linear(3, 3), nn.Linear(3, 3)
    prec = _fp16_cpu()
    opts = [torch.optim.SGD(a.parameters(), lr=0.1), torch.optim.SGD(b.parameters(), lr=0.1)]
    for _ in range(2):  # growth_interval=2: the scale doubles after two good steps, not one per optimizer
        prec.backward(b(a(torch.randn(2, 3))).sum())
        prec.unscale_(opts)
        assert prec.step(opts) is True
    assert prec.scaler.get_scale() == 2.0**11


def test_state_dict_round_trip_restores_the_scaler():
    lin = nn.Linear(4, 3)
    prec = _fp16_cpu()
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    for poison in (False, True, False):  # one good step, one skipped (backs off), one good
        opt.zero_grad()
        prec.backward(lin(torch.randn(2, 4)).sum())
        if poison:
            lin.bias.grad[0] = float("nan")
        prec.step(opt)
    saved = prec.state_dict()
    fresh = _fp16_cpu()
    fresh.load_state_dict(saved)
    assert fresh.state_dict() == saved
    assert fresh.scaler.get_scale() == 2.0**9
    assert Precision("bf16", "cpu").state_dict() == {}
    Precision("bf16", "cpu").load_state_dict({})  # no-op
    with pytest.raises(SeqfitError, match="GradScaler"):
        _fp16_cpu().load_state_dict({})


def test_widen():
    h = torch.ones(3, dtype=torch.float16)
    assert widen(h).dtype == torch.float32 and torch.equal(widen(h), h.float())
    for dt in (torch.float32, torch.bfloat16, torch.int64):
        x = torch.ones(3, dtype=dt)
        assert widen(x) is x


class _TinyLM(nn.Module):
    def __init__(self, vocab: int = 50, width: int = 64):
        super().__init__()
        self.emb = nn.Embedding(vocab, width)
        self.rnn = nn.LSTM(width, width, batch_first=True)
        self.out = nn.Linear(width, vocab)

    def forward(self, x):  # x: (B, T) -> (B, T, V)
        h, _ = self.rnn(self.emb(x))  # (B, T, H)
        return self.out(h)


def _pattern_data(n_seq: int, seq_len: int, vocab: int, gen: torch.Generator) -> torch.Tensor:
    """A repeating cycle through the vocab with 10% of tokens replaced by noise: learnable, not trivial."""
    start = torch.randint(0, vocab, (n_seq, 1), generator=gen)
    seq = (start + torch.arange(seq_len + 1)) % vocab  # (N, T+1)
    noise = torch.rand(seq.shape, generator=gen) < 0.1
    return torch.where(noise, torch.randint(0, vocab, seq.shape, generator=gen), seq)


def _train(precision: str, steps: int = 100) -> float:
    gen = torch.Generator().manual_seed(0)
    train = _pattern_data(steps * 16, 24, 50, gen).view(steps, 16, 25)  # (steps, B, T+1)
    held = _pattern_data(64, 24, 50, gen)  # (64, T+1)
    torch.manual_seed(0)
    model = _TinyLM()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    prec = make_precision(precision, CPU)
    for batch in train:
        opt.zero_grad(set_to_none=True)
        with prec.autocast():
            logits = model(batch[:, :-1])  # (B, T, V)
            loss = F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())
        prec.backward(loss)
        prec.step(opt)
    with torch.no_grad():  # both runs are scored the same way: fp32 on held-out data
        return F.cross_entropy(model(held[:, :-1]).flatten(0, 1), held[:, 1:].flatten()).item()


@needs_cpu_bf16
def test_bf16_training_matches_fp32_within_2_percent():
    fp32, bf16 = _train("fp32"), _train("bf16")
    assert fp32 < 0.5 * torch.log(torch.tensor(50.0)).item()  # it learned the pattern
    assert abs(bf16 - fp32) / fp32 < 0.02, (fp32, bf16)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["bf16", "fp16"])
def test_cuda_mixed_precision_trains(name):
    dev = torch.device("cuda")
    prec = make_precision(name, dev)
    torch.manual_seed(0)
    model = nn.Linear(16, 4).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, t = torch.randn(32, 16, device=dev), torch.randint(0, 4, (32,), device=dev)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        with prec.autocast():
            logits = model(x)  # (32, 4)
            assert logits.dtype == prec.dtype
            loss = F.cross_entropy(logits.float(), t)
        prec.backward(loss)
        prec.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        prec.step(opt)
        losses.append(loss.item())
    assert model.weight.dtype == torch.float32
    assert losses[-1] < losses[0]
    if name == "fp16":
        assert set(prec.state_dict()) >= {"scale", "_growth_tracker"}
