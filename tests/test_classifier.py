"""Sequence classification: the chunked model against the plain one, streams, truncation, metrics,
bad input, a long-range synthetic task, and `seqfit train --task classify` / `seqfit predict` end to end."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from seqfit.config import ModelCfg, RunCfg, TrainCfg, MemoryCfg
from seqfit.data.sequences import pad_batch
from seqfit.errors import SeqfitError
from seqfit.models.classifier import SequenceClassifier
from seqfit.engine.classify import (_truncated_backward, check_split, class_weights, macro_f1, micro_backward,
                                   predict_classifier)
from seqfit.engine.loop import train as train_classifier
from seqfit.nn.precision import make_precision

FP32 = make_precision("fp32", "cpu")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: on a shared 2-core machine, OpenMP threads waiting on each other cost 10-50x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class FakeSplit:
    """In-memory stand-in with the SequenceSplit interface (name, lengths, labels, len, [i], batch)."""

    def __init__(self, seqs, labels=None, name="train", num_features=0):
        self.seqs, self.name, self.num_features = [np.asarray(s) for s in seqs], name, num_features
        self.lengths = np.array([len(s) for s in self.seqs], dtype=np.int64)
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)

    def __len__(self):
        return len(self.seqs)

    def __getitem__(self, i):
        return self.seqs[int(i)]

    def batch(self, indices):
        x, lengths = pad_batch([self.seqs[int(i)] for i in indices], self.num_features)
        y = torch.from_numpy(self.labels[list(indices)]) if self.labels is not None else torch.full((len(indices),), -1)
        return x, lengths, y


class FakeStore:
    def __init__(self, label_names):
        self.label_names = label_names


def plan(**kw):
    base = {"mode": "full", "bptt": 0, "checkpoint_time": 0, "micro_batch": 16, "max_tokens": 0, "max_length": 0,
            "too_long": "error"}
    return {**base, **kw}


def rel_err(a, b):
    return ((a - b).norm() / (b.norm() + 1e-12)).item()


def model_cfg(**kw):
    return ModelCfg(**{"task": "classify", "cell": "lstm", "layers": 2, "hidden": 6, "embed": 5, "dropout": 0.0, **kw})


LENGTHS = torch.tensor([31, 17, 4, 1, 26])


@pytest.mark.parametrize("cell,pooling,bi,numeric", list(itertools.product(["lstm", "gru"], ["last", "mean"],
                                                                             [False, True], [False, True])))
def test_exact_classifier_equals_full(cell, pooling, bi, numeric):
    torch.manual_seed(0)
    cfg = model_cfg(cell=cell, pooling=pooling, bidirectional=bi, layer_norm=True)
    kw = {"num_features": 3} if numeric else {"vocab_size": 11}
    model = SequenceClassifier(cfg, 4, **kw)
    x = torch.randn(5, 31, 3) if numeric else torch.randint(0, 11, (5, 31))
    y = torch.tensor([0, 1, 2, 3, 1])
    params = [p for p in model.parameters()]

    def run(k):
        model.checkpoint_time = k
        logits = model(x, LENGTHS)
        return logits, torch.autograd.grad(F.cross_entropy(logits, y), params)

    ref_logits, ref_grads = run(0)
    for k in (-1, 4):
        logits, grads = run(k)
        assert rel_err(logits, ref_logits) < 1e-5
        for g, r in zip(grads, ref_grads):
            assert rel_err(g, r) < 1e-4


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_stream_continues_a_sequence_across_batches(pooling):
    torch.manual_seed(0)
    model = SequenceClassifier(model_cfg(pooling=pooling), 3, vocab_size=11, checkpoint_time=5)
    x = torch.randint(0, 11, (5, 31))
    whole = model(x, LENGTHS)
    carry = None
    for start, stop in ((0, 12), (12, 20), (20, 31)):
        piece_lengths = (LENGTHS - start).clamp(0, stop - start)
        logits, carry = model.stream(x[:, start:stop], piece_lengths, carry)
        carry = carry.detach()
    assert rel_err(logits, whole) < 1e-5


def test_truncated_reaches_only_the_last_window():
    torch.manual_seed(0)
    model = SequenceClassifier(model_cfg(layers=1), 2, vocab_size=12)
    x = torch.randint(3, 11, (4, 20))
    x[:, 0] = 11  # a token seen only in the first window
    lengths, y = torch.tensor([20, 18, 20, 16]), torch.tensor([0, 1, 1, 0])

    # k >= T: one window, the same gradient as full BPTT
    loss, _ = _truncated_backward(model, x, lengths, y, k=64, weight=None, denom=4, precision=FP32)
    truncated = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    full = F.cross_entropy(model(x, lengths), y, reduction="sum")
    (full / 4).backward()
    assert abs(loss - full.item()) < 1e-4 * full.item()
    for g, p in zip(truncated, model.parameters()):
        assert rel_err(g, p.grad) < 1e-4
    assert model.embedding.weight.grad[11].abs().sum() > 0
    model.zero_grad()
    _truncated_backward(model, x, lengths, y, k=5, weight=None, denom=4, precision=FP32)
    assert model.embedding.weight.grad[11].abs().sum() == 0  # cut off by the truncation
    assert model.embedding.weight.grad[3:11].abs().sum() > 0


def test_macro_f1_matches_a_direct_count():
    rng = np.random.default_rng(0)
    true, pred = rng.integers(0, 5, 200), rng.integers(0, 4, 200)
    scores = []
    for c in range(5):
        tp = np.sum((pred == c) & (true == c))
        fp = np.sum((pred == c) & (true != c))
        fn = np.sum((pred != c) & (true == c))
        if tp + fp + fn:
            precision = tp / (tp + fp) if tp + fp else 0.0
            recall = tp / (tp + fn) if tp + fn else 0.0
            scores.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    assert macro_f1(pred, true, 5) == pytest.approx(np.mean(scores))
    assert macro_f1(true, true, 5) == 1.0


def test_class_weights():
    labels = np.array([0, 0, 0, 1])
    assert class_weights("", labels, 2) is None
    assert class_weights("balanced", labels, 2).tolist() == pytest.approx([4 / 6, 2.0])
    assert class_weights("1,3", labels, 2).tolist() == [1.0, 3.0]
    with pytest.raises(SeqfitError, match="3 classes"):
        class_weights("1,2", labels, 3)


def test_bad_input_messages():
    store = FakeStore(["neg", "pos", "meh"])
    empty = FakeSplit([[3, 4], [], [5]], [0, 1, 0])
    with pytest.raises(SeqfitError, match="1 empty sequence.*#1"):
        check_split(empty, store, max_length=0, too_long="error")
    long = FakeSplit([[3] * 10, [4] * 3], [0, 1])
    with pytest.raises(SeqfitError, match="exceed the maximum length 5"):
        check_split(long, store, max_length=5, too_long="error")
    warned = []
    check_split(long, store, max_length=5, too_long="truncate", warn=warned.append)
    assert "truncated" in warned[0]
    unseen = FakeSplit([[3], [4]], [0, 2], name="valid")
    with pytest.raises(SeqfitError, match="labels training never saw: 'meh'"):
        check_split(unseen, store, max_length=0, too_long="error", train_labels={0, 1})
    with pytest.raises(SeqfitError, match="no labels"):
        check_split(FakeSplit([[3]]), store, max_length=0, too_long="error")


def long_range_data(n, T, seed):
    """The label is the marker (3 or 4) at a random position in the first 10 steps; all else is noise."""
    g = np.random.default_rng(seed)
    seqs, labels = [], g.integers(0, 2, n)
    for y in labels:
        s = g.integers(5, 10, g.integers(T * 3 // 4, T + 1))
        s[g.integers(0, 10)] = 3 + y
        seqs.append(s)
    return FakeSplit(seqs, labels)


def learn_long_range(T, checkpoint_time, max_steps):
    torch.manual_seed(0)
    cfg = model_cfg(layers=1, hidden=16, embed=8, pooling="last", bidirectional=True)
    model = SequenceClassifier(cfg, 2, vocab_size=10, checkpoint_time=checkpoint_time)
    train, test = long_range_data(64, T, 1), long_range_data(64, T, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.03)
    p = plan(mode="exact", checkpoint_time=checkpoint_time)
    g = np.random.default_rng(0)
    for step in range(max_steps):
        micro = [train.batch(g.choice(64, 16, replace=False))]
        optimizer.zero_grad()
        micro_backward(model, micro[0], plan=p, weight=None, denom=16, precision=FP32)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 10 == 9:
            probs, labels = predict_classifier(model, test, p, device=torch.device("cpu"), precision=FP32)
            accuracy = float((probs.argmax(1) == labels).mean())
            if accuracy > 0.95:
                return accuracy
    return accuracy


def test_learns_long_range_task_2000_steps():
    """About 40 s on 2 cores (40 steps); a bidirectional reader with last-step pooling has the marker
    near its reverse direction's end, so this tests the chunked machinery, not long memory."""
    assert learn_long_range(2000, 250, 100) > 0.95


