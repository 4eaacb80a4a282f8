"""Encoder-decoder runs end to end through the command line: prepare pairs, train, evaluate, translate, plan;
and the one-line errors of bad pairs."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from conftest import run_cli_ok

SYMBOLS = "abcdefghij"


def write_pairs(path: Path, n: int, seed: int, lo: int = 3, hi: int = 8, transform=lambda s: s[::-1]) -> Path:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n):
            s = [rng.choice(SYMBOLS) for _ in range(rng.randint(lo, hi))]
            f.write(json.dumps({"src": " ".join(s), "tgt": " ".join(transform(s))}) + "\n")
    return path


def prepare_pairs(cli, tmp_path: Path, name: str = "data", n: int = 1200, **kw) -> Path:
    train = write_pairs(tmp_path / f"{name}-train.jsonl", n, 1, **kw)
    valid = write_pairs(tmp_path / f"{name}-valid.jsonl", 60, 2, **kw)
    test = write_pairs(tmp_path / f"{name}-test.jsonl", 60, 3, **kw)
    out = tmp_path / name
    code, _, err = cli("prepare", "--train", train, "--valid", valid, "--test", test, "--task", "seq2seq",
                       "--text-field", "src", "--target-field", "tgt", "--out", out)
    assert code == 0, err
    return out


TRAIN = ("--task", "seq2seq", "--layers", "1", "--hidden", "64", "--embed", "16", "--dropout", "0", "--optimizer",
         "adam", "--lr", "0.01", "--clip", "1", "--batch-size", "32", "--eval-batches", "2", "--checkpoint-every", "0")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A reversal model trained for a few hundred steps (shared by the tests that read a finished run)."""
    tmp = tmp_path_factory.mktemp("s2s")

    cli = run_cli_ok
    train = write_pairs(tmp / "train.jsonl", 3000, 1)
    valid = write_pairs(tmp / "valid.jsonl", 100, 2)
    test = write_pairs(tmp / "test.jsonl", 100, 3)
    cli("prepare", "--train", train, "--valid", valid, "--test", test, "--task", "seq2seq", "--text-field", "src",
        "--target-field", "tgt", "--out", tmp / "data")
    cli("train", tmp / "data", "--out", tmp / "run", *TRAIN, "--max-steps", "450", "--bidirectional",
        "--attention", "dot", "--no-input-feed", "--log-every", "50")
    return tmp


def test_reversal_learned_and_evaluate_reports_bleu_chrf_exact_match(trained, cli):
    code, out, err = cli("evaluate", trained / "run", "--split", "test", "--json", "--beam", "3")
    assert code == 0, err
    result = json.loads(out)
    assert {"bleu", "chrf", "exact_match", "loss", "ppl"} <= set(result)
    assert 0.0 <= result["exact_match"] <= 1.0
    assert result["exact_match"] >= 0.9, result  # lengths 3-8: a few hundred steps learn it
    assert result["bleu"] > 80 and result["chrf"] > 80
    code, out, _ = cli("evaluate", trained / "run", "--split", "test", "--json", "--beam", "1")
    greedy = json.loads(out)
    assert greedy["beam"] == 1 and greedy["loss"] == pytest.approx(result["loss"])  # decoding leaves the loss alone


def test_translate_keeps_order_and_empty_lines(trained, cli, tmp_path):
    lines = ["a b c d", "", "j i h g f e", "c", "b b a"] * 30  # more lines than one batch of 64
    src = tmp_path / "in.txt"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out.txt"
    code, _, err = cli("translate", trained / "run", src, "--out", out, "--beam", "2", "--batch-size", "8")
    assert code == 0, err
    got = out.read_text(encoding="utf-8").split("\n")[:-1]
    assert len(got) == len(lines)
    assert got[1] == "" and got[6] == ""
    expect = [" ".join(line.split()[::-1]) for line in lines]
    assert sum(g == e for g, e in zip(got, expect)) >= 0.8 * len(lines)
    assert got[:5] == got[5:10]  # the same source, decoded in other batches, gives the same output
    code, stdout, _ = cli("translate", trained / "run", src, "--beam", "2", "--batch-size", "8")
    assert stdout.split("\n")[:-1] == got


def test_translate_refuses_other_runs_and_bad_files(trained, cli, tmp_path, data_dir):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\x00 binary")
    code, _, err = cli("translate", trained / "run", bad)
    assert code == 2 and "UTF-8" in err and "Traceback" not in err
    code, _, err = cli("translate", trained / "run", tmp_path / "missing.txt")
    assert code == 2 and err.count("\n") == 1
    lm_run = tmp_path / "lm"
    assert cli("train", data_dir, "--out", lm_run, "--max-steps", "2", "--hidden", "16", "--embed", "16")[0] == 0
    src = tmp_path / "in.txt"
    src.write_text("a b\n", encoding="utf-8")
    code, _, err = cli("translate", lm_run, src)
    assert code == 2 and "holds a 'lm' model, not an encoder-decoder" in err


