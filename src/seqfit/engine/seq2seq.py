"""The encoder-decoder task: source/target pairs, teacher-forced loss, perplexity and exact match.

Batches come from TokenBudgetSampler over each pair's source + target steps, so a batch holds pairs of
similar lengths on both sides (--max-tokens bounds B x (S + T)). An optimizer step takes --accumulate
batches; every target token's loss is divided by the step's target tokens (each target's <eos> counts),
so the step equals one big batch. Validation adds greedy decoding of the validation pairs: exact match.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from seqfit.config import RunCfg
from seqfit.data.buckets import TokenBudgetSampler
from seqfit.data.sequences import SequenceSplit, SequenceStore, pad_batch
from seqfit.engine.bucketed import BucketedBatches
from seqfit.engine.distributed import Dist, unwrap
from seqfit.engine.task import NoCarriedState
from seqfit.errors import SeqfitError
from seqfit.memory.plan_seq2seq import pair_keys, requested_seq2seq_plan
from seqfit.models.build import count_parameters
from seqfit.models.heads import IGNORE_INDEX
from seqfit.models.seq2seq import Seq2Seq

__all__ = ["Seq2SeqTask", "PairBatch", "pair_batch", "pair_sampler", "check_pairs", "build_seq2seq",
           "evaluate_pairs", "EXACT_MATCH_PAIRS", "Decoding", "decode_sequences", "score_translations", "ids_to_text"]

EXACT_MATCH_PAIRS = 512  # validation pairs greedily decoded for the exact-match figure during training


@dataclass(frozen=True)
class Decoding:
    """How `seqfit translate` and `seqfit evaluate` decode: beam 1 is greedy decoding."""

    beam: int = 5
    length_penalty: float = 1.0  # GNMT's alpha (0: raw log-probability)
    max_ratio: float = 2.0  # at most int(max_ratio x source length) + 10 target tokens
    batch_size: int = 64  # sentences decoded together (beam search: x beam rows)


def decode_sequences(model: Seq2Seq, seqs: list[np.ndarray], *, eos: int, decoding: Decoding, device: torch.device,
                     precision=None) -> list[list[int]]:
    """Token ids of each source -> the decoded target ids, in order. Sources are decoded in batches of similar
    length (little padding); an empty source decodes to nothing."""
    from seqfit.engine.decode import beam_search

    out: list[list[int]] = [[] for _ in seqs]
    lengths = np.array([len(s) for s in seqs])
    order = [int(i) for i in np.argsort(lengths, kind="stable") if lengths[i] > 0]
    for lo in range(0, len(order), decoding.batch_size):
        rows = order[lo:lo + decoding.batch_size]
        src, src_lengths = pad_batch([seqs[i] for i in rows], 0)
        hyps = beam_search(model, src.to(device), src_lengths.to(device), eos=eos, beam=decoding.beam,
                           length_penalty=decoding.length_penalty, max_len_ratio=decoding.max_ratio,
                           precision=precision)
        for i, h in zip(rows, hyps):
            out[i] = h
    return out


def ids_to_text(vocab, ids) -> str:
    """Decoded ids -> text, joined as the vocabulary's level writes it (words by spaces, characters by nothing)."""
    from seqfit.data.tokenize import detokenize
    from seqfit.data.vocab import EOS

    return detokenize(vocab.decode(ids), vocab.level, EOS)


def score_translations(hypotheses: list[str], references: list[str]) -> dict:
    """Corpus BLEU and chrF (sacrebleu, its default settings) and the share of exact matches."""
    import sacrebleu

    exact = sum(h == r for h, r in zip(hypotheses, references)) / max(1, len(references))
    return {"bleu": sacrebleu.corpus_bleu(hypotheses, [references]).score,
            "chrf": sacrebleu.corpus_chrf(hypotheses, [references]).score,
            "exact_match": exact, "count": len(references)}


