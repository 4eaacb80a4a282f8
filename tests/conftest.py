"""Shared fixtures: small corpora the tests write themselves."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from seqfit.data.prepare import PrepareOptions, prepare_text
from seqfit.nn.precision import cpu_bf16_rnn_supported

# bf16 training on CPU needs oneDNN's bf16 recurrent kernels (AVX-512); elsewhere seqfit refuses bf16 with one line.
needs_cpu_bf16 = pytest.mark.skipif(not cpu_bf16_rnn_supported(), reason="this CPU has no bf16 recurrent kernels")

# Tests use tiny models, which gain nothing from intra-op threads; one thread also keeps OpenMP from
# spinning against other processes on a busy 2-core machine (a 6x slowdown seen here).
torch.set_num_threads(1)


def write_corpus(path: Path, lines: int = 400, seed: int = 0) -> Path:
    """A tiny learnable 'language': sentences from a small grammar, with blank lines between paragraphs."""
    rng = random.Random(seed)
    subjects = ["the cat", "a dog", "the bird", "my friend", "the river"]
    verbs = ["sees", "likes", "follows", "finds", "crosses"]
    objects = ["the hill", "a stone", "the tree", "its shadow", "the road"]
    out = []
    for i in range(lines):
        if i % 10 == 9:
            out.append("")
        else:
            out.append(f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)} .")
    path.write_text("\n".join(out) + "\n", encoding="utf-8")
    return path


def run_cli(*args) -> int:
    """The command line in-process, for module-scoped fixtures (no capsys): its exit code."""
    from seqfit.cli.main import main

    try:
        main([str(a) for a in args])
    except SystemExit as e:
        return e.code or 0
    return 0


def run_cli_ok(*args) -> None:
    """run_cli that must succeed (fixtures that build a run): a failure names the command."""
    assert run_cli(*args) == 0, [str(a) for a in args]


@pytest.fixture
def cli(capsys):
    """Run the command line in-process: cli(*args) -> (exit code, stdout, stderr)."""
    from seqfit.cli.main import main

    def run(*args) -> tuple[int, str, str]:
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code or 0
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "corpus.txt")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A prepared word-level store with train and valid splits."""
    train = write_corpus(tmp_path / "train.txt", lines=600, seed=1)
    valid = write_corpus(tmp_path / "valid.txt", lines=120, seed=2)
    out = tmp_path / "data"
    prepare_text(PrepareOptions(out=out, train=(str(train),), valid=(str(valid),)))
    return out
