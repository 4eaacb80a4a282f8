"""Output heads: each against its independent reference (F.cross_entropy, AdaptiveLogSoftmaxWithLoss)."""

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from seqfit.errors import SeqfitError
from seqfit.models.heads import adaptive_cutoffs, choose_loss_kind, make_output_head

H, V, N = 64, 300, 40


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def batch(seed: int = 0, pad: bool = True):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(N, H, generator=g, requires_grad=True)
    targets = torch.randint(0, V, (N,), generator=g)
    if pad:
        targets[-6:] = -100
    return features, targets


@pytest.mark.parametrize("kind", ["full", "chunked"])
def test_linear_heads_match_cross_entropy(kind):
    torch.manual_seed(0)
    head = make_output_head(kind, H, V, chunk_tokens=7, label_smoothing=0.1)
    features, targets = batch()
    logits = F.linear(features, head.weight, head.bias)
    ref = F.cross_entropy(logits, targets, reduction="sum", label_smoothing=0.1)
    ref_nll = F.cross_entropy(logits, targets, reduction="sum")
    got = head.loss(features, targets)
    assert got.dtype == torch.float32 and rel(got, ref) < 1e-5
    assert rel(head.nll(features, targets), ref_nll) < 1e-5
    ref_grads = torch.autograd.grad(ref, [features, head.weight, head.bias])
    got_grads = torch.autograd.grad(got, [features, head.weight, head.bias])
    for a, b in zip(got_grads, ref_grads):
        assert rel(a, b) < 1e-5


def test_full_and_chunked_checkpoints_interchange():
    torch.manual_seed(0)
    full = make_output_head("full", H, V)
    chunked = make_output_head("chunked", H, V, chunk_tokens=8)
    assert set(full.state_dict()) == set(chunked.state_dict()) == {"weight", "bias"}
    assert full.state_dict()["weight"].shape == (V, H) and full.state_dict()["bias"].shape == (V,)
    chunked.load_state_dict(full.state_dict())
    features, targets = batch()
    assert rel(chunked.loss(features, targets), full.loss(features, targets)) < 1e-5


