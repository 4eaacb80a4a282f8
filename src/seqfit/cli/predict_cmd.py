"""`seqfit predict`: class predictions of a trained classifier for a prepared split or a text file."""

from __future__ import annotations

import csv
from pathlib import Path

import click
import numpy as np

from seqfit.atomic import atomic_path
from seqfit.cli.common import emit, json_flag, say
from seqfit.errors import SeqfitError

__all__ = ["predict", "TextSequences"]


class TextSequences:
    """One sequence per line of a text file, encoded with the run's vocabulary (the SequenceSplit interface)."""

    def __init__(self, path: Path, store):
        from seqfit.data.tokenize import make_tokenizer

        vocab = store.vocab
        if vocab is None:
            raise SeqfitError("this classifier reads numeric sequences; give a prepared data directory, not a text file")
        subword = store.dir / "tokenizer.json" if vocab.level == "subword" else None
        tokenize = make_tokenizer(vocab.level, lowercase=vocab.lowercase, subword=subword)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise SeqfitError(f"cannot read {path}: {e}") from None
        self.name = path.name
        self.num_features = 0
        self.seqs = [np.asarray(vocab.encode(tokenize(line)), dtype=np.int64) for line in lines]
        self.lengths = np.array([len(s) for s in self.seqs], dtype=np.int64)
        self.labels = None
        if len(self.seqs) == 0:
            raise SeqfitError(f"{path} has no lines to classify")

    def __len__(self) -> int:
        return len(self.seqs)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.seqs[int(i)]

    def batch(self, indices):
        import torch

        from seqfit.data.sequences import pad_batch

        x, lengths = pad_batch([self.seqs[int(i)] for i in indices], 0)
        return x, lengths, torch.full((len(indices),), -1, dtype=torch.int64)


def _open_input(source: Path, split_name: str, run):
    """(split-like object, label id map into the run's classes or None)."""
    from seqfit.data.sequences import SequenceStore

    if source.is_dir():
        store = SequenceStore(source)
        train = run.store
        if (store.vocab is None) != (train.vocab is None) or store.num_features != train.num_features:
            raise SeqfitError(f"{source} holds different inputs than the run trained on (tokens vs numeric features)")
        if store.vocab is not None and store.vocab.hash() != train.vocab.hash():
            raise SeqfitError(f"{source} was prepared with another vocabulary than {train.dir}; "
                              "prepare it with the training vocabulary")
        split = store.split(split_name)
        names = {n: i for i, n in enumerate(train.label_names)}
        remap = np.array([names.get(n, -1) for n in store.label_names], dtype=np.int64) if store.label_names else None
        return split, remap
    if source.is_file():
        return TextSequences(source, run.store), None
    raise SeqfitError(f"{source} is neither a prepared data directory nor a text file")


@click.command(epilog="""\b
Examples:
  seqfit predict runs/rev data/rev                     # the test split of a prepared directory
  seqfit predict runs/rev data/rev --split valid --out valid-pred.csv
  seqfit predict runs/rev reviews.txt --probs          # one text per line
  seqfit predict runs/sens data/sens --horizon 12 --out fc.parquet   # a forecast run: the next 12 rows""")
@click.argument("run_dir", type=click.Path())
@click.argument("input_path", metavar="INPUT", type=click.Path())
@click.option("--split", "split_name", default=None,
              help="split of a prepared INPUT directory (default test; a forecast: test, else valid, else train)")
@click.option("--out", default=None, type=click.Path(dir_okay=False),
              help="CSV to write, or Parquet for a forecast run's .parquet (default: RUN_DIR/predictions.csv)")
@click.option("--horizon", type=click.IntRange(min=1), default=None,
              help="forecast runs: rows ahead to forecast (default and most: the run's --horizon)")
