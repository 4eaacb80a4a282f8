"""Predicted memory of one encoder-decoder training step, part by part (the seq2seq twin of estimate.py).

Same parts, same budget (anonymous resident bytes on CPU, reserved on CUDA), same replay of one step as
moments, the same per-cell constants for the fused recurrent kernels. What a seq2seq step holds:

    batch        the largest padded batch the sampler makes: B pairs of the longest source + target
    encoder      embedding (B, S, E), its layers (a bidirectional layer: two calls of H / 2 each), and its
                 outputs (B, S, H) with their projection for attention: kept until the decoder's backward
    decoder      embedding (B, T, E); without input feeding a fused stack over T and attention over all
                 steps at once; with it, T single-step calls (per-call buffers T times) and T small attentions,
                 and each call's forward scratch and backward rise are a single step's, not T steps'
    attention    scores and weights (B, T, S) fp32; additive attention keeps a (B, T, S, H) tanh as well, and
                 its backward holds two more of that size (the gradients of the tanh's output and of its input)
                 beside it, before the decoder's own backward starts (one step's worth with input feeding)
    output       h~ (B, T, H), the concatenation [context; h] (B, T, 2H), dropout, the real rows gathered
                 (N, H) and the vocabulary head over N target tokens (full logits or one chunk)
    checkpoint   --checkpoint-time k: encoder and decoder keep boundary states and one chunk at a time
    backward     first the output layer, attention and the decoder on top of everything kept; the encoder's
                 backward comes after the decoder's activations are freed: layer by layer from the top, what
                 the layers below keep, one direction's scratch and the layer output's gradient, with every
                 gradient but the encoder's allocated
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from seqfit.config import RunCfg
from seqfit.memory.constants import DEFAULT_CONSTANTS, Constants
from seqfit.memory.estimate import (F32, GATES, Replay, blas_buffers, chunk_len, dot, head_bytes, optimizer_scratch,
                                    parameter_sizes)

__all__ = ["PairInfo", "worst_pair_batch", "seq2seq_param_shapes", "estimate_seq2seq"]


@dataclass(frozen=True)
class PairInfo:
    """What the estimate needs to know about a pair store."""

    src_vocab: int
    tgt_vocab: int
    top_pairs: tuple[tuple[int, int], ...] = ()  # (source, target) lengths of the longest pairs, longest first

    @property
    def vocab_size(self) -> int:
        """The output layer's vocabulary (what `seqfit plan` reports as the vocabulary)."""
        return self.tgt_vocab