def build_seq2seq(cfg: RunCfg, store: SequenceStore, plan: dict) -> Seq2Seq:
    counts = store.target_vocab.counts if plan["loss"] in ("full", "chunked") else None
    return Seq2Seq(cfg.model, len(store.vocab), len(store.target_vocab), loss=plan["loss"],
                   loss_chunk=plan["loss_chunk"], counts=counts, checkpoint_time=cfg.memory.checkpoint_time)


def check_pairs(split: SequenceSplit, *, max_length: int, too_long: str, warn=warnings.warn) -> None:
    """Fail (or warn) with one line about pairs the model cannot take."""
    name = split.name
    for side, lengths in (("source", split.lengths), ("target", split.target_lengths)):
        if (empty := np.flatnonzero(lengths == 0)).size:
            raise SeqfitError(f"the {name} split has {empty.size} pair(s) with an empty {side} (first: #{empty[0]}); "
                              "remove them from the data and re-run `seqfit prepare`")
        if max_length and (over := np.flatnonzero(lengths > max_length)).size:
            what = (f"{over.size} {side}(s) of the {name} split exceed the maximum length {max_length} "
                    f"(longest {lengths.max()})")
            if too_long == "error":
                raise SeqfitError(f"{what}; raise --max-length or pass --too-long truncate")
            warn(f"warning: {what}; they are truncated to their first {max_length} tokens")


class PairBatch(tuple):
    """(src (B, S), src_lengths (B,), tgt_in (B, T + 1), tgt_out (B, T + 1)), on the device: tgt_in is <eos>
    then the target, tgt_out the target then <eos>, IGNORE_INDEX after it."""

    @property
    def target_tokens(self) -> int:
        return int((self[3] != IGNORE_INDEX).sum())


def pair_batch(split: SequenceSplit, indices, *, eos: int, max_length: int, device: torch.device) -> PairBatch:
    src, src_lengths = pad_batch([split[int(i)] for i in indices], 0)
    tgt, tgt_lengths = split.batch_targets(indices)
    if max_length:
        src, src_lengths = src[:, :max_length], src_lengths.clamp(max=max_length)
        tgt, tgt_lengths = tgt[:, :max_length], tgt_lengths.clamp(max=max_length)
    B, T = tgt.shape
    tgt_in = torch.cat([torch.full((B, 1), eos, dtype=torch.int64), tgt], 1)  # (B, T + 1), padding 0
    steps = torch.arange(T + 1)[None]
    tgt_out = torch.cat([tgt, torch.zeros(B, 1, dtype=torch.int64)], 1)
    tgt_out = torch.where(steps < tgt_lengths[:, None], tgt_out, IGNORE_INDEX)
    tgt_out[torch.arange(B), tgt_lengths] = eos
    return PairBatch(t.to(device, non_blocking=True) for t in (src, src_lengths, tgt_in, tgt_out))


def pair_sampler(split: SequenceSplit, plan: dict, *, shuffle: bool, seed: int = 0, ranks: int = 1) -> TokenBudgetSampler:
    src, tgt = split.lengths, split.target_lengths
    if plan["max_length"]:
        src, tgt = np.minimum(src, plan["max_length"]), np.minimum(tgt, plan["max_length"])
    keys = pair_keys(src, tgt)
    if plan["max_tokens"]:
        return TokenBudgetSampler(keys, plan["max_tokens"] * ranks, shuffle=shuffle, seed=seed)
    return TokenBudgetSampler(keys, batch_size=plan["micro_batch"] * ranks, shuffle=shuffle, seed=seed)


def pair_loss(model, batch: PairBatch, precision) -> torch.Tensor:
    """Summed cross-entropy of the batch's target tokens (fp32 scalar), through DDP when there is one."""
    src, src_lengths, tgt_in, tgt_out = batch
    with precision.autocast():
        feats = model(src, src_lengths, tgt_in)  # (B, T + 1, H)
        real = tgt_out != IGNORE_INDEX
        return unwrap(model).head.loss(feats[real], tgt_out[real])  # only real rows reach the vocabulary


