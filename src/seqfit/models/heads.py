"""Vocabulary output heads for language models: full logits, chunked logits, adaptive softmax.

Every head maps features (N, H) to a summed fp32 loss over targets (N,) (ignore_index -100 for
padding; the caller divides by the token count), a summed NLL for perplexity, and (N, V)
log-probabilities for sampling a few positions:

    "full"      nn.Linear-shaped weight (V, H) + bias (V,), F.cross_entropy on the (N, V) logits
    "chunked"   the same parameters, cross-entropy a chunk of rows at a time (nn/chunked_loss.py):
                checkpoints move freely between "full" and "chunked"
    "adaptive"  nn.AdaptiveLogSoftmaxWithLoss (Grave et al. 2017, arXiv:1609.04309): a head over the
                frequent ids plus smaller tail clusters; needs ids sorted by frequency

A tied head (Press & Wolf 2017, arXiv:1608.05859) reads the embedding's weight at call time and
does not register it: a state_dict then holds the matrix once (safetensors refuses shared tensors)
and autograd adds the head's gradient to the embedding's.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from seqfit.errors import SeqfitError
from seqfit.nn import spare_grads
from seqfit.nn.chunked_loss import LossWorkspace, chunked_cross_entropy, chunked_log_softmax, full_logits_peak_bytes
from seqfit.nn.narrow_loss import narrow_autocast, narrow_logits_cross_entropy

__all__ = ["OutputHead", "LinearHead", "AdaptiveHead", "make_output_head", "choose_loss_kind", "adaptive_cutoffs",
           "zipf_counts", "unigram_log_prior", "IGNORE_INDEX", "HEAD_KINDS"]

IGNORE_INDEX = -100  # targets with this id (padding) add nothing to any loss
HEAD_KINDS = ("full", "chunked", "adaptive")
SMALL_LOGITS_BYTES = 256 * 2**20  # fp32 logits below this are cheap enough to materialise
CHUNKED_FROM_VOCAB = 10_000  # from here up the chunked loss is faster than full logits, as well as smaller


class OutputHead(nn.Module):
    """The interface the model and the training loop call; make_output_head builds one."""

    kind: str

    def loss(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Summed (label-smoothed) cross-entropy, fp32 scalar; features (N, H), targets (N,)."""
        raise NotImplementedError

    def nll(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Summed negative log-likelihood, never smoothed (perplexity), fp32 scalar."""
        raise NotImplementedError

    def log_probs(self, features: torch.Tensor) -> torch.Tensor:
        """(N, V) fp32 log-probabilities, for sampling a few positions."""
        raise NotImplementedError


class LinearHead(OutputHead, spare_grads.SparesGradients):
    """logits = features @ weight.T + bias, scored on full logits or one chunk of rows at a time."""

    def __init__(self, hidden: int, vocab_size: int, *, chunked: bool, chunk_tokens: int = 0,
                 tied_embedding: nn.Embedding | None = None, label_smoothing: float = 0.0,
                 counts: Sequence[float] | None = None):
        super().__init__()
        self.kind = "chunked" if chunked else "full"
        self._prior = None if counts is None else unigram_log_prior(counts)  # (V,) or None
        self.chunk_tokens = chunk_tokens
        self.label_smoothing = label_smoothing
        self.workspace = LossWorkspace() if chunked else None  # the chunked loss's buffer, kept between steps
        # A tuple hides the module from nn.Module's registration: no second copy in state_dict or parameters().
        self._tied = (tied_embedding,) if tied_embedding is not None else None
        if tied_embedding is None:
            self.weight = nn.Parameter(torch.empty(vocab_size, hidden))  # (V, H)
        self.bias = nn.Parameter(torch.zeros(vocab_size))  # (V,)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self._tied is None:
            # nn.Linear's default init, so a "full" head built either way starts the same.
            bound = 1.0 / self.in_features**0.5
            nn.init.uniform_(self.weight, -bound, bound)
        # The bias starts at the log unigram frequencies, so an untrained model, or one started from a zero
        # state, predicts the unigram. From zeros, Adam moves a bias ~lr a step: the model then keeps the prior
        # in a persistent hidden-state offset instead, whose sign-flipped twin is also stable, and a zero state
        # can fall into that twin and stay there (a char LM scored worse than uniform on 14 of 32 rows).
        with torch.no_grad():
            if self._prior is not None:
                self.bias.copy_(self._prior)
            else:
                self.bias.zero_()

    def spared_parameters(self) -> list[nn.Parameter]:
        # the chunked loss writes its own weight's gradient into the last step's (nn/spare_grads.py); a tied
        # weight is the embedding's to name
        return [self.weight] if self.kind == "chunked" and self._tied is None else []

    @property
    def in_features(self) -> int:
        return self.output_weight().shape[1]

    def output_weight(self) -> torch.Tensor:
        """(V, H): the head's own weight, or the tied embedding's current one."""
        return self._tied[0].weight if self._tied is not None else self.weight

    def _cross_entropy(self, features: torch.Tensor, targets: torch.Tensor, smoothing: float) -> torch.Tensor:
        features = features.reshape(-1, features.shape[-1])  # (N, H)
        targets = targets.reshape(-1)  # (N,)
        if self.kind == "chunked":
            return chunked_cross_entropy(features, self.output_weight(), self.bias, targets,
                                         chunk_tokens=self.chunk_tokens, ignore_index=IGNORE_INDEX,
                                         label_smoothing=smoothing, workspace=self.workspace)
        if narrow_autocast(features) == torch.bfloat16:
            # bf16 logits kept, softmax in fp32 row blocks (train/narrow_loss.py): ~1.2x faster steps on CPU.
            # Not for fp16, whose range would need the loss scale inside the kernel.
            return narrow_logits_cross_entropy(features, self.output_weight(), self.bias, targets,
                                               ignore_index=IGNORE_INDEX, label_smoothing=smoothing)
        logits = F.linear(features, self.output_weight(), self.bias)  # (N, V)
        return F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX, reduction="sum",
                               label_smoothing=smoothing)

    def loss(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self._cross_entropy(features, targets, self.label_smoothing)

    def nll(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self._cross_entropy(features, targets, 0.0)

    def log_probs(self, features: torch.Tensor) -> torch.Tensor:
        features = features.reshape(-1, features.shape[-1])  # (N, H)
        if self.kind == "chunked" and not (torch.is_grad_enabled() and features.requires_grad):
            return chunked_log_softmax(features, self.output_weight(), self.bias, chunk_tokens=self.chunk_tokens)
        return F.log_softmax(F.linear(features, self.output_weight(), self.bias).float(), dim=-1)  # (N, V)

    def extra_repr(self) -> str:
        hidden = self.in_features
        tied = ", tied" if self._tied is not None else ""
        return f"kind={self.kind}, hidden={hidden}, vocab={self.bias.shape[0]}{tied}"


class AdaptiveHead(OutputHead):
    """nn.AdaptiveLogSoftmaxWithLoss behind the OutputHead interface (padding rows dropped first)."""

    kind = "adaptive"

    def __init__(self, hidden: int, vocab_size: int, cutoffs: Sequence[int], div_value: float = 4.0):
        super().__init__()
        # Tail cluster i projects to hidden // div_value**(i+1) dims; one of 0 dims could predict nothing,
        # so keep only the tails that get at least 4 (small hidden sizes: fewer tails, or no shrinking).
        tails = 0
        while tails < len(cutoffs) and hidden // div_value ** (tails + 1) >= 4:
            tails += 1
        if tails == 0:
            div_value, tails = 1.0, len(cutoffs)
        self.adaptive = nn.AdaptiveLogSoftmaxWithLoss(hidden, vocab_size, list(cutoffs)[:tails], div_value=div_value)

    def nll(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        features = features.reshape(-1, features.shape[-1])  # (N, H)
        targets = targets.reshape(-1)  # (N,)
        keep = targets != IGNORE_INDEX  # (N,)
        if not bool(keep.any()):
            return features.sum().float() * 0.0  # nothing to score; keep the graph for backward
        with _fp32(features):
            # The module has no ignore_index and averages; take its per-row target log-probabilities instead.
            target_logp = self.adaptive(features[keep].float(), targets[keep]).output  # (M,)
        return -target_logp.sum()

    def loss(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.nll(features, targets)

    def log_probs(self, features: torch.Tensor) -> torch.Tensor:
        with _fp32(features):
            return self.adaptive.log_prob(features.reshape(-1, features.shape[-1]).float())  # (N, V)


def _fp32(features: torch.Tensor):
    # AdaptiveLogSoftmaxWithLoss breaks under autocast (it index_copy_s bf16 log-probs into an fp32
    # buffer on CPU, and fp32 into bf16 when its input is bf16), so it runs in fp32: by design it is a
    # small share of the model's work.
    return torch.autocast(features.device.type, enabled=False)


def unigram_log_prior(counts: Sequence[float]) -> torch.Tensor:
    """(V,) fp32 add-one-smoothed log frequencies, centred on 0 (softmax ignores the shift)."""
    logp = (torch.as_tensor(counts, dtype=torch.float64).clamp_min(0) + 1.0).log()
    return (logp - logp.mean()).float()


def zipf_counts(vocab_size: int) -> list[float]:
    """Zipf's law over ids sorted by frequency, count(i) ~ 1 / (i + 1): the prior when no counts are known."""
    return [1.0 / (i + 1) for i in range(vocab_size)]


def adaptive_cutoffs(counts: Sequence[float], coverage: Sequence[float] = (0.8, 0.95, 0.99),
                     min_cluster: int = 8) -> list[int]:
    """Cutoffs where the ids 0..cutoff-1 (sorted by frequency) cover each fraction of the tokens.

    The head then scores ~80% of the tokens alone and each tail cluster is reached rarely; cutoffs
    are rounded up to multiples of 8, strictly increasing, and each lies in [1, V - 1]. Clusters
    smaller than min_cluster ids are merged into their neighbour.
    """
    vocab = len(counts)
    if vocab < 2:
        raise SeqfitError(f"adaptive softmax needs a vocabulary of at least 2 ids, got {vocab}")
    total = float(sum(counts))
    if total <= 0:
        raise SeqfitError("adaptive softmax cutoffs need token counts, and all counts are zero")
    cumulative = torch.tensor(counts, dtype=torch.float64).cumsum(0) / total  # (V,)
    cutoffs: list[int] = []
    for p in sorted(coverage):
        ids = int(torch.searchsorted(cumulative, torch.tensor(p, dtype=torch.float64))) + 1
        ids = min(-(-ids // 8) * 8, vocab - 1)  # up to a multiple of 8, below V
        previous = cutoffs[-1] if cutoffs else 0
        if ids - previous >= min_cluster and vocab - ids >= min_cluster:
            cutoffs.append(ids)
    if not cutoffs:  # tiny vocabulary: one head and one tail
        cutoffs = [max(1, vocab // 2)]
    return cutoffs


def make_output_head(kind: str, hidden: int, vocab_size: int, *, tied_embedding: nn.Embedding | None = None,
                     counts: Sequence[int] | None = None, chunk_tokens: int = 0,
                     label_smoothing: float = 0.0) -> OutputHead:
    """Build the output head named by kind ("full", "chunked" or "adaptive"), see the module docstring.

    counts: corpus count per id, for the adaptive cutoffs (Zipf is assumed without them) and the full or
    chunked head's initial bias (log unigram; zeros without them).
    chunk_tokens: rows per chunk for "chunked"; 0 picks chunked_loss.default_chunk_tokens.
    """
    if kind not in HEAD_KINDS:
        raise SeqfitError(f"unknown output head {kind!r}; choose one of {', '.join(HEAD_KINDS)}")
    if hidden <= 0 or vocab_size <= 1:
        raise SeqfitError(f"an output head needs hidden > 0 and a vocabulary > 1 (got {hidden}, {vocab_size})")
    if not 0.0 <= label_smoothing < 1.0:
        raise SeqfitError(f"label smoothing must lie in [0, 1), got {label_smoothing}")
    if chunk_tokens < 0:
        raise SeqfitError(f"loss chunk must be >= 0 tokens (0 = automatic), got {chunk_tokens}")
    if counts is not None and len(counts) != vocab_size:
        raise SeqfitError(f"{len(counts)} token counts for a vocabulary of {vocab_size}")
    if kind == "adaptive":
        if tied_embedding is not None:
            raise SeqfitError("the adaptive head has its own cluster weights and cannot be tied to the embedding; "
                              "drop --tie-weights or use the full or chunked loss")
        if label_smoothing:
            raise SeqfitError("label smoothing needs every class's log-probability, which the adaptive head avoids "
                              "computing; use the full or chunked loss, or no smoothing")
        cutoffs = adaptive_cutoffs(counts if counts is not None else zipf_counts(vocab_size))
        return AdaptiveHead(hidden, vocab_size, cutoffs)
    if tied_embedding is not None and tuple(tied_embedding.weight.shape) != (vocab_size, hidden):
        rows, dim = tied_embedding.weight.shape
        raise SeqfitError(f"a tied head needs a {vocab_size}x{hidden} embedding (vocabulary x hidden), "
                          f"got {rows}x{dim}: set the embedding size equal to the hidden size")
    return LinearHead(hidden, vocab_size, chunked=kind == "chunked", chunk_tokens=chunk_tokens,
                      tied_embedding=tied_embedding, label_smoothing=label_smoothing, counts=counts)


def choose_loss_kind(vocab_size: int, tokens_per_batch: int, budget_bytes: int | None) -> str:
    """"chunked" from CHUNKED_FROM_VOCAB words up, where it is also the faster loss; below, "full" when the
    full-logits loss is cheap, else "chunked" (same parameters, same result).

    The chunked loss builds its gradients in the forward while each chunk is in cache, with full logits'
    three matmuls and none of their (N, V) passes (nn/chunked_loss.py): measured side by side at V = 10k
    to 250k it took 0.35-0.86x full logits' time (benchmarks/bench_loss.py). Below that, without a budget, full
    logits are fine below SMALL_LOGITS_BYTES of fp32; with one, the full loss's vocabulary-sized peak (logits,
    log-softmax and gradient: ~3 x N x V fp32) must stay under a quarter of it.
    """
    if vocab_size <= 0 or tokens_per_batch <= 0:
        raise SeqfitError(f"vocabulary and tokens per batch must be positive (got {vocab_size}, {tokens_per_batch})")
    if vocab_size >= CHUNKED_FROM_VOCAB:
        return "chunked"
    if budget_bytes is None:
        return "full" if tokens_per_batch * vocab_size * 4 <= SMALL_LOGITS_BYTES else "chunked"
    return "full" if full_logits_peak_bytes(tokens_per_batch, vocab_size) * 4 <= budget_bytes else "chunked"