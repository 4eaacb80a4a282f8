"""Predicted memory of one training run, part by part: pure functions of sizes, dtypes and constants.

What the budget governs. On CPU: anonymous resident memory (heap, tensors, the runtime itself); on
CUDA: the caching allocator's reserved bytes. File-backed resident pages are left out on purpose: the
token store is memory-mapped, and its pages (like those of shared libraries) are clean copies of a file
that the kernel drops and re-reads under pressure instead of killing the process, so they compete for
page cache, not for the budget. `seqfit.measure.memory.read_memory` reports both halves.

The peak is not a sum of sizes: gradients do not exist during the forward pass (they are set to None
at each step), activations are freed layer by layer as backward walks down, and the output layer's
vocabulary-sized buffers come and go first. So the estimate replays one step as a sequence of moments
(forward through each layer, loss forward, loss backward, each layer's backward, the optimizer step;
with accumulation, a second micro-batch with the gradients already there) and reports the largest.
Its ``parts`` are the bytes of each kind alive at that moment, so they add up to the peak exactly.

    baseline          python + torch + seqfit after a first step (measured: constants.baseline), plus
                      the packing buffers the BLAS library keeps after its largest matmul
    weights           fp32 parameters
    gradients         .grad tensors alive at the peak (all of them after the first micro-batch)
    optimizer_state   momentum / Adam moments / Adafactor factors (optimizer_state_bytes)
    activations       what forward keeps for backward, plus backward scratch of the layer at work
    output_loss       logits / log-softmax / their gradients (full), one chunk (chunked), clusters (adaptive)
    data              the batch's token ids
    temporaries       optimizer-step scratch

(bf16 copies autocast makes of the recurrent weights count with the activations: constants.py.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from seqfit.config import ModelCfg, RunCfg
from seqfit.memory.allocator import MMAP_THRESHOLD
from seqfit.memory.constants import DEFAULT_CONSTANTS, Constants, dot
from seqfit.memory.pool_plan import window_pool_slack

__all__ = ["DataInfo", "PARTS", "GATES", "F32", "param_shapes", "static_bytes", "estimate", "chunk_len",
           "phase_predictions", "Replay", "dot", "blas_buffers", "optimizer_scratch", "head_bytes", "parameter_sizes"]

PARTS = ("baseline", "weights", "gradients", "optimizer_state", "activations", "output_loss", "data", "temporaries")
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
F32 = 4


@dataclass(frozen=True)
class DataInfo:
    """What the estimate needs to know about the data: vocabulary size, and (optional) split sizes and counts."""

    vocab_size: int
    train_tokens: int = 0  # 0: unknown (what-if planning with --vocab-size)
    counts: tuple[int, ...] | None = None  # per-id corpus counts, for the adaptive head's cutoffs


def chunk_len(checkpoint_time: int, steps: int) -> int:
    """Time-chunk length k for --checkpoint-time (as models/timechunk.resolve_chunk): -1 -> ceil(sqrt(T))."""
    if checkpoint_time == 0:
        return steps
    k = math.ceil(math.sqrt(steps)) if checkpoint_time < 0 else checkpoint_time
    return max(1, min(k, steps))


def _adaptive_layout(hidden: int, vocab: int, counts) -> tuple[list[int], list[int]]:
    """(cutoffs + [V], projection size of each tail) exactly as heads.AdaptiveHead builds them."""
    from seqfit.models.heads import adaptive_cutoffs  # torch import: only when the adaptive head is asked for

    cutoffs = adaptive_cutoffs(counts if counts is not None else [1.0 / (i + 1) for i in range(vocab)])
    div, tails = 4.0, 0
    while tails < len(cutoffs) and hidden // div ** (tails + 1) >= 4:
        tails += 1
    if tails == 0:
        div, tails = 1.0, len(cutoffs)
    cutoffs = cutoffs[:tails]
    return cutoffs + [vocab], [int(hidden // div ** (i + 1)) for i in range(len(cutoffs))]


def param_shapes(model: ModelCfg, vocab: int, loss: str, counts=None) -> list[tuple[str, tuple[int, ...], bool]]:
    """(name, shape, trainable) of every parameter the language model will have (one entry per tensor)."""
    g = GATES[model.cell]
    shapes = [("embedding", (vocab, model.embed), not model.freeze_embeddings)]
    for i in range(model.layers):
        inp = model.embed if i == 0 else model.hidden
        gh = g * model.hidden
        shapes += [(f"layer{i}.w_ih", (gh, inp), True), (f"layer{i}.w_hh", (gh, model.hidden), True),
                   (f"layer{i}.b_ih", (gh,), True), (f"layer{i}.b_hh", (gh,), True)]
        if model.layer_norm:
            shapes += [(f"norm{i}.weight", (model.hidden,), True), (f"norm{i}.bias", (model.hidden,), True)]
    if loss == "adaptive":
        bounds, proj = _adaptive_layout(model.hidden, vocab, counts)
        shapes.append(("head.head", (bounds[0] + len(proj), model.hidden), True))
        for i, p in enumerate(proj):
            shapes += [(f"head.tail{i}.proj", (p, model.hidden), True),
                       (f"head.tail{i}.out", (bounds[i + 1] - bounds[i], p), True)]
    else:
        if not model.tie_weights:
            shapes.append(("head.weight", (vocab, model.hidden), True))
        shapes.append(("head.bias", (vocab,), True))
    return shapes


def _numel(shape) -> int:
    return math.prod(shape)


def static_bytes(cfg: RunCfg, data: DataInfo, loss: str) -> dict[str, int]:
    """Weights, gradients and optimizer state at full size (fp32 parameters; see train/optim.py)."""
    from seqfit.nn.optim import optimizer_state_bytes

    shapes = param_shapes(cfg.model, data.vocab_size, loss, data.counts)
    trainable = [s for _, s, t in shapes if t]
    return {"weights": F32 * sum(_numel(s) for _, s, _ in shapes),
            "gradients": F32 * sum(_numel(s) for s in trainable),
            "optimizer_state": optimizer_state_bytes(cfg.train.optimizer, trainable, momentum=cfg.train.momentum)
            + (F32 * sum(_numel(s) for s in trainable) if cfg.train.average != "off" else 0),  # NT-ASGD's mean
            "parameters": sum(_numel(s) for _, s, _ in shapes),
            "largest_parameter": F32 * max(_numel(s) for s in trainable) if trainable else 0}


def parameter_sizes(cfg: RunCfg, shapes: list[tuple[str, tuple[int, ...], bool]]) -> dict[str, int]:
    """Weights, gradients and optimizer state (bytes) and the parameter count of (name, shape, trainable) shapes."""
    from seqfit.nn.optim import optimizer_state_bytes

    trainable = [s for _, s, t in shapes if t]
    return {"weights": F32 * sum(_numel(s) for _, s, _ in shapes),
            "gradients": F32 * sum(_numel(s) for s in trainable),
            "optimizer_state": optimizer_state_bytes(cfg.train.optimizer, trainable, momentum=cfg.train.momentum),
            "parameters": sum(_numel(s) for _, s, _ in shapes)}


def optimizer_scratch(cfg: RunCfg, device: str, sizes: dict[str, int]) -> int:
    """Bytes the optimizer step allocates on top of weights, gradients and state.

    Adam and AdamW run fused (nn/optim.py): one kernel a parameter, no temporaries, weight decay included.
    The others on CPU run torch's per-parameter loop (foreach kernels are CUDA-only), so scratch is per
    parameter: Adafactor's three factored temporaries of the largest parameter, an L2 term added to SGD's
    gradient. On CUDA the foreach path makes the same temporaries for all at once.
    """
    name, t = cfg.train.optimizer, cfg.train
    unit = sizes["gradients"] if device == "cuda" else sizes["largest_parameter"]
    temps = {"sgd": 0, "adam": 0, "adamw": 0, "adafactor": 3}[name]
    if t.weight_decay and name == "sgd":
        temps += 1
    if name == "sgd" and t.momentum:
        temps = max(temps, 1)  # the first step clones the gradient into the buffer
    return temps * unit


class Replay:
    """Bytes alive by part while one step is replayed; keeps the largest moment and its composition."""

    def __init__(self, **start: int):
        self.now = dict.fromkeys(PARTS, 0) | start
        self.peak, self.phase, self.parts = -1, "", {}
        self.phases: dict[str, int] = {}

    def moment(self, phase: str, **extra: int) -> None:
        parts = dict(self.now)
        for k, v in extra.items():
            parts[k] += v
        total = sum(parts.values())
        self.phases[phase] = max(self.phases.get(phase, 0), total)
        if total > self.peak:
            self.peak, self.phase, self.parts = total, phase, parts


def head_bytes(loss: str, n: int, vocab: int, hidden: int, precision: str, chunk: int, counts,
               device: str = "cpu") -> dict[str, int]:
    """Vocabulary-sized buffers of the output layer for n tokens: kept for backward, each phase's extra, and
    "held": what stays from step to step (the chunked loss's (C, V) buffer on CPU, nn/chunked_loss.LossWorkspace)."""
    bf16 = precision != "fp32"
    if loss == "full" and precision == "bf16":
        # train/narrow_loss.py: bf16 logits kept (their gradient overwrites them), fp32 softmax in ~4 MiB row
        # blocks; backward's two bf16 GEMMs are widened to fp32 afterwards
        block = max(8, 4 * 2**20 // (F32 * vocab)) * vocab * F32
        keep = 2 * n * vocab + 2 * (n + vocab) * hidden + F32 * n
        return {"keep": keep, "fwd": block, "bwd": block + 6 * (n + vocab) * hidden, "bwd_linear": 0, "held": 0}
    if loss == "full":
        # F.linear -> (.float()) -> log_softmax (kept); backward: the log-softmax's gradient and the logits'
        # (fp32) beside it; under bf16 the logits' gradient is then cast down for the linear's backward
        logits = n * vocab * (2 if bf16 else F32)
        keep = F32 * n * vocab
        fwd = logits + (F32 * n * vocab if bf16 else 0)
        cast = 2 * (vocab * hidden + n * hidden) if bf16 else 0  # bf16 copies of the weight and features
        return {"keep": keep + cast, "fwd": fwd, "bwd": 2 * F32 * n * vocab, "bwd_linear": logits, "held": 0}
    if loss == "chunked":
        # the runtime's own rules, not copies of them
        from seqfit.nn.chunked_loss import block_rows, fresh_logits_used, kept_buffer_bytes

        c = min(chunk, n)
        narrow = 2 if bf16 else 0
        fresh = fresh_logits_used(device, precision)
        # a one-chunk call's buffers, kept between steps
        held = kept_buffer_bytes(device, n, chunk, vocab, fresh, narrow, hidden)
        # (C, V) fp32 buffer (fresh from oneDNN or kept); under bf16 a (C, V) bf16 one (the matmul's output, then the
        # gradient cast) and a block of fp32 rows
        buf = c * vocab * narrow + min(block_rows(vocab), c) * vocab * F32 if bf16 else c * vocab * F32
        w = narrow * vocab * hidden  # bf16 copy of the weight
        # the forward makes the weight's and the features' fp32 gradients (nn/chunked_loss.py) and keeps them
        # until backward scales them in place; each chunk's (V, H) partial product (bf16, or fp32 from oneDNN)
        # is added to them
        grads = F32 * vocab * hidden + F32 * n * hidden
        partial = (F32 if fresh else narrow) * vocab * hidden
        return {"keep": grads, "fwd": buf + w + partial - held, "bwd": 0, "bwd_linear": 0, "held": held}
    # adaptive: the head cluster's logits for all tokens, each tail's for the share of tokens it holds
    bounds, proj = _adaptive_layout(hidden, vocab, counts)
    width = bounds[0] + len(proj)
    share = _tail_shares(bounds, vocab, counts)
    tail = sum(s * n * (p + (hi - lo)) for s, p, lo, hi in zip(share, proj, bounds, bounds[1:]))
    keep = int(F32 * (n * width + tail))
    return {"keep": keep + F32 * n * hidden, "fwd": keep, "bwd": 2 * keep, "bwd_linear": 0, "held": 0}


def _tail_shares(bounds: list[int], vocab: int, counts) -> list[float]:
    weights = counts if counts is not None else [1.0 / (i + 1) for i in range(vocab)]
    total = float(sum(weights))
    return [sum(weights[lo:hi]) / total for lo, hi in zip(bounds, bounds[1:])]


def estimate(cfg: RunCfg, data: DataInfo, plan: dict, consts: Constants = DEFAULT_CONSTANTS) -> dict:
    """Predicted peak bytes of training ``cfg`` with the resolved ``plan`` (keys as plan.requested_plan).

    Returns {"peak", "parts" (bytes by part at the peak, summing to it), "phase" (where it peaks),
    "phases" (each phase's own peak), "sizes" (weights/gradients/optimizer state at full size),
    "layers" (activation bytes each recurrent layer keeps)}.
    """
    m, V = cfg.model, data.vocab_size
    if m.task != "lm":
        from seqfit.errors import SeqfitError

        raise SeqfitError(f"the memory planner covers language models (task lm), not {m.task!r}")
    b, T, acc = plan["micro_batch"], plan["bptt"], plan["accumulate"]
    bf16 = plan["precision"] != "fp32"
    loss, device = plan["loss"], plan["device"]
    chunk = plan.get("loss_chunk") or _default_chunk(V, b * T, bf16)
    sizes = static_bytes(cfg, data, loss)
    coefs = consts.coefs(m.cell, plan["precision"])
    k = chunk_len(plan.get("checkpoint_time", 0), T)
    n, E, H, L = b * T, m.embed, m.hidden, m.layers
    p = m.dropout
    out_b = 2 if bf16 and m.cell != "gru" else F32  # autocast runs LSTM/RNN in bf16; GRU's output stays fp32
    g = GATES[m.cell]
    layer_params = [g * H * ((E if i == 0 else H) + H) for i in range(L)]
    head = head_bytes(loss, n, V, H, plan["precision"], chunk, data.counts, device)
    held = head["held"]
    # Native GRU/RNN kernels allocate a few (b, H) tensors per time step. Below the allocator's mmap
    # threshold they come from the heap, whose holes stay resident: the forward's scratch between the
    # saved tensors stays, and what backward frees is not returned before the step ends.
    heap = device == "cpu" and m.cell != "lstm" and F32 * b * H < MMAP_THRESHOLD
    residue = 0  # heap bytes freed but still resident
    data_bytes = 8 * b * acc * (T + 1) + 16 * n  # the (B, T+1) int64 window; per micro-batch id copies
    rnn_grads = F32 * sum(lp + 2 * g * H + (2 * H if m.layer_norm else 0) for lp in layer_params)
    head_grad = sizes["gradients"] - rnn_grads - (F32 * V * E if not m.freeze_embeddings else 0)  # output layer's

    # gradients written into the last step's memory (nn/spare_grads.py): held from the step's start until the
    # kernel that takes them makes the new gradient in them
    spares = {}
    if plan.get("spare_grads"):
        from seqfit.models.lm import spare_grad_bytes

        spares = spare_grad_bytes(m, V, loss)
    loss_spare, emb_spare = spares.get("loss", 0), spares.get("embedding", 0)
    runtime = (consts.baseline + int(coefs.const) + blas_buffers(n, E, H, V, g, loss, device, consts)
               + window_pool_slack(plan))
    r = Replay(baseline=runtime, weights=sizes["weights"], optimizer_state=sizes["optimizer_state"], data=data_bytes,
               output_loss=held)
    layers_kept = []
    for micro in range(2 if acc > 1 else 1):
        grads_before = sizes["gradients"] if micro else 0
        r.now["gradients"] = grads_before + (0 if micro else loss_spare + emb_spare)
        r.now["activations"] = 0
        r.now["temporaries"] = 0

        def layer_feats(i: int, tokens: int) -> tuple[int, int, int, int]:
            return (tokens * H, tokens * (E if i == 0 else H), b * H, layer_params[i])  # see constants.py

        # ---- forward: embedding (+ dropout: CPU dropout keeps a same-dtype noise tensor and its output)
        emb = F32 * n * E
        r.moment("forward", activations=emb * (3 if p else 1))
        r.now["activations"] = emb * (2 if p else 1)
        drop_keep = (2 * out_b if p else 0) * n * H  # per dropout after a layer
        if k < T:  # exact time-chunked checkpointing: only boundary states and chunk outputs stay
            states = (math.ceil(T / k) + 1) * L * (2 if m.cell == "lstm" else 1) * F32 * b * H
            # inside a checkpoint nothing is saved: one layer's buffers for one chunk exist at a time
            chunk_peak = max(coefs.kept(layer_feats(i, b * k), k) + dot(coefs.fwd, layer_feats(i, b * k))
                             for i in range(L))
            residue = chunk_peak if heap else 0
            r.moment("forward", activations=states + out_b * n * H + chunk_peak)
            r.moment("forward", activations=states + 2 * out_b * n * H)  # torch.cat of the chunk outputs
            r.moment("forward", activations=states + out_b * n * H + drop_keep)  # the final dropout
            r.now["activations"] += states + (drop_keep if p else out_b * n * H)
            # what a chunk's recompute keeps for its backward: every layer, plus the dropouts between them
            between = (L - 1) * 2 * out_b * b * k * H if p else 0
            kept = [sum(coefs.kept(layer_feats(i, b * k), k) for i in range(L)) + between]
        else:
            kept = []
            for i in range(L):
                f = layer_feats(i, n)
                keep = coefs.kept(f, T) + (4 * F32 * n * H if m.layer_norm else 0)
                keep += dot(coefs.fwd, f) // 2 if heap else 0  # its scratch leaves holes between what it keeps
                r.moment("forward", activations=keep + dot(coefs.fwd, f))
                r.now["activations"] += keep + drop_keep
                if not p and m.cell != "lstm":
                    r.now["activations"] += out_b * n * H  # the layer's output lives on as the next input
                kept.append(keep)
        layers_kept = kept
        # ---- loss forward (its weight gradient made in the spare, when there is one)
        keep = head["keep"] - (0 if micro else loss_spare)
        r.moment("loss", output_loss=keep + head["fwd"])
        r.now["output_loss"] = held + keep
        # ---- loss backward (vocabulary-sized gradients), then the head's weight gradient
        # (a tied weight's gradient is the embedding's, which head_grad leaves out; its spare stays counted)
        new_grad = head_grad - (0 if micro or m.tie_weights else loss_spare)
        r.moment("loss backward", output_loss=head["bwd"])
        r.moment("loss backward", output_loss=head["bwd_linear"] - keep, activations=F32 * n * H,
                 gradients=new_grad)
        r.now["output_loss"] = held
        r.now["gradients"] = grads_before + (0 if micro else new_grad + loss_spare + emb_spare)
        flow = out_b * n * H  # gradient of the features (in the layers' dtype), then of each layer's input
        if k < T:
            # backward recomputes one chunk at a time: its keep and the top layer's scratch, beside the whole
            # feature gradient and the (B, T, E) buffer autograd sums each chunk's input gradient into
            r.now["activations"] -= drop_keep if p else 0
            rise = max(dot(coefs.rise, layer_feats(i, b * k)) for i in range(L))
            r.moment("backward", activations=kept[0] + rise + flow + 2 * F32 * n * E,
                     gradients=max(layer_params) * F32 if micro else rnn_grads)
            r.now["activations"] = emb * (2 if p else 1) + residue
            r.now["gradients"] += 0 if micro else rnn_grads
            flow = F32 * n * E
        else:
            r.now["activations"] -= drop_keep  # the last dropout's backward runs first
            for i in reversed(range(L)):
                f = layer_feats(i, n)
                layer_grad = F32 * (layer_params[i] + 2 * g * H)
                r.moment("backward", activations=dot(coefs.rise, f) + flow, gradients=layer_grad)
                r.now["activations"] -= (0 if heap else kept[i]) + (drop_keep if i else 0)
                residue += kept[i] if heap else 0
                if not p and m.cell != "lstm":
                    r.now["activations"] -= out_b * n * H
                r.now["gradients"] += 0 if micro else layer_grad
                flow = F32 * n * E if i == 0 else out_b * n * H
        emb_grad = F32 * V * E if not m.freeze_embeddings else 0
        r.moment("backward", activations=flow + F32 * n * E, gradients=emb_grad - (0 if micro else emb_spare))
    # ---- optimizer step: weights, all gradients, state, and the step's scratch
    r.now.update(activations=residue, output_loss=held, temporaries=optimizer_scratch(cfg, device, sizes),
                 gradients=sizes["gradients"])
    r.moment("optimizer")
    return {"peak": r.peak, "parts": r.parts, "phase": r.phase, "phases": r.phases,
            "sizes": {k: sizes[k] for k in ("weights", "gradients", "optimizer_state", "parameters")},
            "layers": layers_kept, "chunk_steps": k}


# the estimate's moments -> the phases a PhaseProfiler (seqfit profile) measures
_PROFILE_PHASES = {"forward": "forward", "loss": "loss", "loss backward": "backward", "backward": "backward",
                   "optimizer": "optimizer"}


def phase_predictions(est: dict, measured_base: int) -> dict[str, int]:
    """Predicted peak of each profiler phase above ``measured_base``: the bytes a PhaseProfiler measured before
    the model existed (its ``over_base`` baseline). The estimate's totals are absolute (runtime included), so
    ratio 1.0 in `seqfit profile` means the absolute prediction was exact."""
    out: dict[str, int] = {}
    for moment, total in est["phases"].items():
        phase = _PROFILE_PHASES.get(moment, moment)
        out[phase] = max(out.get(phase, 0), total - measured_base, 0)
    return out


def blas_buffers(n: int, E: int, H: int, V: int, gates: int, loss: str, device: str, consts: Constants) -> int:
    """Bytes the BLAS library keeps after its largest matmul (reused, never returned).

    CPU (MKL, per-thread packing panels), measured here: 0.4 MB after a 256^3 matmul, 2 MB after
    1024x512x1024, 12.4 MB (the cap, 2 threads) after 4800x512x10000 -- about half of k x (m + n)
    fp32 elements, up to consts.blas_cap. CUDA: cuBLAS's workspace, consts.blas_cap.
    """
    if device == "cuda":
        return consts.blas_cap
    out = V if loss != "adaptive" else min(V, 2 * H + 64)
    shapes = [(n, H, out), (n, max(E, H), gates * H)]  # output layer; a layer's input projection
    return int(min(consts.blas_cap, max(2 * k * (m + o) for m, k, o in shapes)))


def _default_chunk(vocab: int, tokens: int, bf16: bool) -> int:
    """The chunk the chunked loss takes when --loss-chunk is 0: the runtime's own function, not a copy of it."""
    from seqfit.nn.chunked_loss import default_chunk_tokens

    return default_chunk_tokens(vocab, tokens, 2 if bf16 else 4)
