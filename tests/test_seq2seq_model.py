"""The encoder-decoder against a plain PyTorch reference, and its memory switches against its plain path."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import needs_cpu_bf16

from seqfit.config import ModelCfg
from seqfit.models.heads import IGNORE_INDEX
from seqfit.models.seq2seq import Seq2Seq

EOS = 2


def _cfg(**kw) -> ModelCfg:
    base = dict(task="seq2seq", cell="lstm", hidden=12, embed=6, layers=2, dropout=0.0, attention="general",
                input_feed=True, bidirectional=False)
    return ModelCfg(**{**base, **kw})


def _batch(seed: int = 0, B: int = 4, V: int = 17):
    g = torch.Generator().manual_seed(seed)
    src_lengths = torch.tensor([7, 3, 5, 1][:B])
    tgt_lengths = torch.tensor([4, 6, 1, 3][:B])
    src = torch.randint(3, V, (B, int(src_lengths.max())), generator=g)
    src[torch.arange(src.shape[1])[None] >= src_lengths[:, None]] = 0
    tgt = torch.randint(3, V, (B, int(tgt_lengths.max())), generator=g)
    T = tgt.shape[1]
    tgt_in = torch.cat([torch.full((B, 1), EOS), tgt], 1)
    steps = torch.arange(T + 1)[None]
    tgt_out = torch.where(steps < tgt_lengths[:, None], torch.cat([tgt, tgt[:, :1]], 1), IGNORE_INDEX)
    tgt_out[torch.arange(B), tgt_lengths] = EOS
    return src, src_lengths, tgt_in, tgt_out


def _lstm(cell: str, inp: int, hidden: int, layer, bidirectional: bool):
    """A torch RNN of one layer run on seqfit's layer's own parameters (an independent kernel path: packed)."""
    ref = {"lstm": nn.LSTM, "gru": nn.GRU}[cell](inp, hidden, batch_first=True, bidirectional=bidirectional)
    for name, p in layer.named_parameters():
        setattr(ref, name, p)  # the same Parameter objects: gradients reach the model
    return ref


def reference_loss(model: Seq2Seq, cfg: ModelCfg, src, src_lengths, tgt_in, tgt_out) -> torch.Tensor:
    """Luong attention written out: packed encoder layers, a decoder stepped by hand, full logits."""
    dirs = 2 if cfg.bidirectional else 1
    x = model.src_embedding(src)
    states = []
    for layer in model.encoder.layers:
        ref = _lstm(cfg.cell, x.shape[-1], cfg.hidden // dirs, layer, cfg.bidirectional)
        packed = nn.utils.rnn.pack_padded_sequence(x, src_lengths, batch_first=True, enforce_sorted=False)
        out, s = ref(packed)
        x, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=src.shape[1])
        states.append(s)
    enc = x  # (B, S, H)
    mask = torch.arange(src.shape[1])[None] < src_lengths[:, None]

    def bridge(t):
        return torch.cat(list(t), -1)[None] if dirs == 2 else t

    state = [tuple(bridge(t) for t in s) if isinstance(s, tuple) else bridge(s) for s in states]
    decoders = [_lstm(cfg.cell, layer.input_size, cfg.hidden, layer, False) for layer in model.decoder.layers]
    att = model.attention
    B, T = tgt_in.shape
    feed = torch.zeros(B, cfg.hidden)
    emb = model.target_embedding(tgt_in)
    outs = []
    for t in range(T):
        h = torch.cat([emb[:, t], feed], -1)[:, None] if cfg.input_feed else emb[:, t:t + 1]
        for i, dec in enumerate(decoders):
            h, state[i] = dec(h, state[i])
        q = h[:, 0]  # (B, H)
        if cfg.attention == "dot":
            scores = torch.einsum("bh,bsh->bs", q, enc)
        elif cfg.attention == "general":
            scores = torch.einsum("bh,bsh->bs", q, enc @ att.key_proj.weight.T)
        else:
            hidden = torch.tanh(enc @ att.key_proj.weight.T + (q @ att.query_proj.weight.T + att.query_proj.bias)[:, None])
            scores = (hidden @ att.v.weight.T)[..., 0]
        weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), -1)
        context = torch.einsum("bs,bsh->bh", weights, enc)
        feed = torch.tanh(torch.cat([context, q], -1) @ model.combine.weight.T)
        outs.append(feed)
    feats = torch.stack(outs, 1)
    logits = feats @ model.head.output_weight().T + model.head.bias
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt_out.reshape(-1), ignore_index=IGNORE_INDEX,
                           reduction="sum")


def _loss(model, batch):
    src, src_lengths, tgt_in, tgt_out = batch
    feats = model(src, src_lengths, tgt_in)
    real = tgt_out != IGNORE_INDEX
    return model.head.loss(feats[real], tgt_out[real])


@pytest.mark.parametrize("cell,attention,input_feed,bidirectional", [
    ("lstm", "general", True, False), ("lstm", "dot", False, True), ("gru", "additive", True, True),
    ("lstm", "additive", False, False), ("gru", "general", False, False), ("lstm", "dot", True, True)])
def test_teacher_forced_loss_equals_reference(cell, attention, input_feed, bidirectional):
    torch.manual_seed(0)
    cfg = _cfg(cell=cell, attention=attention, input_feed=input_feed, bidirectional=bidirectional)
    model = Seq2Seq(cfg, 17, 17)
    batch = _batch()
    ours = _loss(model, batch)
    ref = reference_loss(model, cfg, *batch)
    assert abs(ours.item() - ref.item()) < 1e-4 * abs(ref.item())
    ours.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    reference_loss(model, cfg, *batch).backward()
    for name, p in model.named_parameters():
        assert torch.allclose(grads[name], p.grad, atol=1e-5, rtol=1e-4), name


def test_reference_catches_a_wrong_model():
    """The comparison can fail: the reference with another attention score disagrees with the model."""
    torch.manual_seed(0)
    cfg = _cfg()
    model = Seq2Seq(cfg, 17, 17)
    with torch.no_grad():  # sharp attention and outputs: the score function shows in the loss
        model.attention.key_proj.weight.mul_(20)
        model.combine.weight.mul_(5)
        model.head.weight.mul_(30)
    batch = _batch()
    ours = _loss(model, batch).item()
    assert reference_loss(model, cfg, *batch).item() == pytest.approx(ours, rel=1e-4)
    assert abs(reference_loss(model, _cfg(attention="dot"), *batch).item() - ours) > 1e-3 * ours  # 10x the tolerance


@pytest.mark.parametrize("input_feed,bidirectional", [(True, False), (False, True)])
def test_chunked_decoder_loss_equals_full(input_feed, bidirectional):
    torch.manual_seed(1)
    cfg = _cfg(input_feed=input_feed, bidirectional=bidirectional)
    full = Seq2Seq(cfg, 17, 17, loss="full")
    chunked = Seq2Seq(cfg, 17, 17, loss="chunked", loss_chunk=3)  # 3 rows a chunk: many chunks
    chunked.load_state_dict(full.state_dict())
    assert chunked.head.kind == "chunked"
    batch = _batch(2)
    a, b = _loss(full, batch), _loss(chunked, batch)
    assert torch.allclose(a, b, rtol=1e-5)
    a.backward()
    b.backward()
    for (name, p), q in zip(full.named_parameters(), chunked.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6, rtol=1e-4), name


@pytest.mark.parametrize("input_feed,bidirectional,cell,layers,dropout", [
    (True, False, "lstm", 1, 0.3), (False, True, "lstm", 2, 0.3), (True, True, "gru", 2, 0.3),
    (True, False, "lstm", 2, 0.0), (False, False, "gru", 2, 0.0)])
def test_checkpointed_gradients_equal_full_backprop(input_feed, bidirectional, cell, layers, dropout):
    """Exact checkpointing of encoder and decoder: the same loss and gradients, dropout masks replayed. (A
    unidirectional stack checkpointed in time chunks draws its between-layer dropout chunk by chunk: other
    masks than one whole-sequence call, so with dropout that case is compared at one layer.)"""
    torch.manual_seed(2)
    cfg = _cfg(input_feed=input_feed, bidirectional=bidirectional, cell=cell, layers=layers, dropout=dropout)
    model = Seq2Seq(cfg, 17, 17)
    batch = _batch(3)
    grads = []
    for k in (0, 2):
        model.checkpoint_time = k
        model.encoder.train()
        torch.manual_seed(5)  # the same dropout masks: checkpointing replays them in its recompute
        model.zero_grad()
        loss = _loss(model, batch)
        loss.backward()
        grads.append((loss.item(), [p.grad.clone() for p in model.parameters()]))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-6)
    for a, b in zip(grads[0][1], grads[1][1]):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)


def test_tied_and_shared_embeddings():
    cfg = _cfg(tie_weights=True, share_embeddings=True, embed=12)
    model = Seq2Seq(cfg, 17, 17)
    assert model.tgt_embedding is None
    assert model.head.output_weight() is model.src_embedding.weight
    names = [n for n, _ in model.named_parameters()]
    assert sum("embedding" in n for n in names) == 1 and "head.weight" not in names
    from seqfit.errors import SeqfitError
    with pytest.raises(SeqfitError, match="one vocabulary"):
        Seq2Seq(_cfg(share_embeddings=True), 17, 19)
    with pytest.raises(SeqfitError, match="even"):
        Seq2Seq(_cfg(bidirectional=True, hidden=11), 17, 17)


@needs_cpu_bf16
@pytest.mark.parametrize("input_feed", [True, False])
def test_bf16_autocast_close_to_fp32(input_feed):
    torch.manual_seed(3)
    cfg = _cfg(input_feed=input_feed, bidirectional=True)
    model = Seq2Seq(cfg, 17, 17, loss="chunked", loss_chunk=4)
    batch = _batch(4)
    fp32 = _loss(model, batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = _loss(model, batch)
    assert bf16.dtype == torch.float32 and abs(bf16.item() - fp32.item()) < 0.02 * fp32.item()
    bf16.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
