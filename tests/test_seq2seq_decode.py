"""Decoding the encoder-decoder (engine/decode.py): beam 1 is greedy, a batch decodes as its sentences alone,
beam search finds the brute-force best of a model whose distributions are known, lengths, padding, modes."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from seqfit.config import ModelCfg
from seqfit.engine.decode import beam_search, greedy_decode, max_lengths
from seqfit.errors import SeqfitError
from seqfit.models.seq2seq import Seq2Seq
from seqfit.nn.precision import make_precision

PAD, UNK, EOS = 0, 1, 2  # seqfit.data.vocab's ids
SRC_V, TGT_V = 20, 15

CONFIGS = {  # the three attention kinds, input feeding on and off, one and two encoder directions, three cells
    "lstm-general-feed": dict(cell="lstm", attention="general", input_feed=True, bidirectional=False),
    "lstm-dot-bidir": dict(cell="lstm", attention="dot", input_feed=False, bidirectional=True),
    "lstm-additive-feed-bidir": dict(cell="lstm", attention="additive", input_feed=True, bidirectional=True),
    "gru-additive": dict(cell="gru", attention="additive", input_feed=False, bidirectional=False),
    "gru-dot-feed-bidir": dict(cell="gru", attention="dot", input_feed=True, bidirectional=True),
    "rnn-general-feed": dict(cell="rnn", attention="general", input_feed=True, bidirectional=False),
}


def make_model(name: str, seed: int = 0, dropout: float = 0.0) -> Seq2Seq:
    torch.manual_seed(seed)
    cfg = ModelCfg(task="seq2seq", hidden=16, embed=8, layers=2, dropout=dropout, **CONFIGS[name])
    model = Seq2Seq(cfg, SRC_V, TGT_V)
    with torch.no_grad():
        model.head.weight.mul_(5)  # peaked distributions: decodes of varied lengths, far from ties
    return model.eval()


def make_batch(seed: int = 0, batch: int = 6, longest: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded sources (B, S) whose padding holds junk ids: the encoder must not read it."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, longest + 1, (batch,), generator=g)
    lengths[0] = longest
    src = torch.randint(3, SRC_V, (batch, longest), generator=g)  # (B, S)
    return src, lengths


def alone(src: torch.Tensor, lengths: torch.Tensor):
    """Each sentence as its own batch of one, cut to its length (no padding at all)."""
    return [(src[i:i + 1, :n], lengths[i:i + 1]) for i, n in enumerate(lengths.tolist())]


@pytest.mark.parametrize("name", CONFIGS)
def test_beam_one_is_greedy(name):
    model = make_model(name)
    src, lengths = make_batch()
    greedy = greedy_decode(model, src, lengths, eos=EOS)
    assert len({len(h) for h in greedy}) > 1 or any(greedy)  # not every decode empty: the test means something
    for alpha in (0.0, 1.0):
        assert beam_search(model, src, lengths, eos=EOS, beam=1, length_penalty=alpha) == greedy
    # the same with a length floor and a short ceiling
    short = dict(min_len=2, max_len_ratio=0.5, max_len_extra=2)
    assert (beam_search(model, src, lengths, eos=EOS, beam=1, **short)
            == greedy_decode(model, src, lengths, eos=EOS, **short))


@pytest.mark.parametrize("name", CONFIGS)
def test_batch_decodes_as_sentences_alone(name):
    model = make_model(name, seed=1)
    src, lengths = make_batch(seed=1)
    greedy = greedy_decode(model, src, lengths, eos=EOS)
    nbest = beam_search(model, src, lengths, eos=EOS, beam=4, n_best=2, length_penalty=1.0)
    assert all(len(hs) == 2 and hs[0] != hs[1] for hs in nbest)
    for i, (s, n) in enumerate(alone(src, lengths)):
        assert greedy_decode(model, s, n, eos=EOS) == [greedy[i]]
        assert beam_search(model, s, n, eos=EOS, beam=4, n_best=2, length_penalty=1.0) == [nbest[i]]


@pytest.mark.parametrize("name", ["lstm-general-feed", "gru-additive"])
def test_max_length_respected_and_pad_never_produced(name):
    model = make_model(name, seed=2)
    with torch.no_grad():  # <eos> never likely, padding always the likeliest: both must be overridden
        model.head.bias[EOS] = -1e4
        model.head.bias[PAD] = 1e4
    src, lengths = make_batch(seed=2)
    limits = max_lengths(lengths, 1.5, 2)
    assert limits == [int(1.5 * n) + 2 for n in lengths.tolist()]
    decodes = [greedy_decode(model, src, lengths, eos=EOS, max_len_ratio=1.5, max_len_extra=2),
               beam_search(model, src, lengths, eos=EOS, beam=3, max_len_ratio=1.5, max_len_extra=2)]
    for hyps in decodes:
        assert [len(h) for h in hyps] == limits  # no <eos> to end them: every row runs to its limit
        assert all(PAD not in h and EOS not in h for h in hyps)
    # a ceiling of zero tokens: empty decodes, no step needed
    assert greedy_decode(model, src, lengths, eos=EOS, max_len_ratio=0, max_len_extra=0) == [[]] * len(limits)
    assert beam_search(model, src, lengths, eos=EOS, max_len_ratio=0, max_len_extra=0) == [[]] * len(limits)


def test_min_len_holds_back_eos():
    model = make_model("lstm-dot-bidir", seed=3)
    with torch.no_grad():
        model.head.bias[EOS] = 1e4  # <eos> always the likeliest
    src, lengths = make_batch(seed=3)
    assert greedy_decode(model, src, lengths, eos=EOS) == [[]] * len(lengths)
    for hyps in (greedy_decode(model, src, lengths, eos=EOS, min_len=3),
                 beam_search(model, src, lengths, eos=EOS, beam=3, min_len=3)):
        assert [len(h) for h in hyps] == [3] * len(lengths)
        assert all(EOS not in h and PAD not in h for h in hyps)


def test_eval_mode_inside_training_mode_restored():
    model = make_model("lstm-additive-feed-bidir", seed=4, dropout=0.5)
    src, lengths = make_batch(seed=4)
    expected = greedy_decode(model, src, lengths, eos=EOS)
    expected_beam = beam_search(model, src, lengths, eos=EOS, beam=3)
    model.train()
    assert greedy_decode(model, src, lengths, eos=EOS) == expected  # dropout off while decoding
    assert beam_search(model, src, lengths, eos=EOS, beam=3) == expected_beam
    assert model.training
    model.eval()
    beam_search(model, src, lengths, eos=EOS, beam=3)
    assert not model.training


def test_precision_autocast_wraps_the_model():
    class Counting:
        entered = 0

        def autocast(self):
            Counting.entered += 1
            return make_precision("fp32", "cpu").autocast()

    model = make_model("gru-additive", seed=5)
    src, lengths = make_batch(seed=5)
    expected = greedy_decode(model, src, lengths, eos=EOS)
    assert greedy_decode(model, src, lengths, eos=EOS, precision=Counting()) == expected
    assert beam_search(model, src, lengths, eos=EOS, beam=1, precision=Counting()) == expected
    assert Counting.entered == 2


def test_bad_beam_arguments():
    model = make_model("gru-additive")
    src, lengths = make_batch()
    with pytest.raises(SeqfitError):
        beam_search(model, src, lengths, eos=EOS, beam=2, n_best=3)
    with pytest.raises(SeqfitError):
        beam_search(model, src, lengths, eos=EOS, beam=0)
    with pytest.raises(SeqfitError):
        greedy_decode(model, src, lengths, eos=EOS, max_len_ratio=-1)
    with pytest.raises(SeqfitError, match="empty source"):
        greedy_decode(model, src, torch.tensor([3, 0, 2, 2, 2, 2]), eos=EOS)


# -- a model whose every distribution is known: beam search against brute force --

@dataclass
class TableMemory:
    rows: torch.Tensor  # (B,) unused but selected, as the real memory is

    def select(self, rows):
        return TableMemory(self.rows.index_select(0, rows))


@dataclass
class TableState:
    context: torch.Tensor  # (B,) int64: a hash of the tokens so far

    def select(self, rows):
        return TableState(self.context.index_select(0, rows))


class TableModel(nn.Module):
    """log p(next | history) = table[context], context' = (context * V + prev) % C: with C = V a first-order
    chain (table[prev]); with a larger C each history its own distribution. The source is ignored."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.register_buffer("table", torch.log_softmax(table, -1))  # (C, V)
        self.steps = 0

    def next_context(self, context, prev):
        C, V = self.table.shape
        return (context * V + prev) % C

    def encode(self, src, lengths):
        return TableMemory(torch.arange(src.shape[0])), TableState(torch.zeros(src.shape[0], dtype=torch.long))

    def step(self, prev, state, memory):
        self.steps += 1
        context = self.next_context(state.context, prev)
        return self.table[context].clone(), TableState(context)  # (B, V): the decoder masks it in place

    def score(self, tokens: list[int], alpha: float) -> float:
        """The GNMT-normalised log-probability of tokens followed by <eos>, started from <eos>."""
        context, prev, total = torch.tensor(0), torch.tensor(EOS), 0.0
        for token in tokens + [EOS]:
            context = self.next_context(context, prev)
            total += self.table[context, token].item()
            prev = torch.tensor(token)
        return total / ((5 + len(tokens) + 1) / 6) ** alpha