# --- end to end: prepare -> train --task classify -> resume -> predict -------------------------------

def write_jsonl(path: Path, n: int, seed: int, labels=("neg", "pos")) -> Path:
    """Texts whose class shows in which adjective they open with."""
    g = np.random.default_rng(seed)
    words = ["the", "a", "film", "book", "was", "is", "and", "very", "quite", "story"]
    with open(path, "w") as f:
        for i in range(n):
            label = labels[i % len(labels)]
            opener = {"neg": "awful", "pos": "great", "meh": "fine"}[label]
            body = " ".join(g.choice(words, g.integers(5, 25)))
            f.write(json.dumps({"text": f"{opener} {body}", "label": label}) + "\n")
    return path


@pytest.fixture
def classify_dir(tmp_path):
    from seqfit.data.prepare import PrepareOptions, prepare

    train = write_jsonl(tmp_path / "train.jsonl", 96, 1)
    valid = write_jsonl(tmp_path / "valid.jsonl", 32, 2)
    test = write_jsonl(tmp_path / "test.jsonl", 32, 3)
    out = tmp_path / "data"
    prepare(PrepareOptions(out=out, train=(str(train),), valid=(str(valid),), test=(str(test),), task="classify",
                           label_field="label"))
    return out


def test_train_resume_and_predict_end_to_end(classify_dir, tmp_path):
    from click.testing import CliRunner

    from seqfit.cli.predict_cmd import predict

    cfg = RunCfg(model=model_cfg(layers=1, hidden=16, embed=8, pooling="mean"),
                 train=TrainCfg(batch_size=16, max_steps=30, lr=0.02, optimizer="adam", schedule="constant", clip=1.0,
                                log_every=5, checkpoint_every=10),
                 memory=MemoryCfg(checkpoint_time=4))
    run = tmp_path / "run"
    summary = train_classifier(cfg, classify_dir, run, echo=lambda *_: None)
    for key in ("step", "epoch", "plan", "peak_rss", "peak_anon", "tokens_per_s", "valid_accuracy", "valid_macro_f1"):
        assert summary[key] is not None, key
    assert summary["valid_ppl"] is None and summary["step"] == 30
    assert summary["plan"]["mode"] == "exact"
    assert summary["valid_accuracy"] > 0.9
    assert {"config.toml", "plan.json", "run.json", "metrics.jsonl", "summary.json", "checkpoint"} <= {p.name for p in run.iterdir()}
    with pytest.raises(SeqfitError, match="already holds a run"):
        train_classifier(cfg, classify_dir, run, echo=lambda *_: None)

    more = RunCfg(model=cfg.model, train=TrainCfg(**{**cfg.train.__dict__, "max_steps": 40}), memory=cfg.memory)
    resumed = train_classifier(more, classify_dir, run, resume=True, echo=lambda *_: None)
    assert resumed["step"] == 40

    result = CliRunner().invoke(predict, [str(run), str(classify_dir), "--json", "--probs"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["count"] == 32 and report["accuracy"] > 0.9
    rows = list(csv.DictReader(open(report["predictions"])))
    assert len(rows) == 32 and {"index", "predicted", "confidence", "label", "p_neg", "p_pos"} <= set(rows[0])

    text = tmp_path / "new.txt"
    text.write_text("great film and very story\nawful book is quite\n")
    result = CliRunner().invoke(predict, [str(run), str(text), "--out", str(tmp_path / "p.csv"), "--json"])
    assert result.exit_code == 0, result.output
    assert [r["predicted"] for r in csv.DictReader(open(tmp_path / "p.csv"))] == ["pos", "neg"]


def test_truncated_training_runs_and_unseen_valid_labels_fail(tmp_path):
    from seqfit.data.prepare import PrepareOptions, prepare

    train = write_jsonl(tmp_path / "train.jsonl", 40, 1)
    valid = write_jsonl(tmp_path / "valid.jsonl", 12, 2, labels=("neg", "pos", "meh"))
    out = tmp_path / "data"
    prepare(PrepareOptions(out=out, train=(str(train),), valid=(str(valid),), task="classify", label_field="label"))
    cfg = RunCfg(model=model_cfg(layers=1, hidden=8, embed=8),
                 train=TrainCfg(batch_size=8, max_steps=3, bptt=6, optimizer="adam", lr=0.01, log_every=1))
    with pytest.raises(SeqfitError, match="labels training never saw: 'meh'"):
        train_classifier(cfg, out, tmp_path / "run", echo=lambda *_: None)
    prepare(PrepareOptions(out=out, train=(str(train),), valid=(str(train),), task="classify", label_field="label",
                           overwrite=True))
    summary = train_classifier(cfg, out, tmp_path / "run2", echo=lambda *_: None)
    assert summary["plan"]["mode"] == "truncated" and summary["plan"]["bptt"] == 6 and summary["step"] == 3


def test_cli_options_reach_the_classifier_and_evaluate_routes_it(classify_dir, tmp_path, cli):
    """--max-length/--too-long/--class-weights are config flags; `seqfit evaluate` measures a classifier."""
    tiny = ["--task", "classify", "--layers", "1", "--hidden", "16", "--embed", "8", "--batch-size", "16",
            "--optimizer", "adam", "--lr", "0.02", "--schedule", "constant", "--device", "cpu", "--max-steps", "30"]
    code, _, err = cli("train", classify_dir, "--out", tmp_path / "refused", *tiny, "--max-length", "5")
    assert code == 2 and "exceed the maximum length 5" in err and "\n" not in err.strip()
    assert not (tmp_path / "refused" / "checkpoint").exists()

    run_dir = tmp_path / "run"
    code, out, err = cli("train", classify_dir, "--out", run_dir, *tiny, "--max-length", "12", "--too-long", "truncate",
                         "--class-weights", "balanced", "--json")
    assert code == 0, err
    summary = json.loads(out)
    plan = summary["plan"]
    assert (plan["max_length"], plan["too_long"], plan["class_weights"], plan["bptt"], plan["mode"]) == \
        (12, "truncate", "balanced", 0, "full")
    assert "truncated to their first 12 steps" in err + out

    code, out, err = cli("evaluate", run_dir, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["task"] == "classify" and result["count"] == 32
    assert result["accuracy"] == pytest.approx(summary["valid_accuracy"])  # the opener word is within 12 steps
    code, out, _ = cli("evaluate", run_dir, "--split", "test")
    assert code == 0 and "accuracy" in out and "macro-F1" in out
