"""A relative speed model for ranking plans that fit: tokens per second from FLOPs and per-step overhead.

Not a benchmark: it only has to order plans the way the machine would. Per micro-batch of b streams
and T steps, each layer runs T fused time steps whose matmuls are b x (I + H) by (I + H) x gH; small
b leaves the matrix units idle, so a step's rate saturates as b / (b + b_half). The output layer is
three N x H x V matmuls (forward, two for backward). Then:

    checkpointing   recomputes the recurrent forward once more:  x 4/3 of the recurrent part
    chunked loss    the same three matmuls, in cache, without full logits' three passes over (N, V)
                    arrays, plus a few kernel calls per chunk (so of two chunk sizes that fit, the
                    larger wins)
    accumulation    a steps of b streams instead of one of a*b: the per-step overhead a times

``seconds_per_flop``, ``seconds_per_call`` and ``batch_half`` come from the calibration probe's
timings (constants.py); the defaults were measured on the development machine.
"""

from __future__ import annotations

from seqfit.config import ModelCfg
from seqfit.memory.constants import DEFAULT_CONSTANTS, Constants
from seqfit.memory.estimate import GATES, chunk_len
from seqfit.models.lm import spare_grad_bytes
from seqfit.nn.chunked_loss import default_chunk_tokens

__all__ = ["step_seconds", "tokens_per_second", "classifier_step_seconds", "seq2seq_step_seconds"]


def step_seconds(model: ModelCfg, vocab: int, plan: dict, consts: Constants = DEFAULT_CONSTANTS) -> float:
    """Predicted seconds for one optimizer step of ``plan`` (keys as plan.requested_plan)."""
    b, T, acc = plan["micro_batch"], plan["bptt"], plan["accumulate"]
    g, H, E, L = GATES[model.cell], model.hidden, model.embed, model.layers
    n = b * T
    macs_per_step = sum(b * g * H * ((E if i == 0 else H) + H) for i in range(L))
    spf, spc = consts.speed(model.cell, plan["precision"])
    efficiency = b / (b + consts.batch_half)
    rnn = T * (3 * 2 * macs_per_step * spf / efficiency + L * spc)
    if chunk_len(plan.get("checkpoint_time", 0), T) < T:
        rnn *= 4 / 3
    if plan["loss"] == "adaptive":
        head = 3 * 2 * n * H * min(vocab, 2 * H + 64) * spf  # shortlist + projected tails
    else:
        head = 3 * 2 * n * H * vocab * spf
        if plan["loss"] == "chunked":
            chunk = plan.get("loss_chunk") or default_chunk_tokens(vocab, n, 4 if plan["precision"] == "fp32" else 2)
            chunks = -(-n // chunk)
            head += 8 * chunks * spc  # a few small kernels per chunk
        else:
            head += 3 * n * vocab * spf * 10  # three memory-bound passes over (N, V) arrays
    return acc * (rnn + head) + _fresh_gradient_seconds(model, vocab, plan)


# What a fresh gradient mapping costs a step on CPU, per byte (faults and the kernel's zeroing; freeing it): a
# fresh 18,000 x 200 fp32 zeros took 2.7-13 ms on a Zen 5 guest (4 KiB or huge pages) against 0.35 ms to zero
# a kept one; a 2 x 200 LM step in bf16 spent 4 ms less a step in the kernel with its two (V, 200) gradients
# spared (29 MB; steps alternating in one process): 0.14 ns a byte of system time, taken up to 0.2 for the
# freeing and the waiting around it.
FRESH_SECONDS_PER_BYTE = 0.2e-9


def _fresh_gradient_seconds(model: ModelCfg, vocab: int, plan: dict) -> float:
    """The per-step cost of the vocabulary-sized gradients a CPU plan maps afresh instead of reusing the spare."""
    if plan.get("device") != "cpu" or plan.get("spare_grads"):
        return 0.0
    return FRESH_SECONDS_PER_BYTE * sum(spare_grad_bytes(model, vocab, plan["loss"]).values())


def tokens_per_second(model: ModelCfg, vocab: int, plan: dict, consts: Constants = DEFAULT_CONSTANTS) -> float:
    return plan["micro_batch"] * plan["accumulate"] * plan["bptt"] / step_seconds(model, vocab, plan, consts)


def classifier_step_seconds(model: ModelCfg, inputs: int, plan: dict, batch: tuple[int, int, int],
                            consts: Constants = DEFAULT_CONSTANTS) -> float:
    """Predicted seconds for one optimizer step of a classifier plan over its largest batch (rows, padded
    steps, real tokens; memory.estimate_classify.worst_batch). The kernels run over real tokens; each
    direction of a layer is one more pass; exact checkpointing recomputes the forward once more."""
    b, T, real = batch
    g, H, L = GATES[model.cell], model.hidden, model.layers
    dirs = 2 if model.bidirectional else 1
    macs_per_token = sum(dirs * g * H * ((inputs if i == 0 else dirs * H) + H) for i in range(L))
    spf, spc = consts.speed(model.cell, plan["precision"])
    efficiency = b / (b + consts.batch_half)
    rnn = 3 * 2 * real * macs_per_token * spf / efficiency + T * dirs * L * spc
    if plan["mode"] == "exact" and chunk_len(plan["checkpoint_time"], T) < T:
        rnn *= 4 / 3
    return plan["accumulate"] * rnn


def seq2seq_step_seconds(model: ModelCfg, data, plan: dict, batch: tuple[int, int, int],
                         consts: Constants = DEFAULT_CONSTANTS) -> float:
    """Predicted seconds for one optimizer step of an encoder-decoder plan over its largest batch (rows, source
    steps, target steps; memory.estimate_seq2seq.worst_pair_batch): encoder and decoder matmuls, attention,
    the output layer over the target tokens; input feeding steps the decoder one call per target step."""
    b, S, T = batch
    T1 = T + 1
    g, H, E, L = GATES[model.cell], model.hidden, model.embed, model.layers
    dirs = 2 if model.bidirectional else 1
    He = H // dirs
    enc = sum(dirs * g * He * ((E if i == 0 else H) + He) for i in range(L)) * b * S
    dec_in = E + (H if model.input_feed else 0)
    dec = sum(g * H * ((dec_in if i == 0 else H) + H) for i in range(L)) * b * T1
    att = b * T1 * S * H * (2 if model.attention != "additive" else 3) + b * T1 * 2 * H * H
    efficiency = b / (b + consts.batch_half)
    flops = 3 * 2 * (enc + dec + att) / efficiency + 3 * 2 * b * T1 * H * data.tgt_vocab
    calls = S * dirs * L + (T1 * (L + 6) if model.input_feed else T1 * L)
    spf, spc = consts.speed(model.cell, plan["precision"])
    seconds = flops * spf + calls * spc
    if plan["mode"] == "exact" and chunk_len(plan["checkpoint_time"], max(S, T1)) < max(S, T1):
        seconds *= 4 / 3
    if plan["loss"] == "chunked":
        seconds += 2 * b * T1 * H * data.tgt_vocab * spf  # each chunk's logits again
    return plan["accumulate"] * seconds