class TinyLM(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.embedding = nn.Embedding(V, H)
        self.head = make_output_head(kind, H, V, tied_embedding=self.embedding, chunk_tokens=5)

    def forward(self, ids, targets):
        return self.head.loss(torch.tanh(self.embedding(ids)), targets)


@pytest.mark.parametrize("kind", ["full", "chunked"])
def test_tied_head_shares_weight_once_and_accumulates_gradient(kind, tmp_path):
    torch.manual_seed(0)
    model = TinyLM(kind)
    assert set(model.state_dict()) == {"embedding.weight", "head.bias"}
    assert len(list(model.parameters())) == 2
    path = tmp_path / "model.safetensors"
    save_file(model.state_dict(), str(path))  # refuses shared tensors, so this proves there are none
    other = TinyLM(kind)
    other.load_state_dict(load_file(str(path)))
    assert torch.equal(other.head.output_weight(), model.embedding.weight)

    ids, targets = torch.randint(0, V, (N,)), batch()[1]
    model(ids, targets).backward()
    emb = model.embedding.weight.detach().clone().requires_grad_()
    ref = F.cross_entropy(F.linear(torch.tanh(emb[ids]), emb, model.head.bias.detach()), targets, reduction="sum")
    ref.backward()
    assert rel(model.embedding.weight.grad, emb.grad) < 1e-5  # lookup + output gradients, summed


def test_tied_head_shape_mismatch_and_adaptive_tie_raise():
    with pytest.raises(SeqfitError, match="tied head"):
        make_output_head("chunked", H, V, tied_embedding=nn.Embedding(V, H + 1))
    with pytest.raises(SeqfitError, match="cannot be tied"):
        make_output_head("adaptive", H, V, tied_embedding=nn.Embedding(V, H))
    with pytest.raises(SeqfitError, match="label smoothing"):
        make_output_head("adaptive", H, V, label_smoothing=0.1)
    with pytest.raises(SeqfitError, match="unknown output head"):
        make_output_head("sampled", H, V)


def zipf_counts(v: int) -> list[int]:
    return [0, 50, 900] + [int(100_000 / (i + 1)) + 1 for i in range(v - 3)]  # pad, unk, eos, then by frequency


def test_adaptive_head_matches_module_output():
    torch.manual_seed(0)
    head = make_output_head("adaptive", H, V, counts=zipf_counts(V))
    features, targets = batch(pad=False)
    module_out = head.adaptive(features, targets)
    assert rel(head.loss(features, targets), module_out.loss * N) < 1e-5
    assert rel(head.nll(features, targets), module_out.loss * N) < 1e-5
    # With padding: the same as the module on the kept rows only.
    features, targets = batch(seed=1)
    keep = targets != -100
    ref = head.adaptive(features[keep], targets[keep]).loss * int(keep.sum())
    got = head.loss(features, targets)
    assert rel(got, ref) < 1e-5
    got.backward()
    assert features.grad[~keep].abs().max() == 0


def test_log_probs_normalise_and_agree_across_heads():
    torch.manual_seed(0)
    full = make_output_head("full", H, V)
    chunked = make_output_head("chunked", H, V, chunk_tokens=3)
    chunked.load_state_dict(full.state_dict())
    adaptive = make_output_head("adaptive", H, V, counts=zipf_counts(V))
    features = torch.randn(7, H)
    for head in (full, chunked, adaptive):
        lp = head.log_probs(features)
        assert lp.shape == (7, V) and lp.dtype == torch.float32
        assert torch.allclose(lp.exp().sum(1), torch.ones(7), atol=1e-5)
    assert rel(chunked.log_probs(features), full.log_probs(features)) < 1e-5
    assert rel(adaptive.log_probs(features), adaptive.adaptive.log_prob(features)) < 1e-6
    # The loss is the negative log-probability of the targets, for every head.
    targets = torch.randint(0, V, (7,))
    for head in (full, chunked, adaptive):
        picked = head.log_probs(features).gather(1, targets[:, None]).sum()
        assert rel(head.nll(features, targets), -picked) < 1e-5


def test_bf16_autocast_heads_close_to_fp32():
    torch.manual_seed(0)
    features, targets = batch()
    for kind in ("full", "chunked", "adaptive"):
        head = make_output_head(kind, H, V, counts=zipf_counts(V), chunk_tokens=8)
        ref = head.loss(features, targets)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = head.loss(features, targets)
        assert got.dtype == torch.float32 and rel(got, ref) < 2e-2, kind
        got.backward()


def test_adaptive_cutoffs_follow_coverage():
    counts = zipf_counts(50_000)
    cutoffs = adaptive_cutoffs(counts, coverage=(0.8, 0.95))
    total = sum(counts)
    assert cutoffs == sorted(set(cutoffs)) and all(0 < c < len(counts) for c in cutoffs)
    for c, p in zip(cutoffs, (0.8, 0.95)):
        assert sum(counts[:c]) >= p * total  # the head (and each tail) reaches its coverage point
        assert sum(counts[: c - 8]) < p * total  # ... and not much earlier (rounded up to 8)
    assert adaptive_cutoffs([5, 3, 1]) == [1]  # tiny vocabulary still gets one valid cutoff
    nn.AdaptiveLogSoftmaxWithLoss(4, 3, adaptive_cutoffs([5, 3, 1]))  # which the module accepts
    with pytest.raises(SeqfitError):
        adaptive_cutoffs([0, 0, 0])


def test_choose_loss_kind():
    assert choose_loss_kind(5_000, 20 * 35, None) == "full"  # 14 MB of logits
    assert choose_loss_kind(5_000, 64 * 400, None) == "chunked"  # 512 MB of logits
    assert choose_loss_kind(5_000, 20 * 35, 64 * 2**30) == "full"
    assert choose_loss_kind(5_000, 20 * 35, 32 * 2**20) == "chunked"  # 42 MB peak vs a 32 MiB budget
    assert choose_loss_kind(9_999, 64 * 200, 2**40) == "full"  # memory to spare, small vocabulary: full
    for vocab in (10_000, 50_000, 250_000):  # from 10k words up chunked is faster too, whatever the memory
        assert choose_loss_kind(vocab, 20 * 35, None) == choose_loss_kind(vocab, 20 * 35, 2**40) == "chunked"
    with pytest.raises(SeqfitError):
        choose_loss_kind(0, 10, None)


def test_adaptive_tails_never_project_to_zero_dims():
    for hidden in (2, 16, 64, 512):
        head = make_output_head("adaptive", hidden, V, counts=zipf_counts(V))
        assert all(tail[0].out_features >= 1 for tail in head.adaptive.tail)
        assert 0 < head.adaptive.cutoffs[0] < V