@torch.no_grad()
def evaluate_pairs(model: Seq2Seq, split: SequenceSplit, plan: dict, *, eos: int, device: torch.device, precision,
                   max_batches: int = 0, exact_pairs: int = EXACT_MATCH_PAIRS) -> dict:
    """Teacher-forced loss and perplexity (over the split, or ``max_batches`` batches), and the exact match of
    greedy decodes of the first ``exact_pairs`` pairs (0: none)."""
    from seqfit.engine.decode import greedy_decode

    was_training = model.training
    model.eval()
    loss_sum, tokens = 0.0, 0
    for b, indices in enumerate(pair_sampler(split, plan, shuffle=False).batches()):
        if max_batches and b >= max_batches:
            break
        batch = pair_batch(split, indices, eos=eos, max_length=plan["max_length"], device=device)
        src, src_lengths, tgt_in, tgt_out = batch
        with precision.autocast():
            feats = model(src, src_lengths, tgt_in)
            real = tgt_out != IGNORE_INDEX
            loss_sum += model.head.nll(feats[real], tgt_out[real]).item()
        tokens += batch.target_tokens
    result = {"loss": loss_sum / max(1, tokens), "tokens": tokens}
    result["ppl"] = math.exp(min(result["loss"], 50.0))
    if exact_pairs:
        n = min(exact_pairs, len(split))
        hits = 0
        for lo in range(0, n, plan["micro_batch"] or 64):
            indices = np.arange(lo, min(n, lo + (plan["micro_batch"] or 64)))
            src, src_lengths, _, _ = pair_batch(split, indices, eos=eos, max_length=plan["max_length"], device=device)
            with precision.autocast():
                hyps = greedy_decode(model, src, src_lengths, eos=eos)
            hits += sum(h == split.target(int(i)).tolist() for h, i in zip(hyps, indices))
        result["exact_match"] = hits / max(1, n)
        result["exact_pairs"] = n
    model.train(was_training)
    return result


