"""Predicted memory of one classifier training step, part by part (the classifier's twin of estimate.py).

Same parts, same meaning of the budget (anonymous resident bytes on CPU, reserved on CUDA), same
replay of one step as a sequence of moments, and the same per-cell constants: a classifier layer
runs the fused kernels a language model does (seqfit.nn.timechunk.run_direction), one call per
direction. What differs:

    batch        the largest padded batch the sampler makes: micro-batch x the longest sequence
                 (after --max-length), or --max-tokens padded tokens
    inputs       an embedding (B, T, E), or the float features themselves (B, T, F)
    directions   a bidirectional layer is two calls on the same input, and its reverse direction
                 works on a per-row flipped copy of that input and of its output
    output       pooled (B, D) -> class logits (B, C): tiny; no vocabulary-sized buffers
    modes        full (every step kept), exact (--checkpoint-time k: boundary states plus one chunk
                 recomputed in backward), truncated (--bptt k: one chunk kept at a time)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from seqfit.config import RunCfg
from seqfit.memory.constants import DEFAULT_CONSTANTS, Constants
from seqfit.memory.estimate import (
    F32,
    GATES,
    Replay,
    blas_buffers,
    chunk_len,
    dot,
    optimizer_scratch,
    parameter_sizes,
)
from seqfit.memory.pool_plan import CLASSIFIER_POOL_SLACK, pool_slack

__all__ = ["SequenceInfo", "classifier_param_shapes", "estimate_classifier", "worst_batch"]


@dataclass(frozen=True)
class SequenceInfo:
    """What the estimate needs to know about a sequence store."""

    num_classes: int
    vocab_size: int = 0  # token sequences
    num_features: int = 0  # numeric sequences
    longest: int = 0  # the train split's longest sequence
    top_lengths: tuple[int, ...] = ()  # its longest lengths, longest first (the worst batch's real tokens)


def classifier_param_shapes(cfg: RunCfg, data: SequenceInfo) -> list[tuple[str, tuple[int, ...], bool]]:
    """(name, shape, trainable) of every parameter SequenceClassifier builds."""
    m = cfg.model
    g, dirs = GATES[m.cell], 2 if m.bidirectional else 1
    shapes = []
    if data.vocab_size:
        shapes.append(("embedding", (data.vocab_size, m.embed), not m.freeze_embeddings))
    first = m.embed if data.vocab_size else data.num_features
    for i in range(m.layers):
        inp = first if i == 0 else dirs * m.hidden
        for d in range(dirs):
            shapes += [(f"layer{i}.{d}.w_ih", (g * m.hidden, inp), True), (f"layer{i}.{d}.w_hh", (g * m.hidden, m.hidden), True),
                       (f"layer{i}.{d}.b_ih", (g * m.hidden,), True), (f"layer{i}.{d}.b_hh", (g * m.hidden,), True)]
        if m.layer_norm:
            shapes += [(f"norm{i}.weight", (dirs * m.hidden,), True), (f"norm{i}.bias", (dirs * m.hidden,), True)]
    shapes += [("head.weight", (data.num_classes, dirs * m.hidden), True), ("head.bias", (data.num_classes,), True)]
    return shapes


def worst_batch(plan: dict, data: SequenceInfo) -> tuple[int, int, int]:
    """(rows, padded steps, real tokens) of the largest batch: the longest sequences fill a batch of their own.
    Kernels run over real tokens only (models/timechunk.run_direction); inputs and outputs are padded."""
    cap = plan.get("max_length") or data.longest
    T = max(1, min(data.longest, cap))
    b = max(1, plan["max_tokens"] // T) if plan.get("max_tokens") else plan["micro_batch"]
    top = [min(n, cap) for n in data.top_lengths[:b]]
    real = sum(top) + T * (b - len(top))  # rows beyond the known lengths: counted as full
    return b, T, real


def estimate_classifier(cfg: RunCfg, data: SequenceInfo, plan: dict, consts: Constants = DEFAULT_CONSTANTS) -> dict:
    """Predicted peak bytes of a classifier step with the resolved ``plan`` (plan_classify.requested_classify_plan's
    keys); returns the keys estimate.estimate does."""

    m = cfg.model
    b, T, real = worst_batch(plan, data)
    acc, device = plan["accumulate"], plan["device"]
    bf16 = plan["precision"] != "fp32"
    mode = plan["mode"]
    k = plan["bptt"] if mode == "truncated" else chunk_len(plan["checkpoint_time"], T) if mode == "exact" else T
    k = min(k, T)
    shapes = classifier_param_shapes(cfg, data)
    trainable = [s for _, s, t in shapes if t]
    sizes = parameter_sizes(cfg, shapes)
    coefs = consts.coefs(m.cell, plan["precision"])
    g, dirs, H, L = GATES[m.cell], 2 if m.bidirectional else 1, m.hidden, m.layers
    E = m.embed if data.vocab_size else data.num_features
    D = dirs * H
    out_b = 2 if bf16 and m.cell != "gru" else F32  # as estimate.py: autocast runs LSTM/RNN in bf16
    inputs = [E if i == 0 else D for i in range(L)]
    params = [g * H * (inputs[i] + H) for i in range(L)]  # one direction's weights

    # The cell constants are fitted on a language model, whose CPU GRU and RNN hold about 4-8 bytes per input value
    # (n I) beside their own state; a classifier's hold none (E = 32 against 512, 16 x 800 tokens, H = 256: 9.7 and
    # 4.5 bytes per n I under the constants, and with n I dropped both within 1.4% of the measured peak). What they
    # keep and their forward scratch leave n I out here; the backward's gradient of the input stays.
    input_kept = 0 if device == "cpu" and m.cell != "lstm" else 1

    def feats(i: int, steps: int, with_input: int = 1) -> tuple[int, int, int, int]:
        """The kernel's sizes over ``steps`` padded steps: it runs over the real tokens among them only."""
        tokens = real * steps // T
        return (tokens * H, with_input * tokens * inputs[i], b * H, params[i])

    def layer_keep(i: int, steps: int) -> int:
        """What layer i keeps for backward: each direction's kernel state, a reverse direction's flipped copies
        of its input and output, and the layer's (padded) output with its dropout between layers."""
        padded = b * steps
        flipped = (dirs - 1) * padded * (F32 * inputs[i] + out_b * H)
        if m.dropout and i < L - 1:
            out = 2 * out_b * padded * D  # the dropout's mask and output
        else:  # as in estimate.py: oneDNN's LSTM keeps its output among its own buffers, GRU/RNN do not
            out = 0 if m.cell == "lstm" else out_b * padded * D
        return dirs * coefs.kept(feats(i, steps, input_kept), steps) + flipped + out

    def layer_fwd(i: int, steps: int) -> int:
        # the directions run one after the other: one's scratch at a time, plus the concatenated output
        return dot(coefs.fwd, feats(i, steps, input_kept)) + out_b * b * steps * D

    def layer_rise(i: int, steps: int) -> int:
        return dot(coefs.rise, feats(i, steps)) + out_b * b * steps * D  # + the output's gradient

    # the padded micro-batches of a step: int64 ids (B, T) or float32 rows (B, T, F); lengths and labels
    data_bytes = acc * (b * T * (4 * data.num_features if data.num_features else 8) + 16 * b)
    runtime = consts.baseline + int(coefs.const) + blas_buffers(b * T, E, H, data.num_classes, g, "full", device, consts)
    emb = F32 * b * T * E  # the embedding (or the widened features), and its dropout
    emb_kept = emb * (2 if m.dropout else 1)
    r = Replay(baseline=runtime, weights=sizes["weights"], optimizer_state=sizes["optimizer_state"], data=data_bytes)
    kept: list[int] = []
    for micro in range(2 if acc > 1 else 1):
        grads = sizes["gradients"] if micro else 0
        r.now.update(gradients=grads, activations=0, temporaries=0)
        if mode == "full":
            r.moment("forward", activations=emb_kept + emb)
            r.now["activations"] = emb_kept
            for i in range(L):
                r.moment("forward", activations=layer_keep(i, T) + layer_fwd(i, T))
                r.now["activations"] += layer_keep(i, T)
            kept = [layer_keep(i, T) for i in range(L)]
            pool = out_b * b * T * D if m.pooling == "mean" else 0  # the masked outputs summed over time
            r.moment("loss", activations=pool)
            for i in reversed(range(L)):
                r.moment("backward", activations=layer_rise(i, T), gradients=F32 * dirs * (params[i] + 2 * g * H))
                r.now["activations"] -= kept[i]
            r.moment("backward", activations=2 * emb)
        else:
            # exact: boundary states kept, one chunk (inputs made inside it) recomputed per backward step;
            # truncated: a chunk's forward and backward run before the next chunk starts
            states = (math.ceil(T / k) + 1) * L * dirs * (2 if m.cell == "lstm" else 1) * F32 * b * H
            if dirs == 2 and mode == "exact":
                # a bidirectional stack is checkpointed a layer at a time (its reverse direction needs the end
                # first): the whole input and each layer's outputs, their concatenation and dropout stay, O(T).
                # Measured 2.5-4 x (b, T, 2H) per layer (1-layer LSTM, 2-layer GRU): the upper end, the safe side.
                states += emb_kept + L * 4 * F32 * b * T * D
            chunk_emb = F32 * b * k * E * (2 if m.dropout else 1)
            chunk_keep = chunk_emb + sum(layer_keep(i, k) for i in range(L))
            kept = [layer_keep(i, k) for i in range(L)]
            r.moment("forward", activations=states + chunk_keep + max(layer_fwd(i, k) for i in range(L)))
            r.now["activations"] = states if mode == "exact" else 0
            rise = chunk_keep + max(layer_rise(i, k) for i in range(L))
            # with the buffer pool, freed chunk buffers stay in the heap between their uses (memory/pool_plan.py)
            held = pool_slack(rise, CLASSIFIER_POOL_SLACK) if plan.get("buffer_pool") else 0
            r.moment("backward", activations=rise, temporaries=held,
                     gradients=sizes["gradients"] - grads if not micro else 0)
        r.now["gradients"] = sizes["gradients"]
    largest = F32 * max((math.prod(s) for s in trainable), default=0)
    r.now.update(activations=0, temporaries=optimizer_scratch(cfg, device, {**sizes, "largest_parameter": largest}))
    r.moment("optimizer")
    return {"peak": r.peak, "parts": r.parts, "phase": r.phase, "phases": r.phases, "sizes": sizes,
            "layers": kept, "chunk_steps": k, "batch": (b, T, real)}
