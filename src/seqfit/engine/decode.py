"""Decoding an encoder-decoder model: batched greedy decoding and beam search.

Both read the model through two calls (models/seq2seq.py; any object with them will do):

    memory, state = model.encode(src (B, S), lengths (B,))      both have .select(rows) (index_select on the batch)
    log_probs (B, V) fp32, state = model.step(prev (B,), state, memory)

A decode starts from ``bos`` (seqfit: <eos> starts a sentence, as in fairseq) and ends at ``eos``, which is
not returned. Padding (``pad``) is never produced; <unk> may be. A sentence of n source tokens produces at most

    max_len = int(max_len_ratio * n) + max_len_extra

tokens (without the <eos>); a row that reaches it ends there, as if it had produced <eos>.

Beam search (B sentences x K beams = B*K rows, stepped together):

    step t   candidates = live scores (B, K, 1) + log-probs (B, K, V), flattened to (B, K*V); torch.topk keeps
             the best 2K (ties as topk breaks them: the same input gives the same answer). A candidate ending in
             <eos> is set aside as finished only if it ranks in the top K (fairseq's rule; with K = 1 only the
             argmax can end a hypothesis, which makes beam 1 greedy decoding exactly); the best K that do not
             end in <eos> are the next live beam.
    score    finished hypotheses are ranked by  sum of log-probs / ((5 + L) / 6) ** alpha, L = its tokens
             counting the <eos>, alpha = length_penalty (GNMT, Wu et al. 2016, arXiv:1609.08144; 0: raw sum)
    done     a sentence stops at the first step after which
               (a) it has K finished hypotheses (fairseq's rule), or
               (b) it has n_best finished and no live hypothesis can beat the n_best-th: log-probs are <= 0, so a
                   live score s can end no better than s / lp(L) at the best L in [t + 2, max_len + 1] (lp is
                   monotone in L: one of the two ends). This only stops early: it cannot change the answer, or
               (c) it reached its max_len: every live hypothesis is forced to end (all but <eos> masked), or
               (d) no live hypothesis has a finite score left.
             The answer is the n_best finished hypotheses by score, the earlier finished first on a tie.

Done sentences leave the batch (their rows are dropped from the state and the memory), so the steps that remain
cost only the sentences still searched; greedy decoding drops finished rows the same way.
"""

from __future__ import annotations

import contextlib
import itertools

import torch
from torch import Tensor

from seqfit.errors import SeqfitError

__all__ = ["greedy_decode", "beam_search", "max_lengths"]

NEG_INF = float("-inf")


def _keep(kept: list[int], memory, state, prev: Tensor, rows: list[int]):
    """Only the ``kept`` rows of a greedy decode go on: its memory, state, last tokens and original row numbers."""
    index = torch.tensor(kept, device=prev.device)
    return memory.select(index), state.select(index), prev[index], [rows[i] for i in kept]


def max_lengths(lengths: Tensor, max_len_ratio: float, max_len_extra: int) -> list[int]:
    """The most tokens (without <eos>) each row may produce: int(max_len_ratio * source length) + max_len_extra."""
    if max_len_ratio < 0 or max_len_extra < 0:
        raise SeqfitError(f"max_len_ratio and max_len_extra must be >= 0 (got {max_len_ratio}, {max_len_extra})")
    sizes = lengths.tolist()
    if min(sizes, default=1) < 1:  # attention over no position is a softmax of -infs: NaN log-probabilities
        raise SeqfitError(f"cannot decode an empty source (row {sizes.index(min(sizes))} has length 0)")
    return [int(max_len_ratio * n) + max_len_extra for n in sizes]


