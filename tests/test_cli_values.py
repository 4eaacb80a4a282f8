"""Nonsense numbers on the command line (or in a TOML config) end in one line and exit 2, before anything is built."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import write_corpus
from seqfit.data.prepare import PrepareOptions, prepare_text

TRAIN = [  # (flags, words the message must hold)
    (["--hidden", "-3"], "--hidden must be >= 1, got -3"),
    (["--layers", "0"], "--layers must be >= 1"),
    (["--embed", "0"], "--embed must be >= 1"),
    (["--dropout", "1.5"], "--dropout must be in [0, 1)"),
    (["--dropout", "-0.1"], "--dropout must be in [0, 1)"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--log-every", "0"], "--log-every must be >= 1"),
    (["--accumulate", "0"], "--accumulate must be >= 1"),
    (["--lr", "-1"], "--lr must be >= 0"),
    (["--lr", "nan"], "--lr must be a finite number"),
    (["--clip", "-0.5"], "--clip must be >= 0"),
    (["--momentum", "-0.9"], "--momentum must be >= 0"),
    (["--weight-decay", "-1"], "--weight-decay must be >= 0"),
    (["--label-smoothing", "1"], "--label-smoothing must be in [0, 1)"),
    (["--max-steps", "-1"], "--max-steps must be >= 0"),
    (["--max-minutes", "-2"], "--max-minutes must be >= 0"),
    (["--warmup", "-1"], "--warmup must be >= 0"),
    (["--eval-every", "-1"], "--eval-every must be >= 0"),
    (["--eval-batches", "-1"], "--eval-batches must be >= 0"),
    (["--checkpoint-every", "-1"], "--checkpoint-every must be >= 0"),
    (["--max-length", "-1"], "--max-length must be >= 0"),
    (["--bptt", "-5"], "--bptt must be >= 0"),
    (["--checkpoint-time", "-2"], "--checkpoint-time must be >= -1"),
    (["--loss-chunk", "-1"], "--loss-chunk must be >= 0"),
    (["--max-tokens", "-1"], "--max-tokens must be >= 0"),
    (["--effective-batch", "-1"], "--effective-batch must be >= 0"),
    (["--seed", "-1"], "--seed must be >= 0"),
    (["--hidden", "abc"], "'--hidden'"),  # click's own type error, also one line
]

PREPARE = [
    (["--valid-fraction", "1"], "--valid-fraction"),
    (["--valid-fraction", "-0.1"], "--valid-fraction"),
    (["--valid-fraction", "nan"], "--valid-fraction"),
    (["--min-freq", "0"], "--min-freq"),
    (["--max-vocab", "-1"], "--max-vocab"),
    (["--max-vocab", "2"], "--max-vocab"),
    (["--bpe-vocab", "10", "--level", "subword"], "--bpe-vocab"),
    (["--workers", "-1"], "--workers"),
    (["--seed", "-1"], "--seed"),
    (["--shard-size", "10"], "--shard-size"),
]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("values")
    out = root / "data"
    prepare_text(PrepareOptions(out=out, inputs=(str(write_corpus(root / "c.txt", lines=100)),)))
    return out


def one_line_error(code: int, err: str, words: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("seqfit: error:"), err
    assert words in lines[0] and "Traceback" not in err


@pytest.mark.parametrize("flags,words", TRAIN, ids=[" ".join(f) for f, _ in TRAIN])
def test_train_rejects_nonsense_numbers(cli, store, tmp_path, flags, words):
    code, out, err = cli("train", store, "--out", tmp_path / "r", *flags)
    one_line_error(code, err, words)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("flags,words", PREPARE, ids=[" ".join(f) for f, _ in PREPARE])
def test_prepare_rejects_nonsense_numbers(cli, tmp_path, flags, words):
    corpus = write_corpus(tmp_path / "c.txt", lines=50)
    code, out, err = cli("prepare", corpus, "--out", tmp_path / "d", *flags)
    one_line_error(code, err, words)
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("args,words", [
    (["plan", "--vocab-size", "0"], "--vocab-size"),
    (["plan", "--vocab-size", "100", "--verify-steps", "0"], "--verify-steps"),
    (["plan", "--vocab-size", "100", "--hidden", "0"], "--hidden must be >= 1"),
    (["plan", "--vocab-size", "100", "--budget", "1GB", "--accumulate", "-1"], "--accumulate must be >= 1"),
    (["profile", "DATA", "--steps", "0"], "--steps"),
    (["profile", "DATA", "--batch-size", "-4"], "--batch-size must be >= 1"),
])
def test_plan_and_profile_reject_nonsense_numbers(cli, store, args, words):
    code, out, err = cli(*[str(store) if a == "DATA" else a for a in args])
    one_line_error(code, err, words)


def test_toml_config_gets_the_same_range_checks(cli, store, tmp_path):
    config = tmp_path / "run.toml"
    config.write_text("[model]\nhidden = -3\n")
    code, out, err = cli("train", store, "--out", tmp_path / "r", "--config", config)
    one_line_error(code, err, "[model] hidden must be >= 1, got -3")
    assert not (tmp_path / "r").exists()
