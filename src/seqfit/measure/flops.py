"""Model FLOPs of a training step: the matrix products of the recurrent layers and the output layer.

A layer of a cell with g gates (LSTM 4, GRU 3, RNN 1), input I and hidden H multiplies each token's
[x; h] (I + H) by a (I + H) x gH matrix: 2 g H (I + H) FLOPs per token and direction. The output
layer is 2 H V per scored position. Backward costs two products per forward one (the gradients of
the input and of the weight), so a step is 3x forward -- the convention of MFU (PaLM, appendix B;
nanoGPT's estimate_mfu). Not counted: element-wise work (gates, dropout, softmax), embeddings (a
gather), attention scores, and what exact checkpointing recomputes: model FLOPs are what the model
needs, not what a plan spends, so a faster plan shows as a higher fraction of the ceiling.

An adaptive softmax head is counted as the full V it replaces (it does less: the fraction it shows is
an upper bound). Padded steps of variable-length batches cost no compute (seqfit.nn runs each row over
its own length), so the counts use real tokens.
"""

from __future__ import annotations

from torch import nn

__all__ = ["GATES", "recurrent_flops", "lm_step_flops", "classifier_step_flops", "forecaster_step_flops",
           "step_flops"]

GATES = {"lstm": 4, "gru": 3, "rnn": 1}
BACKWARD = 2  # backward products per forward one


def recurrent_flops(cell: str, input_size: int, hidden: int, layers: int, tokens: int, directions: int = 1) -> int:
    """Forward FLOPs of a stack over ``tokens`` time steps of all sequences (layer i > 0 reads directions x H)."""
    g = GATES[cell]
    per_token = sum(directions * 2 * g * hidden * ((input_size if i == 0 else directions * hidden) + hidden)
                    for i in range(layers))
    return per_token * tokens


def lm_step_flops(*, cell: str, layers: int, hidden: int, embed: int, vocab: int, tokens: int) -> int:
    """A language model's step over ``tokens`` (batch x bptt): recurrent stack and a V-way output at every token."""
    forward = recurrent_flops(cell, embed, hidden, layers, tokens) + 2 * hidden * vocab * tokens
    return (1 + BACKWARD) * forward


def classifier_step_flops(*, cell: str, layers: int, hidden: int, input_size: int, classes: int, tokens: int,
                          sequences: int, directions: int = 1) -> int:
    """A classifier's step: the stack over the real tokens, one C-way output per sequence (after pooling)."""
    forward = (recurrent_flops(cell, input_size, hidden, layers, tokens, directions)
               + 2 * directions * hidden * classes * sequences)
    return (1 + BACKWARD) * forward


def forecaster_step_flops(*, cell: str, layers: int, hidden: int, inputs: int, outputs: int, tokens: int,
                          sequences: int) -> int:
    """A forecaster's step: the stack over every lookback step, one projection to ``outputs`` (horizon x
    targets x quantiles) per window."""
    forward = recurrent_flops(cell, inputs, hidden, layers, tokens) + 2 * hidden * outputs * sequences
    return (1 + BACKWARD) * forward


def step_flops(task: str, model: nn.Module, stats: dict) -> int | None:
    """Model FLOPs of one optimizer step of ``task``, from the model's sizes and the step's statistics (its
    "tokens", and a classifier's "count" of sequences); None for a task not counted yet (seq2seq)."""
    rnn = getattr(model, "rnn", None)
    if rnn is None:
        return None
    sizes = {"cell": rnn.cell, "layers": rnn.num_layers, "hidden": rnn.hidden}
    tokens = int(stats["tokens"])
    if task == "lm":
        return lm_step_flops(**sizes, embed=model.embedding.embedding_dim, vocab=model.vocab_size, tokens=tokens)
    if task == "classify":
        return classifier_step_flops(**sizes, input_size=rnn.layers[0].input_size, classes=model.num_classes,
                                     tokens=tokens, sequences=int(stats["count"]), directions=rnn.directions)
    if task == "forecast":
        windows = int(stats["count"]) // (model.horizon * model.num_targets)  # count: the targets, (B, h, T)
        return forecaster_step_flops(**sizes, inputs=rnn.layers[0].input_size, outputs=model.head.out_features,
                                     tokens=tokens, sequences=windows)
    return None
