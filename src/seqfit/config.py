"""Run configuration: frozen dataclasses, the one source of truth for flags, TOML files and checkpoints.

Precedence: dataclass defaults < TOML file (``--config``) < command-line flags.
The resolved config is written to ``RUN_DIR/config.toml`` and can be fed back with ``--config``.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from seqfit.errors import SeqfitError

__all__ = ["ModelCfg", "TrainCfg", "MemoryCfg", "RunCfg", "LM_BPTT", "lm_bptt", "SECTIONS", "load_toml", "merge", "section_of", "from_options", "dump_toml", "to_dict", "from_dict"]


def opt(default: Any, help: str, choices: tuple[str, ...] | None = None, *, minimum: float | None = None,
        below: float | None = None) -> Any:
    """A config field with its help text (used for the generated CLI flags) and the values it accepts:
    ``choices``, or numbers >= ``minimum`` and < ``below`` (checked by check_value, for flags and TOML alike)."""
    return field(default=default, metadata={"help": help, "choices": choices, "minimum": minimum, "below": below})


@dataclass(frozen=True)
class ModelCfg:
    task: str = opt("lm", "what the model learns", ("lm", "classify", "forecast", "seq2seq"))
    cell: str = opt("lstm", "recurrent cell", ("rnn", "lstm", "gru"))
    layers: int = opt(2, "number of stacked recurrent layers", minimum=1)
    hidden: int = opt(200, "hidden units per layer and direction", minimum=1)
    embed: int = opt(200, "embedding size", minimum=1)
    dropout: float = opt(0.2, "dropout on embeddings, between layers and before the output", minimum=0, below=1)
    tie_weights: bool = opt(False, "share the input embedding with the output layer (LM, seq2seq decoder; needs embed == hidden)")
    bidirectional: bool = opt(False, "run each layer in both directions (classification; the seq2seq encoder, "
                                              "whose two directions split --hidden)")
    layer_norm: bool = opt(False, "layer norm on each layer's output")
    embeddings: str = opt("", "pretrained embedding matrix (.npy) to initialise the input embedding")
    freeze_embeddings: bool = opt(False, "keep the input embedding fixed: no gradient, no optimizer state")
    pooling: str = opt("last", "how a classifier summarises a sequence", ("last", "mean"))
    embed_dropout: float = opt(0.0, "LM: drop whole words (rows of the embedding), one mask per batch (AWD-LSTM)",
                               minimum=0, below=1)
    locked_dropout: bool = opt(False, "dropout with one mask per sequence shared over time (variational), on inputs, "
                                      "between layers and on outputs (AWD-LSTM)")
    weight_drop: float = opt(0.0, "DropConnect on the hidden-to-hidden weights, one mask per batch shared by every "
                                  "time step (AWD-LSTM; 0: off)", minimum=0, below=1)
    target: str = opt("", "forecast: the columns to predict, comma-separated (empty: every column)")
    covariates: str = opt("", "forecast: other columns read as past inputs, comma-separated (empty: none)")
    future_covariates: str = opt("", "forecast: columns known in advance (e.g. a promotion calendar), comma-separated: "
                                     "read over the lookback and over the horizon rows; predict then forecasts the "
                                     "last --horizon rows of the data, whose values they provide")
    calendar: bool = opt(False, "forecast: add hour of day, day of week and day of year as sin/cos pairs (those that "
                                "vary), computed from the ISO dates of the store's --time-field, as known-future inputs")
    horizon: int = opt(1, "forecast: steps predicted at once after the lookback window", minimum=1)
    forecast_loss: str = opt("mse", "forecast loss (quantile: pinball loss over --quantiles)", ("mse", "mae", "quantile"))
    quantiles: str = opt("0.1,0.5,0.9", "forecast: quantiles the quantile loss predicts, comma-separated, in (0, 1)")
    decoder: str = opt("direct", "forecast: direct = one linear head for every horizon step at once; autoregressive = "
                                 "an RNN decoder (the encoder's cell) stepping over the horizon, fed its previous "
                                 "step's value (the true one in training, its own forecast at inference)",
                       ("direct", "autoregressive"))
    static: bool = opt(True, "forecast: feed each series' static categories (prepare --static-field), when the store "
                             "has them, as learned embeddings to the encoder and the head")
    attention: str = opt("general", "seq2seq: the decoder's attention score (Luong dot or general, Bahdanau additive)",
                         ("dot", "general", "additive"))
    input_feed: bool = opt(True, "seq2seq: feed each step's attentional output into the next decoder step (Luong); "
                                 "off, the decoder runs as one fused call over the target")
    share_embeddings: bool = opt(False, "seq2seq: one embedding for source and target (needs one vocabulary)")


@dataclass(frozen=True)
class TrainCfg:
    batch_size: int = opt(20, "sequences (LM: parallel streams) per micro-batch", minimum=1)
    bptt: int = opt(0, "time steps per truncated-BPTT window (0: per task; LM 35, classify off)", minimum=0)
    epochs: int = opt(1, "passes over the training split (ignored when --max-steps is set)", minimum=1)
    max_steps: int = opt(0, "stop after this many optimizer steps (0: run --epochs)", minimum=0)
    max_minutes: float = opt(0.0, "stop (with a checkpoint) after this many minutes of training (0: no limit)", minimum=0)
    max_cpu_minutes: float = opt(0.0, "stop (with a checkpoint) after this many CPU minutes of training, all of the "
                                      "process's threads counted (time.process_time; a fair budget on a shared "
                                      "machine; 0: no limit)", minimum=0)
    lr: float = opt(0.0, "learning rate (0: the optimizer's usual one: sgd 20, adam/adamw 0.001, adafactor 0.01)", minimum=0)
    optimizer: str = opt("sgd", "optimizer (--task forecast, classify, seq2seq: adam unless set)",
                         ("sgd", "adam", "adamw", "adafactor"))
    momentum: float = opt(0.0, "SGD momentum", minimum=0)
    weight_decay: float = opt(0.0, "weight decay", minimum=0)
    clip: float = opt(0.25, "clip the gradient norm to this (0: off)", minimum=0)
    label_smoothing: float = opt(0.0, "label smoothing of the training loss (perplexity is always measured without it)", minimum=0, below=1)
    schedule: str = opt("plateau", "learning-rate schedule (cosine: to 0 over the steps, or over the "
                                   "--max-cpu-minutes budget when that ends first)", ("constant", "plateau", "cosine"))
    warmup: int = opt(0, "warm-up steps (cosine schedule)", minimum=0)
    seed: int = opt(1111, "random seed", minimum=0)
    state_reset: float = opt(0.01, "LM: chance per stream and step that its carried state restarts from zero, so the "
                                   "model learns to start as evaluation and generation do (0: never)", minimum=0, below=1)
    ar: float = opt(0.0, "LM: activation regularisation, ar x mean square of the last layer's dropped outputs",
                    minimum=0)
    tar: float = opt(0.0, "LM: temporal activation regularisation, tar x mean square change of the last layer's "
                          "outputs from step to step", minimum=0)
    variable_bptt: bool = opt(False, "LM: windows of random length around --bptt (AWD-LSTM), never longer; a short "
                                     "window's loss counts as --bptt tokens, so it moves the weights less")
    average: str = opt("off", "weight averaging for validation and inference: nt = NT-ASGD's trigger (average "
                              "the weights once validation stops improving on the best but the last --nonmono); "
                              "poly = polynomial-decay averaging from the first step (--average-power)",
                       ("off", "nt", "poly"))
    nonmono: int = opt(5, "validations the NT-ASGD trigger looks past (--average nt)", minimum=1)
    average_power: float = opt(3.0, "--average poly: step s weighs about (s/t)^p in the mean at step t", minimum=0.0)
    eval_every: int = opt(0, "validate every N steps as well as after each epoch (0: epochs only)", minimum=0)
    eval_batches: int = opt(0, "validate on at most this many batches (0: the whole split)", minimum=0)
    checkpoint_every: int = opt(200, "write a checkpoint every N steps (and at the end)", minimum=0)
    log_every: int = opt(10, "write a metrics line every N steps", minimum=1)
    max_length: int = opt(0, "longest sequence a classifier accepts (0: no limit)", minimum=0)
    too_long: str = opt("error", "what to do with a sequence over --max-length", ("error", "truncate"))
    class_weights: str = opt("", "classifier loss weights: 'balanced' or one number per class, comma-separated (empty: equal)")
    lookback: int = opt(48, "forecast: past steps the model reads before each forecast", minimum=1)
    season: int = opt(1, "forecast: season length for MASE and the seasonal-naive baseline (0 or 1: naive)", minimum=0)
    series_weight: str = opt("length", "forecast, a store of many series: length = every window once an epoch (a series "
                                       "drawn in proportion to its windows), equal = every series equally often "
                                       "(windows drawn with replacement)", ("length", "equal"))
    normalize: str = opt("global", "forecast: what normalises a window: global = the train split's mean/std per column, "
                                   "series = each series' own (train split), window = the lookback's own",
                         ("global", "series", "window"))


@dataclass(frozen=True)
class MemoryCfg:
    budget: str = opt("", "memory budget, e.g. 4GB (empty: no budget)")
    precision: str = opt("fp32", "compute precision", ("fp32", "bf16", "fp16"))
    loss: str = opt("auto", "output loss: full logits, chunked, or adaptive softmax", ("auto", "full", "chunked", "adaptive"))
    loss_chunk: int = opt(0, "tokens per chunk of the chunked loss (0: about 1,024, spread evenly; the planner may shrink it)", minimum=0)
    checkpoint_time: int = opt(0, "exact activation checkpointing every k time steps (0: off, -1: about sqrt(T))", minimum=-1)
    accumulate: int = opt(1, "micro-batches per optimizer step", minimum=1)
    effective_batch: int = opt(0, "sequences per optimizer step; sets --accumulate (0: unused)", minimum=0)
    max_tokens: int = opt(0, "token budget per batch for variable-length data (0: fixed --batch-size)", minimum=0)
    spare_grads: bool = opt(True, "language model on CPU: write the embedding's and the chunked loss's gradients into "
                            "the last step's memory (faster; holds them through the forward; --budget may turn it off)")
    device: str = opt("auto", "where to train", ("auto", "cpu", "cuda"))


LM_BPTT = 35


def lm_bptt(train: TrainCfg) -> int:
    """A language model's truncated-BPTT window: --bptt 0 means the task's default (a classifier's 0 means off)."""
    return train.bptt or LM_BPTT


@dataclass(frozen=True)
class RunCfg:
    model: ModelCfg = field(default_factory=ModelCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    memory: MemoryCfg = field(default_factory=MemoryCfg)


SECTIONS: dict[str, type] = {"model": ModelCfg, "train": TrainCfg, "memory": MemoryCfg}


def field_type(section: type, name: str) -> type:
    hint = typing.get_type_hints(section)[name]
    if isinstance(hint, types.UnionType):
        hint = next(t for t in typing.get_args(hint) if t is not type(None))
    return hint


def check_value(section_name: str, key: str, value: Any, shown: str | None = None) -> Any:
    """Coerce a TOML or flag value to the field's type; fail loudly on unknown keys, wrong types and values
    outside the field's choices or range. ``shown`` names the value in messages (a flag: "--hidden")."""
    section = SECTIONS[section_name]
    names = {f.name: f for f in dataclasses.fields(section)}
    if key not in names:
        raise SeqfitError(f"unknown config key [{section_name}] {key!r}; known: {', '.join(sorted(names))}")
    shown = shown or f"config key [{section_name}] {key}"
    want = field_type(section, key)
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, want) or (want is int and isinstance(value, bool)):
        raise SeqfitError(f"{shown} must be {want.__name__}, got {value!r}")
    meta = names[key].metadata
    choices = meta.get("choices")
    if choices and value not in choices:
        raise SeqfitError(f"{shown} must be one of {', '.join(choices)}, got {value!r}")
    low, below = meta.get("minimum"), meta.get("below")
    if want is float and not math.isfinite(value):
        raise SeqfitError(f"{shown} must be a finite number, got {value!r}")
    if below is not None and not low <= value < below:
        raise SeqfitError(f"{shown} must be in [{low:g}, {below:g}), got {value!r}")
    if low is not None and value < low:
        raise SeqfitError(f"{shown} must be >= {low:g}, got {value!r}")
    return value


def from_dict(data: dict[str, Any]) -> RunCfg:
    parts = {}
    for name, section in SECTIONS.items():
        values = data.get(name, {})
        if not isinstance(values, dict):
            raise SeqfitError(f"config section [{name}] must be a table")
        parts[name] = section(**{k: check_value(name, k, v) for k, v in values.items()})
    unknown = set(data) - set(SECTIONS)
    if unknown:
        raise SeqfitError(f"unknown config section(s) {sorted(unknown)}; known: {', '.join(SECTIONS)}")
    return RunCfg(**parts)


def to_dict(cfg: RunCfg) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise SeqfitError(f"config file not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:  # tomllib decodes UTF-8 itself, strictly
        raise SeqfitError(f"config file {path} is not valid TOML: {e}") from None
    except OSError as e:  # a directory, no permission
        raise SeqfitError(f"cannot read config file {path}: {e.strerror}") from None


def merge(base: RunCfg, overrides: dict[str, dict[str, Any]]) -> RunCfg:
    """Return ``base`` with the given per-section values replaced (values are checked)."""
    data = to_dict(base)
    for section, values in overrides.items():
        for key, value in values.items():
            data[section][key] = check_value(section, key, value)
    return from_dict(data)


def section_of(key: str) -> str:
    """The section ([model], [train] or [memory]) that holds config key ``key``."""
    for name, section in SECTIONS.items():
        if key in {f.name for f in dataclasses.fields(section)}:
            return name
    known = sorted(f.name for section in SECTIONS.values() for f in dataclasses.fields(section))
    raise SeqfitError(f"unknown option {key!r}; known: {', '.join(known)}")


# Where the defaults (a language model's classic recipe: SGD at lr 20, clip 0.25) are wrong for a task: a
# forecaster at SGD lr 20 ended worse than the naive forecast in a new user's first run; Adam at its usual lr
# is what forecasting libraries start from. A 4-class text classifier (13k lines of stdlib code by package)
# reached 75.6% valid accuracy in 3 epochs at SGD lr 20 and 82.1% in 6, against 84.8% in 3 with Adam; every
# encoder-decoder benchmark trains with Adam. Applied to new runs only, and only to keys neither the TOML file
# nor an option sets (a resumed run's config.toml holds the value it started with).
_ADAM = {"train": {"optimizer": "adam"}}
TASK_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {"forecast": _ADAM, "classify": _ADAM, "seq2seq": _ADAM}


def from_options(options: dict[str, Any], *, config_path: str | Path | None = None, base: RunCfg | None = None) -> RunCfg:
    """defaults (or ``base``) < the task's own defaults < TOML file < ``options`` given by config key
    (hidden=650, budget="4GB", ...)."""
    given: dict[str, dict[str, Any]] = {}
    for key, value in options.items():
        given.setdefault(section_of(key), {})[key] = check_value(section_of(key), key, value)
    cfg = base or RunCfg()
    file = load_toml(config_path) if config_path else {}
    if config_path:
        cfg = merge(cfg, file) if base else from_dict(file)
    cfg = merge(cfg, given)
    if base is None:
        unset = {section: {k: v for k, v in values.items()
                           if k not in given.get(section, {}) and k not in file.get(section, {})}
                 for section, values in TASK_DEFAULTS.get(cfg.model.task, {}).items()}
        cfg = merge(cfg, unset)
    return cfg


def dump_toml(cfg: RunCfg) -> str:
    return tomli_w.dumps(to_dict(cfg))