class Seq2SeqTask(BucketedBatches, NoCarriedState):
    name = "seq2seq"

    def __init__(self, cfg: RunCfg, data_dir: Path, device: torch.device, dist: Dist = Dist()):
        self.cfg, self.device, self.dist = cfg, device, dist
        self.store = SequenceStore(data_dir)
        if self.store.meta.get("task") != "seq2seq":
            raise SeqfitError(f"{data_dir} holds no source/target pairs; prepare it with --task seq2seq "
                              "--text-field SOURCE --target-field TARGET")
        self.train_split = self.store.split("train")
        self.valid = self.store.split("valid") if self.store.has_split("valid") else None
        self.eos = self.store.target_vocab.eos_id
        longest = int(self.train_split.target_lengths.max()) if len(self.train_split) else 1
        if cfg.train.max_length:
            longest = min(longest, cfg.train.max_length)
        self.plan = requested_seq2seq_plan(cfg, device.type, len(self.store.target_vocab), longest)
        self.sampler = pair_sampler(self.train_split, self.plan, shuffle=True, seed=cfg.train.seed, ranks=dist.world)

    def check_data(self, warn) -> None:
        if self.cfg.model.share_embeddings and self.store.target_vocab is not self.store.vocab:
            raise SeqfitError(f"--share-embeddings needs one vocabulary for both sides; {self.store.dir} was prepared "
                              "with --separate-vocab")
        for split in (self.train_split, self.valid):
            if split is not None:
                check_pairs(split, max_length=self.plan["max_length"], too_long=self.plan["too_long"], warn=warn)

    def build_model(self) -> Seq2Seq:
        return build_seq2seq(self.cfg, self.store, self.plan)

    def describe(self, model) -> str:
        p, m = self.plan, self.cfg.model
        batch = f"{p['max_tokens']} tokens" if p["max_tokens"] else str(p["micro_batch"])
        return (f"{p['device']} {p['precision']}, batch {batch} x {p['accumulate']}, "
                + ("full BPTT" if p["mode"] == "full" else f"checkpoint every {p['checkpoint_time']} steps")
                + f", {m.attention} attention{', input feeding' if m.input_feed else ''}, loss {p['loss']}, "
                + f"vocabulary {len(self.store.vocab):,} -> {len(self.store.target_vocab):,}, "
                + f"{count_parameters(model):,} parameters")

    # -- data (epoch_groups, probe_group: BucketedBatches) --
    def fixed_sampler(self) -> TokenBudgetSampler:
        return pair_sampler(self.train_split, self.plan, shuffle=False, ranks=self.dist.world)

    def micro_batches(self, group: list[np.ndarray]) -> list[PairBatch]:
        return [pair_batch(self.train_split, g, eos=self.eos, max_length=self.plan["max_length"], device=self.device)
                for g in group]

    def denominator(self, micro: list[PairBatch]) -> int:
        return sum(b.target_tokens for b in micro)

    def backward(self, model, micro: PairBatch, *, denom: int, precision, phase) -> dict[str, float]:
        with phase("forward"):
            loss = pair_loss(model, micro, precision)
        with phase("backward"):
            precision.backward(loss / denom)
        part = loss.item()
        del loss
        return {"loss_sum": part, "tokens": micro.target_tokens}

    # -- metrics --
    def train_metrics(self, stats: dict) -> dict:
        loss = stats["loss_sum"] / stats["tokens"]
        return {"loss": loss, "ppl": math.exp(min(loss, 50.0))}

    def validate(self, model, precision) -> dict | None:
        if self.valid is None:
            return None
        return evaluate_pairs(model, self.valid, self.plan, eos=self.eos, device=self.device, precision=precision,
                              max_batches=self.cfg.train.eval_batches)

    def describe_valid(self, result: dict) -> str:
        return (f"valid loss {result['loss']:.3f} ppl {result['ppl']:.2f} exact match {result['exact_match']:.1%} "
                f"(greedy, {result['exact_pairs']} pairs)")

    def evaluate_split(self, model, split: str, precision, *, batch_size: int = 0, warn=None,
                       decoding: Decoding = Decoding()) -> tuple[dict, str]:
        """`seqfit evaluate`: teacher-forced loss and perplexity, then BLEU, chrF and exact match of the decodes."""
        part = self.store.split(split)
        check_pairs(part, max_length=self.plan["max_length"], too_long=self.plan["too_long"], warn=warn or warnings.warn)
        plan = {**self.plan, "micro_batch": batch_size} if batch_size else self.plan
        result = evaluate_pairs(model, part, plan, eos=self.eos, device=self.device, precision=precision, exact_pairs=0)
        limit = self.plan["max_length"] or None
        sources = [part[i][:limit] for i in range(len(part))]
        hyps = decode_sequences(model, sources, eos=self.eos, decoding=decoding, device=self.device, precision=precision)
        vocab = self.store.target_vocab
        scores = score_translations([ids_to_text(vocab, h) for h in hyps],
                                    [ids_to_text(vocab, part.target(i)) for i in range(len(part))])
        result.update(scores, beam=decoding.beam, length_penalty=decoding.length_penalty)
        how = "greedy" if decoding.beam == 1 else f"beam {decoding.beam}, length penalty {decoding.length_penalty:g}"
        return result, (f"loss {result['loss']:.4f}, perplexity {result['ppl']:.2f}; BLEU {result['bleu']:.2f}, "
                        f"chrF {result['chrf']:.2f}, exact match {result['exact_match']:.2%} over {result['count']:,} "
                        f"pairs ({how})")

    def summary(self, last_valid: dict | None) -> dict:
        return {"valid_loss": last_valid and last_valid["loss"], "valid_ppl": last_valid and last_valid["ppl"],
                "valid_exact_match": last_valid and last_valid.get("exact_match")}