@contextlib.contextmanager
def _inference(model, precision):
    """Eval mode (the caller's mode restored after), inference mode, and the precision's autocast if given."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), (precision.autocast() if precision is not None else contextlib.nullcontext()):
            yield
    finally:
        model.train(was_training)


def _device(model, src: Tensor) -> torch.device:
    param = next(model.parameters(), None) if hasattr(model, "parameters") else None
    return src.device if param is None else param.device


def _mask(log_probs: Tensor, *, pad: int, eos: int, no_eos: Tensor | None = None,
          only_eos: Tensor | None = None) -> Tensor:
    """log_probs (N, V): pad never; <eos> not in rows ``no_eos`` (N,) bool; nothing but <eos> in rows ``only_eos``."""
    log_probs[:, pad] = NEG_INF
    if no_eos is not None:
        log_probs[:, eos].masked_fill_(no_eos, NEG_INF)
    if only_eos is not None:
        others = torch.ones(log_probs.shape[1], dtype=torch.bool, device=log_probs.device)
        others[eos] = False
        log_probs.masked_fill_(only_eos[:, None] & others, NEG_INF)
    return log_probs


def greedy_decode(model, src: Tensor, lengths: Tensor, *, eos: int, bos: int | None = None, pad: int = 0,
                  max_len_ratio: float = 2.0, max_len_extra: int = 10, min_len: int = 0,
                  precision=None) -> list[list[int]]:
    """The argmax token at every step, all rows at once: src (B, S) ids, lengths (B,) -> B token lists.

    A row ends at <eos> (not returned) or at its max length (see the module docstring); <eos> is masked for
    the first ``min_len`` steps. Ended rows leave the batch. ``precision``: its autocast() wraps the model calls."""
    bos = eos if bos is None else bos
    limit = max_lengths(lengths, max_len_ratio, max_len_extra)
    out: list[list[int]] = [[] for _ in limit]
    with _inference(model, precision):
        device = _device(model, src)
        memory, state = model.encode(src.to(device), lengths.to(device))
        rows = list(range(len(limit)))  # the original row of each row still decoding
        prev = torch.full((len(rows),), bos, dtype=torch.long, device=device)  # (n,)
        for t in itertools.count():
            # a row with no room left ends before its step (its <eos> is forced: no need to score it)
            room = [i for i, r in enumerate(rows) if limit[r] > t]
            if not room:
                break
            if len(room) < len(rows):
                memory, state, prev, rows = _keep(room, memory, state, prev, rows)
            log_probs, state = model.step(prev, state, memory)  # (n, V) fp32
            no_eos = None if t >= min_len else torch.ones(len(rows), dtype=torch.bool, device=device)
            prev = _mask(log_probs, pad=pad, eos=eos, no_eos=no_eos).argmax(-1)  # (n,)
            going = []
            for i, token in enumerate(prev.tolist()):
                if token != eos:
                    out[rows[i]].append(token)
                    going.append(i)
            if not going:
                break
            if len(going) < len(rows):
                memory, state, prev, rows = _keep(going, memory, state, prev, rows)
    return out


def _penalty(length: int, alpha: float) -> float:
    """GNMT's length penalty ((5 + length) / 6) ** alpha (1 for alpha 0)."""
    return ((5 + length) / 6) ** alpha


