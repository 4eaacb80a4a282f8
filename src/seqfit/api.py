"""The Python face of the `seqfit` commands: seqfit.prepare, seqfit.plan, seqfit.estimate, seqfit.train and
seqfit.translate.

Options are config keys, as in a TOML file or as flags without the dashes (``hidden=650``,
``batch_size=64``, ``budget="4GB"``, ``task="classify"``); ``config`` is a TOML file they override.
Each returns the dict its command prints with ``--json``.

    >>> report = seqfit.plan("data/wiki", hidden=650, batch_size=64, bptt=70, budget="2GB")
    >>> report["predicted_peak_bytes"], report["plan"]["micro_batch"]
    >>> summary = seqfit.train("data/wiki", "runs/wiki", hidden=650, budget="2GB", max_steps=500)
    >>> list(seqfit.translate("runs/dates", ["3 March 1998", "1998/03/04"], beam=5))
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from seqfit.config import from_dict, from_options, lm_bptt, load_toml
from seqfit.errors import SeqfitError

__all__ = ["prepare", "plan", "estimate", "train", "translate", "TRANSLATE_BLOCK_BATCHES"]

TRANSLATE_BLOCK_BATCHES = 32  # translate reads (and length-sorts) this many batches of lines at a time


def prepare(*inputs: str | Path, out: str | Path, **options: Any) -> dict:
    """`seqfit prepare INPUTS --out OUT`: stream text, JSONL, CSV or Parquet into a memory-mapped store.

    Options are PrepareOptions' fields (``level="char"``, ``valid_fraction=0.1``, ``task="classify"``,
    ``label_field="label"``, ``train=[...]``, ``valid=[...]``, ...). Returns the store's meta.json.
    """
    import dataclasses

    from seqfit.data.prepare import PrepareOptions
    from seqfit.data.prepare import prepare as prepare_store

    known = {f.name for f in dataclasses.fields(PrepareOptions)} - {"out", "inputs"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise SeqfitError(f"unknown prepare option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    for key in ("train", "valid", "test", "columns"):
        if isinstance(options.get(key), (str, Path)):
            options[key] = (options[key],)
    options = {k: tuple(str(p) for p in v) if k in ("train", "valid", "test", "columns") else v for k, v in options.items()}
    return prepare_store(PrepareOptions(out=Path(out), inputs=tuple(str(p) for p in inputs), **options))


def plan(data_dir: str | Path | None = None, *, vocab_size: int | None = None, config: str | Path | None = None,
         verify: bool = False, verify_steps: int = 4, calibrate: bool = True,
         echo: Callable[[str], None] | None = None, **options: Any) -> dict:
    """Predicted peak memory of a training config, part by part; with ``budget=``, the fastest plan that fits.

    ``data_dir`` or ``vocab_size`` (a what-if without data; language models only). ``verify``: also run
    ``verify_steps`` real steps in a child process and report the measured peak. ``calibrate``: probe this
    machine once (cached) for the estimator's constants; ``echo`` hears about it.
    Returns what `seqfit plan --json` prints: "predicted_peak_bytes", "parts" (bytes by part at the peak),
    "sizes", "phases", "peak_phase", "plan" (the chosen plan), "alternatives", "constants", "task", ...
    """
    from seqfit.measure.memory import parse_bytes
    from seqfit.memory.calibrate import load_constants
    from seqfit.memory.estimate import DataInfo
    from seqfit.memory.plan import data_info_for, estimate_for, plan_for_budget, requested_plan_for, score_plan

    if (data_dir is None) == (vocab_size is None):
        raise SeqfitError("give a data directory or --vocab-size N (one of them)")
    cfg = from_options(options, config_path=config)
    if data_dir is None and cfg.model.task != "lm":
        raise SeqfitError(f"planning a {cfg.model.task!r} task needs its data directory (the data decides the batch)")
    data = data_info_for(cfg, data_dir) if data_dir is not None else DataInfo(vocab_size)
    requested = requested_plan_for(cfg, data)
    consts = load_constants(requested["device"], [(cfg.model.cell, cfg.memory.precision)], calibrate_missing=calibrate,
                            echo=echo)
    result: dict = {"task": cfg.model.task, "vocab_size": data.vocab_size,
                    "constants": {"calibrated": consts.calibrated, "source": consts.source}}
    if cfg.memory.budget:
        try:
            budget = parse_bytes(cfg.memory.budget)
        except ValueError as e:
            raise SeqfitError(f"--budget: {e}") from None
        choice = plan_for_budget(cfg, data, budget, consts, device=requested["device"])
        cfg, chosen, alternatives = choice.cfg, choice.plan, choice.alternatives
        result["budget_bytes"] = budget
    else:
        scored = score_plan(cfg, data, requested, consts)
        chosen, alternatives = {k: v for k, v in scored.items() if k != "_parts"}, []
    est = estimate_for(cfg, data, {k: chosen[k] for k in requested}, consts)
    chosen = chosen | {"predicted_peak_bytes": est["peak"]}
    result |= {"predicted_peak_bytes": est["peak"], "peak_phase": est["phase"], "parts": est["parts"],
               "sizes": est["sizes"], "phases": est["phases"], "plan": chosen, "alternatives": alternatives}
    if verify:
        result |= _verify(cfg, data_dir, data, verify_steps, est["peak"], echo)
    return result


def estimate(data_dir: str | Path | None = None, *, vocab_size: int | None = None, config: str | Path | None = None,
             calibrate: bool = True, **options: Any) -> dict:
    """The predicted peak of the config exactly as given (no budget, no search): `seqfit plan --json` without --budget."""
    if options.get("budget"):
        raise SeqfitError("estimate() predicts the config as given; use plan(..., budget=...) to search for a plan")
    return plan(data_dir, vocab_size=vocab_size, config=config, calibrate=calibrate, **options)


def train(data_dir: str | Path, out: str | Path, *, config: str | Path | None = None, resume: bool = False,
          profile: bool = False, tensorboard: bool = False, echo: Callable[[str], None] = print, **options: Any) -> dict:
    """Train (or ``resume``) a run in directory ``out``, as `seqfit train`; returns its summary.json.

    A resumed run keeps the config it was started with (RUN/config.toml); options given now override it.
    """
    from seqfit.engine.distributed import teardown
    from seqfit.engine.loop import train as run_training

    base = None
    if resume:
        saved = Path(out) / "config.toml"
        if not saved.is_file():
            raise SeqfitError(f"no run to resume in {out} (no config.toml)")
        base = from_dict(load_toml(saved))
    cfg = from_options(options, config_path=config, base=base)
    try:
        return run_training(cfg, Path(data_dir), Path(out), resume=resume, echo=echo, profile=profile,
                            tensorboard=tensorboard)
    finally:
        teardown()  # under torchrun: leave the process group (a no-op alone)


def translate(run_dir: str | Path, lines: Iterable[str], *, beam: int = 5, length_penalty: float = 1.0,
              max_ratio: float = 2.0, batch_size: int = 64, data_dir: str | Path | None = None,
              device: str = "auto") -> Iterator[str]:
    """Decode source texts with a trained encoder-decoder (`seqfit translate`), one output per input, in order.

    Lines are tokenized as the training data was and read ``batch_size`` x 32 at a time (length-sorted into
    batches), so a long iterable streams through in bounded memory; an empty line decodes to ""."""
    from seqfit.data.subword import TOKENIZER_FILE
    from seqfit.data.tokenize import make_tokenizer
    from seqfit.engine.run_dir import load_run
    from seqfit.engine.seq2seq import Decoding, decode_sequences, ids_to_text

    run = load_run(run_dir, data_dir=data_dir, device=device, task="seq2seq")
    vocab, target = run.store.vocab, run.store.target_vocab
    subword = run.store.dir / TOKENIZER_FILE if vocab.level == "subword" else None
    tokenize = make_tokenizer(vocab.level, lowercase=vocab.lowercase, subword=subword)
    decoding = Decoding(beam=beam, length_penalty=length_penalty, max_ratio=max_ratio, batch_size=batch_size)
    limit = run.plan["max_length"] or None
    block: list[str] = []

    def decode(block: list[str]) -> Iterator[str]:
        seqs = [np.asarray(vocab.encode(tokenize(line)), dtype=np.int64)[:limit] for line in block]
        hyps = decode_sequences(run.model, seqs, eos=run.task.eos, decoding=decoding, device=run.device,
                                precision=run.precision)
        return (ids_to_text(target, h) for h in hyps)

    for line in lines:
        block.append(line)
        if len(block) == batch_size * TRANSLATE_BLOCK_BATCHES:
            yield from decode(block)
            block = []
    if block:
        yield from decode(block)


def _verify(cfg, data_dir, data, steps: int, predicted: int, echo) -> dict:
    from seqfit.memory.batch_split import effective_batch
    from seqfit.memory.probe import measure_run
    from seqfit.memory.synthetic import write_synthetic_store

    if echo is not None:
        echo(f"verifying: {steps} real training steps in a child process")
    with tempfile.TemporaryDirectory(prefix="seqfit-verify-") as tmp:
        if data_dir is None:  # what-if planning: a synthetic store of the same vocabulary
            tokens = max(100_000, 2 * effective_batch(cfg) * (lm_bptt(cfg.train) * (steps + 1) + 1))
            data_dir = write_synthetic_store(Path(tmp) / "data", data.vocab_size, tokens)
        measured = measure_run(cfg, data_dir, steps=steps)
    steady = measured["step_seconds"][1:] or measured["step_seconds"]  # the first step warms up
    if cfg.model.task == "classify":  # the probe trains on the largest batches
        from seqfit.memory.estimate_classify import worst_batch

        tokens = worst_batch(measured["plan"], data)[2] * measured["plan"]["accumulate"]
    elif cfg.model.task == "seq2seq":  # the probe trains on the largest batches: target tokens
        from seqfit.memory.estimate_seq2seq import worst_pair_batch

        rows, _, target = worst_pair_batch(measured["plan"], data)
        tokens = rows * (target + 1) * measured["plan"]["accumulate"]
    elif cfg.model.task == "forecast":  # every window is --lookback steps
        tokens = effective_batch(cfg) * cfg.train.lookback
    else:
        tokens = effective_batch(cfg) * lm_bptt(cfg.train)
    return {"measured_peak_bytes": measured["peak_bytes"], "measured_step_seconds": measured["step_seconds"],
            "baseline_bytes": measured["baseline_bytes"],  # the runtime before the model: what no plan changes
            "measured_tokens_per_s": tokens / min(steady),
            "prediction_error": (predicted - measured["peak_bytes"]) / measured["peak_bytes"]}