def brute_force(model: TableModel, max_len: int, alpha: float) -> list[tuple[float, list[int]]]:
    """Every sequence of at most max_len tokens (no <pad>, no <eos>) by score, best first."""
    V = model.table.shape[1]
    tokens = [v for v in range(V) if v not in (PAD, EOS)]
    seqs = [list(s) for n in range(max_len + 1) for s in itertools.product(tokens, repeat=n)]
    return sorted(((model.score(s, alpha), s) for s in seqs), key=lambda h: -h[0])


def test_beam_finds_what_greedy_misses():
    # first token: a (0.55) or b (0.45); after a everything is unlikely, after b <eos> is near certain
    p = torch.full((5, 5), 1e-3)
    p[EOS, 3], p[EOS, 4] = 0.55, 0.45
    p[3, EOS], p[3, UNK], p[3, 3], p[3, 4] = 0.27, 0.26, 0.24, 0.23
    p[4, EOS] = 0.9
    p[UNK, EOS] = 0.9
    p[:, PAD] = 0.5  # padding likely, never taken
    model = TableModel(p.log())
    src, lengths = torch.ones(2, 3, dtype=torch.long), torch.tensor([3, 2])
    assert greedy_decode(model, src, lengths, eos=EOS) == [[3], [3]]
    assert beam_search(model, src, lengths, eos=EOS, beam=2, length_penalty=0.0) == [[4], [4]]
    assert brute_force(model, 4, 0.0)[0][1] == [4]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_large_beam_finds_the_brute_force_best(seed, alpha):
    g = torch.Generator().manual_seed(seed)
    model = TableModel(3 * torch.randn(29, 5, generator=g))  # 29 contexts: distributions depend on the history
    max_len = 4
    best = brute_force(model, max_len, alpha)  # 121 sequences of 3 tokens (<unk>, 3, 4)
    src, lengths = torch.ones(3, 2, dtype=torch.long), torch.tensor([2, 1, 2])
    # 128 beams never prune (at most 27 x 4 candidates a step), so the search is exhaustive but for rule (b)
    found = beam_search(model, src, lengths, eos=EOS, beam=128, n_best=3, length_penalty=alpha,
                        max_len_ratio=0.0, max_len_extra=max_len)
    assert found == [[s for _, s in best[:3]]] * 3
    assert [model.score(s, alpha) for s in found[0]] == pytest.approx([b for b, _ in best[:3]])
    # a modest beam finds at least greedy's score
    greedy = greedy_decode(model, src[:1], lengths[:1], eos=EOS, max_len_ratio=0.0, max_len_extra=max_len)[0]
    small = beam_search(model, src[:1], lengths[:1], eos=EOS, beam=3, length_penalty=0.0,
                        max_len_ratio=0.0, max_len_extra=max_len)[0]
    assert model.score(small, 0.0) >= model.score(greedy, 0.0) - 1e-6


def test_search_stops_once_no_live_hypothesis_can_win():
    # <eos> first (0.4) and every other token 0.15: the empty decode wins
    p = torch.full((5, 5), 0.15)
    p[:, EOS], p[:, PAD] = 0.4, 0.05
    model = TableModel(p.log())
    src, lengths = torch.ones(1, 5, dtype=torch.long), torch.tensor([5])
    assert beam_search(model, src, lengths, eos=EOS, beam=4, length_penalty=0.0) == [[]]
    assert model.steps == 1  # rule (b): 1 of 4 finished, and no live score (<= log 0.15) can reach log 0.4
    model.steps = 0
    # with alpha 1 a live log 0.15 could still end as log 0.15 / ((5 + 21) / 6) > log 0.4 (limit 20 tokens):
    # the search goes on until rule (a), 4 finished, one step later
    assert beam_search(model, src, lengths, eos=EOS, beam=4, length_penalty=1.0) == [[]]
    assert model.steps == 2