@click.option("--probs", is_flag=True, help="add one probability column per class")
@click.option("--data", "data_dir", default=None, help="training data directory (default: the one the run trained on)")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@json_flag
def predict(run_dir, input_path, split_name, out, horizon, probs, data_dir, device, as_json) -> None:
    """Predict classes with a trained classifier; writes index, predicted class and confidence as CSV.

    \b
    A forecast run (--task forecast) forecasts the --horizon rows after the end of each series in the split
    (a run with --future-covariates: the last --horizon rows of each series, whose future columns it reads)
    of INPUT (a prepared series directory): one row per series, time and step ahead, columns series (its
    --group-field value; a store of one series: the split's name), time (the --time-field's value
    extrapolated from the series' last spacing, else the row index in the series' part of the split), step,
    then each target's point forecast and, for quantile models, <target>_q<q> per quantile. A series with
    fewer than --lookback rows in the split (a short held-out tail) reads the rest of its window from the
    same series' earlier rows: the splits before it in INPUT (train < valid < test), then the run's own data
    when INPUT is another store (by --group-field name; with --time-field values, only history that ends
    before the tail)."""
    from seqfit.engine.classify import check_split, macro_f1, predict_classifier
    from seqfit.engine.run_dir import load_run
    from seqfit.engine.run_files import read_run

    if read_run(Path(run_dir))[0].model.task == "forecast":
        return _predict_forecast(run_dir, input_path, split_name, out, horizon, data_dir, device, as_json)
    if horizon is not None:
        raise SeqfitError("--horizon applies to forecast runs only")
    split_name = split_name or "test"
    run = load_run(run_dir, data_dir=data_dir, device=device, task="classify")
    split, remap = _open_input(Path(input_path), split_name, run)
    check_split(split, run.store, max_length=run.plan["max_length"], too_long=run.plan["too_long"],
                needs_labels=False, warn=say)
    p, labels = predict_classifier(run.model, split, run.plan, device=run.device, precision=run.precision)
    if remap is not None:
        labels = np.where(labels >= 0, remap[np.maximum(labels, 0)], -1)
    pred = p.argmax(1)
    names = run.store.label_names
    seen = set(np.unique(np.asarray(run.store.split("train").labels)).tolist())
    unseen = sorted(set(np.unique(labels[labels >= 0]).tolist()) - seen)
    if unseen:
        say(f"warning: {int(np.isin(labels, unseen).sum())} sequence(s) carry labels training never saw "
            f"({', '.join(repr(names[i]) for i in unseen[:5])}); the model cannot predict them, they count as errors")
    out = Path(out) if out else Path(run_dir) / "predictions.csv"
    try:
        with atomic_path(out) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["index", "predicted", "confidence"] + (["label"] if (labels >= 0).any() else [])
                       + ([f"p_{n}" for n in names] if probs else []))
            for i in range(len(pred)):
                row = [i, names[pred[i]], f"{p[i, pred[i]]:.6f}"]
                if (labels >= 0).any():
                    row.append(names[labels[i]] if labels[i] >= 0 else "")
                w.writerow(row + ([f"{v:.6f}" for v in p[i]] if probs else []))
    except OSError as e:
        raise SeqfitError(f"cannot write {out}: {e.strerror}") from None
    result = {"predictions": str(out), "count": int(len(pred))}
    known = labels >= 0
    if known.any():
        result.update(accuracy=float((pred[known] == labels[known]).mean()),
                      macro_f1=macro_f1(pred[known], labels[known], len(names)), labelled=int(known.sum()))
    human = f"{len(pred):,} predictions written to {out}"
    if "accuracy" in result:
        human += f"; accuracy {result['accuracy']:.4f}, macro-F1 {result['macro_f1']:.4f} on {result['labelled']:,} labelled"
    emit(result, as_json, human)


def _predict_forecast(run_dir, input_path, split_name, out, horizon, data_dir, device, as_json) -> None:
    from seqfit.engine.forecast_output import (context_split, default_split, forecast_from_end, future_times, open_series,
                                               write_table)
    from seqfit.engine.run_dir import load_run

    run = load_run(run_dir, data_dir=data_dir, device=device, task="forecast")
    task = run.task
    if horizon is not None and horizon > task.horizon:
        raise SeqfitError(f"--horizon {horizon} is more than the run's --horizon {task.horizon}: the model forecasts "
                          f"at most {task.horizon} rows ahead")
    h = horizon or task.horizon
    store = open_series(run, input_path)
    name = default_split(store, split_name)
    split = store.split(name)
    source = split
    if (np.diff(split.offsets) < task.lookback + task.future_rows).any():  # a short tail: borrow its history
        source = context_split(run, store, split)[0]
    pred = forecast_from_end(run, source, h)  # (S, h, T, Q)
    S, steps, times = len(pred), np.arange(1, h + 1), store.times(name)
    point = task._point(pred.reshape(S * h, *pred.shape[2:]))  # (S * h, T): series-major
    when = []
    for first, end in zip(split.offsets[:-1].tolist(), split.offsets[1:].tolist()):
        origin = end - first - 1 - task.future_rows  # --future-covariates: the last --horizon rows are forecast
        when += future_times(None if times is None else times[first:end], origin, steps)
    table: dict = {"series": np.repeat(np.asarray(split.names, dtype=str), h), "time": when,
                   "step": np.tile(steps, S).astype(np.int64)}
    for j, target in enumerate(task.targets):
        table[target] = point[:, j].astype(np.float64)
        for k, q in enumerate(task.quantiles):
            table[f"{target}_q{q:g}"] = pred[:, :, j, k].reshape(-1).astype(np.float64)
    out = Path(out) if out else Path(run_dir) / "predictions.csv"
    write_table(out, table)
    result = {"predictions": str(out), "count": S * h, "series": S, "split": name, "horizon": h,
              "targets": task.targets, "origin_row": int(split.offsets[1]) - 1 - task.future_rows if S == 1 else None}
    emit(result, as_json, f"{S * h:,} forecast row(s) of {', '.join(task.targets)} ({h} steps of {S:,} series) from "
                          f"the end of the {name} split written to {out}")