def test_bad_pairs_fail_with_one_line_and_write_nothing(cli, tmp_path):
    rows = [{"src": "a b", "tgt": "b a"}] * 20 + [{"src": "a", "tgt": ""}]
    path = tmp_path / "empty-side.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    data = tmp_path / "d"
    assert cli("prepare", path, "--task", "seq2seq", "--text-field", "src", "--target-field", "tgt",
               "--valid-fraction", "0", "--out", data)[0] == 0
    run = tmp_path / "run"
    code, _, err = cli("train", data, "--out", run, *TRAIN, "--max-steps", "2")
    assert code == 2 and "empty target" in err and err.count("\n") == 1
    assert not run.exists() or not any(run.iterdir())

    long = prepare_pairs(cli, tmp_path, "long", n=100, lo=3, hi=12)
    code, _, err = cli("train", long, "--out", run, *TRAIN, "--max-steps", "2", "--max-length", "6")
    assert code == 2 and "exceed the maximum length 6" in err and err.count("\n") == 1
    code, _, err = cli("train", long, "--out", run, *TRAIN, "--max-steps", "2", "--max-length", "6",
                       "--too-long", "truncate")
    assert code == 0 and "truncated" in err

    code, _, err = cli("train", long, "--out", tmp_path / "r2", *TRAIN, "--max-steps", "2", "--bptt", "5")
    assert code == 2 and "--checkpoint-time" in err


def test_model_and_vocabulary_mismatch_is_refused(trained, cli, tmp_path):
    """A run read with another pair store (another vocabulary): one line, nothing decoded."""
    other = prepare_pairs(cli, tmp_path, "other", n=200, transform=lambda s: [c.upper() for c in s])
    code, out, err = cli("evaluate", trained / "run", "--data", other, "--split", "test")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err and out == ""


def test_plan_and_budget(cli, tmp_path):
    data = prepare_pairs(cli, tmp_path, n=400)
    code, out, err = cli("plan", data, "--task", "seq2seq", "--hidden", "64", "--embed", "16", "--batch-size", "32",
                         "--json")
    assert code == 0, err
    plan = json.loads(out)
    assert plan["plan"]["predicted_peak_bytes"] > 0
    code, out, err = cli("plan", data, "--task", "seq2seq", "--hidden", "64", "--embed", "16", "--batch-size", "32",
                         "--budget", "10MB")
    assert code == 3 and "nothing fits" in err


def test_separate_vocabularies(cli, tmp_path):
    """--separate-vocab: each side its own vocabulary; the model's output layer is the target's size."""
    from seqfit.data.sequences import SequenceStore

    upper = lambda s: [c.upper() + "x" for c in s[::-1]]  # noqa: E731  (no token shared with the sources)
    data = prepare_pairs(cli, tmp_path, n=300, transform=upper)
    shared = SequenceStore(data)
    assert shared.target_vocab is shared.vocab and len(shared.vocab) == 3 + 20
    train = tmp_path / "data-train.jsonl"
    sep = tmp_path / "sep"
    assert cli("prepare", train, "--task", "seq2seq", "--text-field", "src", "--target-field", "tgt", "--separate-vocab",
               "--out", sep)[0] == 0
    store = SequenceStore(sep)
    assert len(store.vocab) == len(store.target_vocab) == 3 + 10
    split = store.split("train")
    assert all(t[0].isupper() and t.endswith("x") for t in store.target_vocab.decode(split.target(0)))
    assert all(t.islower() for t in store.vocab.decode(split[0]))
    code, _, err = cli("train", sep, "--out", tmp_path / "run", *TRAIN, "--max-steps", "2", "--share-embeddings")
    assert code == 2 and "--separate-vocab" in err
    assert cli("train", sep, "--out", tmp_path / "run", *TRAIN, "--max-steps", "2")[0] == 0
    code, _, err = cli("prepare", train, "--task", "classify", "--label-field", "tgt", "--separate-vocab",
                       "--out", tmp_path / "x")
    assert code == 2 and "--separate-vocab applies to --task seq2seq" in err


@pytest.mark.slow
def test_reversal_of_5_to_40_symbols_reaches_99_percent_exact_match(cli, tmp_path):
    """Issue 15's bar: a synthetic transduction over lengths 5-40 decoded exactly >= 99% of the time
    (with a constant learning rate valid exact match went 97.7% at step 626, 99.0% at 750, then swung between
    87% and 98%: the plateau schedule, validating every 250 steps, quarters the rate once the loss stalls;
    at 1,500 steps one run decoded 98.7% of the test pairs exactly; 3,000 steps passed in 6 minutes on a busy
    2-core machine)."""
    train = write_pairs(tmp_path / "train.jsonl", 20000, 1, lo=5, hi=40)
    valid = write_pairs(tmp_path / "valid.jsonl", 200, 2, lo=5, hi=40)
    test = write_pairs(tmp_path / "test.jsonl", 300, 3, lo=5, hi=40)
    data = tmp_path / "data"
    assert cli("prepare", "--train", train, "--valid", valid, "--test", test, "--task", "seq2seq", "--text-field",
               "src", "--target-field", "tgt", "--out", data)[0] == 0
    code, _, err = cli("train", data, "--out", tmp_path / "run", "--task", "seq2seq", "--layers", "1", "--hidden", "128",
                       "--embed", "32", "--dropout", "0", "--optimizer", "adam", "--lr", "0.003", "--clip", "1",
                       "--batch-size", "64", "--bidirectional", "--attention", "dot", "--no-input-feed",
                       "--schedule", "plateau", "--eval-every", "250", "--max-steps", "3000",
                       "--eval-batches", "2")
    assert code == 0, err
    trained = err
    code, out, err = cli("evaluate", tmp_path / "run", "--split", "test", "--beam", "1", "--json")
    assert code == 0, err
    assert json.loads(out)["exact_match"] >= 0.99, (out, trained[-3000:])