def worst_pair_batch(plan: dict, data: PairInfo) -> tuple[int, int, int]:
    """(rows, padded source steps, padded target steps) of the largest batch: the longest pairs together."""
    pairs = data.top_pairs or ((1, 1),)
    if plan.get("max_tokens"):
        first = pairs[0][0] + pairs[0][1] + 1
        b = max(1, plan["max_tokens"] // first)
    else:
        b = plan["micro_batch"]
    top = pairs[:b]
    return b, max(s for s, _ in top), max(t for _, t in top)


def seq2seq_param_shapes(cfg: RunCfg, data: PairInfo, loss: str) -> list[tuple[str, tuple[int, ...], bool]]:
    """(name, shape, trainable) of every parameter Seq2Seq builds: the model built on the meta device."""
    import torch

    from seqfit.models.seq2seq import Seq2Seq

    with torch.device("meta"):
        model = Seq2Seq(cfg.model, data.src_vocab, data.tgt_vocab, loss=loss)
    return [(name, tuple(p.shape), p.requires_grad) for name, p in model.named_parameters()]


def estimate_seq2seq(cfg: RunCfg, data: PairInfo, plan: dict, consts: Constants = DEFAULT_CONSTANTS) -> dict:
    """Predicted peak bytes of a seq2seq step with the resolved ``plan`` (plan_seq2seq.requested_seq2seq_plan's
    keys); returns the keys estimate.estimate does."""
    from seqfit.nn.chunked_loss import default_chunk_tokens

    m = cfg.model
    b, S, T = worst_pair_batch(plan, data)
    T1 = T + 1  # the decoder's steps: <eos> + target
    acc, device, bf16 = plan["accumulate"], plan["device"], plan["precision"] != "fp32"
    shapes = seq2seq_param_shapes(cfg, data, plan["loss"])
    trainable = [s for _, s, t in shapes if t]
    sizes = parameter_sizes(cfg, shapes)
    coefs = consts.coefs(m.cell, plan["precision"])
    g, L, H, E = GATES[m.cell], m.layers, m.hidden, m.embed
    dirs = 2 if m.bidirectional else 1
    He = H // dirs
    out_b = 2 if bf16 and m.cell != "gru" else F32
    p = m.dropout
    n_src, n_tgt = b * S, b * T1
    N = n_tgt  # real target rows reach the head (the worst batch's pairs are near its longest)

    # -- encoder layers (as estimate_classify: each direction a fused call over the source)
    enc_in = [E if i == 0 else H for i in range(L)]
    enc_params = [g * He * (enc_in[i] + He) for i in range(L)]

    def enc_feats(i: int, tokens: int) -> tuple[int, int, int, int]:
        return (tokens * He, tokens * enc_in[i], b * He, enc_params[i])

    def enc_rise(i: int, tokens: int) -> int:
        """Layer i's backward scratch: one direction's at a time (they run one after the other, as in
        estimate_classify), beside the gradient of the layer's output."""
        return dot(coefs.rise, enc_feats(i, tokens)) + F32 * tokens * H

    def enc_keep(i: int, tokens: int) -> int:
        flipped = (dirs - 1) * tokens * (F32 * enc_in[i] + out_b * He)
        between = 2 * out_b * tokens * H if p and i < L - 1 else 0
        return dirs * coefs.kept(enc_feats(i, tokens), tokens // b) + flipped + between

    # -- decoder layers: fused over T1 steps, or (input feeding) T1 calls of one step each
    feed = m.input_feed
    dec_in = [E + (H if feed else 0) if i == 0 else H for i in range(L)]
    dec_params = [g * H * (dec_in[i] + H) for i in range(L)]

    def dec_feats(i: int, steps: int) -> tuple[int, int, int, int]:
        return (b * steps * H, b * steps * dec_in[i], (steps if feed else 1) * b * H, dec_params[i])

    def dec_keep(i: int, steps: int) -> int:
        between = 2 * out_b * b * steps * H if p and i < L - 1 else 0
        return coefs.kept(dec_feats(i, steps), steps) + between

    def attention_keep(steps: int) -> int:
        """What attention and the attentional output keep for backward over ``steps`` decoder steps."""
        cells = b * steps * S
        keep = 2 * F32 * cells  # softmax output, and the weights as bmm's input (a copy under autocast)
        if m.attention == "additive":
            keep += F32 * cells * H + F32 * b * steps * H  # the (B, T, S, H) tanh; the query projection
        keep += F32 * b * steps * (2 * H + H + H)  # [context; h], tanh output, context
        if feed:
            keep += F32 * b * steps * (dec_in[0])  # each step's concatenated input
        return keep

    def attention_peak(steps: int) -> int:
        """Forward scratch on top of what attention keeps (additive: the sum before its tanh)."""
        cells = b * (1 if feed else steps) * S
        return F32 * cells * (H if m.attention == "additive" else 1)

    def attention_grads(steps: int) -> int:
        """Backward scratch of attention over ``steps`` steps beyond `flow`: additive attention's (B, T, S, H)
        gradients of the tanh's output and input, both alive at the tanh's backward (its output still kept)."""
        return 2 * F32 * b * (1 if feed else steps) * S * H if m.attention == "additive" else 0

    calls = 1 if feed else T1  # steps per decoder call: input feeding makes T1 calls of one step each

    encoder_side = ("encoder.",) if m.share_embeddings else ("encoder.", "src_embedding.")
    enc_grads = F32 * sum(math.prod(s) for name, s, t in shapes if t and name.startswith(encoder_side))
    k = chunk_len(plan["checkpoint_time"], max(S, T1)) if plan["mode"] == "exact" else max(S, T1)
    ks, kt = min(k, S), min(k, T1)
    emb_src = F32 * n_src * E * (2 if p else 1)
    emb_tgt = F32 * n_tgt * E * (2 if p else 1)
    enc_out = out_b * n_src * H + (F32 * n_src * H if m.attention != "dot" else 0)  # outputs, their keys
    drop_out = F32 * n_tgt * H * (2 if p else 1)  # h~ after dropout (and its mask)
    gathered = F32 * N * H
    chunk = plan.get("loss_chunk") or default_chunk_tokens(data.tgt_vocab, N, 2 if bf16 else 4)
    head = head_bytes(plan["loss"], N, data.tgt_vocab, H, plan["precision"], chunk, None, device)
    held = head["held"]  # the chunked loss's buffer, kept from step to step on CPU
    data_bytes = acc * (8 * b * (S + 2 * T1) + 16 * b)
    runtime = consts.baseline + int(coefs.const) + blas_buffers(N, E, H, data.tgt_vocab, g, plan["loss"], device, consts)
    r = Replay(baseline=runtime, weights=sizes["weights"], optimizer_state=sizes["optimizer_state"], data=data_bytes)
    for micro in range(2 if acc > 1 else 1):
        grads = sizes["gradients"] if micro else 0
        r.now.update(gradients=grads, activations=0, temporaries=0, output_loss=held)
        if plan["mode"] == "full":
            enc = sum(enc_keep(i, n_src) for i in range(L))
            r.moment("forward", activations=emb_src + enc + max(dot(coefs.fwd, enc_feats(i, n_src)) for i in range(L)))
            dec = sum(dec_keep(i, T1) for i in range(L))
            att = attention_keep(T1)
            r.now["activations"] = emb_src + enc + enc_out + emb_tgt + dec + att + drop_out + gathered
            r.moment("forward", activations=attention_peak(T1) + max(dot(coefs.fwd, dec_feats(i, calls)) for i in range(L)))
            # attention's backward comes first (additive: its gradients beside the kept tanh), then the decoder's
            dec_rise = max(attention_grads(T1), max(dot(coefs.rise, dec_feats(i, calls)) for i in range(L)))
            # the encoder's layers backward from the top, each freeing what it kept (estimate_classify)
            enc_back = emb_src + max(sum(enc_keep(j, n_src) for j in range(i + 1)) + enc_rise(i, n_src) for i in range(L))
        else:
            # boundary states of both stacks, the encoder's outputs (attention needs all of them), one chunk
            states = ((math.ceil(S / ks) + 1) + (math.ceil(T1 / kt) + 1)) * L * (2 if m.cell == "lstm" else 1) * F32 * b * H
            if dirs == 2:  # a bidirectional stack is checkpointed a layer at a time: its outputs stay (estimate_classify)
                states += emb_src + L * 4 * F32 * n_src * H
            enc_chunk = F32 * b * ks * E + sum(enc_keep(i, b * ks) for i in range(L))
            dec_chunk = F32 * b * kt * E + sum(dec_keep(i, kt) for i in range(L)) + attention_keep(kt)
            r.now["activations"] = states + emb_src + enc_out + emb_tgt + out_b * n_tgt * H + drop_out + gathered
            r.moment("forward", activations=max(enc_chunk, dec_chunk) + attention_peak(kt))
            dec_rise = dec_chunk + max(attention_grads(kt), max(dot(coefs.rise, dec_feats(i, min(calls, kt)))
                                                                for i in range(L)))
            # the gradient of the encoder's outputs (the whole source) beside one chunk's layers backward
            enc_back = states + emb_src + F32 * n_src * H + enc_chunk + max(enc_rise(i, b * ks) for i in range(L))
        r.moment("loss", output_loss=head["keep"] + head["fwd"])
        r.now["output_loss"] = held + head["keep"]
        r.moment("loss backward", output_loss=head["bwd"])
        r.moment("loss backward", output_loss=head["bwd_linear"] - head["keep"], activations=F32 * N * H)
        r.now["output_loss"] = held
        # backward: the features' gradient (B, T, H), attention's (B, T, S) gradients, one layer's scratch
        flow = F32 * n_tgt * H * 2 + 2 * F32 * b * T1 * S
        r.moment("backward", activations=flow + dec_rise, gradients=0 if micro else sizes["gradients"] // 2)
        # then the encoder's: the decoder's activations are freed by now, every gradient but the encoder's exists
        r.moment("backward", activations=enc_back - r.now["activations"],
                 gradients=0 if micro else sizes["gradients"] - enc_grads)
        r.now["gradients"] = sizes["gradients"]
    largest = F32 * max((math.prod(s) for s in trainable), default=0)
    r.now.update(activations=0, output_loss=held,
                 temporaries=optimizer_scratch(cfg, device, {**sizes, "largest_parameter": largest}))
    r.moment("optimizer")
    return {"peak": r.peak, "parts": r.parts, "phase": r.phase, "phases": r.phases, "sizes": sizes,
            "layers": [], "chunk_steps": k, "batch": (b, S, T)}