def beam_search(model, src: Tensor, lengths: Tensor, *, eos: int, bos: int | None = None, pad: int = 0,
                beam: int = 5, length_penalty: float = 1.0, max_len_ratio: float = 2.0, max_len_extra: int = 10,
                min_len: int = 0, n_best: int = 1, precision=None) -> list[list[int]] | list[list[list[int]]]:
    """Beam search over all sentences and beams at once: src (B, S), lengths (B,) -> per sentence its best token
    list (n_best 1), or its n_best lists, best first (n_best > 1; fewer where fewer than n_best could finish).
    Rules and scores: the module docstring. ``precision``: its autocast() wraps the model calls."""
    if beam < 1 or not 1 <= n_best <= beam:
        raise SeqfitError(f"beam search needs beam >= 1 and 1 <= n_best <= beam (got beam {beam}, n_best {n_best})")
    bos = eos if bos is None else bos
    K = beam
    limit = max_lengths(lengths, max_len_ratio, max_len_extra)
    B = len(limit)
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]  # (score, tokens), best first
    with _inference(model, precision):
        device = _device(model, src)
        memory, state = model.encode(src.to(device), lengths.to(device))
        copies = torch.arange(B, device=device).repeat_interleave(K)  # (B*K,): each sentence's encoding K times
        memory, state = memory.select(copies), state.select(copies)
        sents = list(range(B))  # the sentence of each group of K rows still searched
        scores = torch.full((B, K), NEG_INF)  # (n, K) live sums of log-probs, on the CPU like all bookkeeping
        scores[:, 0] = 0.0  # one live hypothesis at first: the K copies would otherwise propose K equal ones
        hyps = torch.zeros(B, K, 0, dtype=torch.long)  # (n, K, t) live tokens
        prev = torch.full((B * K,), bos, dtype=torch.long, device=device)  # (n*K,)
        for t in itertools.count():
            n = len(sents)
            log_probs, state = model.step(prev, state, memory)  # (n*K, V) fp32
            V = log_probs.shape[1]
            forced = torch.tensor([limit[s] <= t for s in sents], device=device).repeat_interleave(K)  # (n*K,)
            no_eos = ~forced if t < min_len else None
            log_probs = _mask(log_probs, pad=pad, eos=eos, no_eos=no_eos, only_eos=forced)
            cand = scores.to(device)[:, :, None] + log_probs.view(n, K, V)  # (n, K, V)
            top, index = cand.view(n, K * V).topk(2 * K, dim=1)  # (n, 2K), best first
            top, index = top.cpu(), index.cpu()  # one sync a step: the bookkeeping below is per sentence
            origin, token = index // V, index % V  # (n, 2K) the live hypothesis extended, and by what
            ends = token == eos
            # only the top K candidates may end a hypothesis (fairseq): with beam 1, the argmax alone
            for i, r in (ends[:, :K] & (top[:, :K] > NEG_INF)).nonzero().tolist():
                score = top[i, r].item() / _penalty(t + 1, length_penalty)  # t tokens and the <eos>
                fin = finished[sents[i]]
                fin.append((score, hyps[i, origin[i, r]].tolist()))
                fin.sort(key=lambda h: -h[0])  # stable: the earlier finished first on a tie
            # the next live beam: the K best candidates that do not end (a stable sort moves the ends last)
            live = ends.to(torch.uint8).argsort(dim=1, stable=True)[:, :K]  # (n, K) ranks
            scores, origin, token = top.gather(1, live), origin.gather(1, live), token.gather(1, live)  # (n, K)
            hyps = torch.cat([hyps.gather(1, origin[:, :, None].expand(-1, -1, t)), token[:, :, None]], 2)
            best_live = scores.max(1).values.tolist()  # (n,)
            going = [i for i, s in enumerate(sents)
                     if not _done(finished[s], best_live[i], t, limit[s], beam=K, n_best=n_best, alpha=length_penalty)]
            if not going:
                break
            keep = torch.tensor(going)
            rows = (keep[:, None] * K + origin[keep]).view(-1).to(device)  # (n'*K,) the survivors' rows
            state = state.select(rows)
            if len(going) < n:  # a sentence's K rows share one encoding: reordering beams needs no select
                memory = memory.select((keep[:, None] * K + torch.arange(K)).view(-1).to(device))
            sents = [sents[i] for i in going]
            scores, hyps = scores[keep], hyps[keep]
            prev = token[keep].view(-1).to(device)
    if n_best == 1:
        return [hs[0][1] if hs else [] for hs in finished]
    return [[tokens for _, tokens in hs[:n_best]] for hs in finished]


def _done(finished: list[tuple[float, list[int]]], best_live: float, t: int, limit: int, *, beam: int, n_best: int,
          alpha: float) -> bool:
    """Rules (a)-(d) of the module docstring after step t (the live hypotheses now hold t + 1 tokens)."""
    if len(finished) >= beam or t >= limit or best_live == NEG_INF:
        return True
    if len(finished) < n_best:
        return False
    # the best a live score can end with: L from t + 2 (<eos> next) to limit + 1 (forced at the limit)
    bound = max(best_live / _penalty(t + 2, alpha), best_live / _penalty(limit + 1, alpha))
    return bound <= finished[n_best - 1][0]
