"""Data-parallel training (torch.distributed, gloo on CPU), launched as users do: `seqfit train --nproc 2`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import write_corpus
from safetensors.torch import load_file

ENV = dict(os.environ, OMP_NUM_THREADS="1", SEQFIT_DIST_TIMEOUT="60")
LM = ["--layers", "1", "--hidden", "24", "--embed", "16", "--bptt", "10", "--optimizer", "sgd", "--lr", "0.5",
      "--log-every", "4", "--eval-every", "6", "--checkpoint-every", "100"]
CLASSIFY = ["--task", "classify", "--layers", "1", "--hidden", "16", "--embed", "8", "--pooling", "mean",
            "--optimizer", "sgd", "--lr", "0.5", "--log-every", "4", "--checkpoint-every", "100"]

SEQ2SEQ = ["--task", "seq2seq", "--layers", "1", "--hidden", "16", "--embed", "8", "--bidirectional",
           "--optimizer", "sgd", "--lr", "0.5", "--log-every", "4", "--checkpoint-every", "100"]


def seqfit(*args, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "seqfit", *map(str, args)], capture_output=True, text=True, env=ENV,
                          timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoint" / "model.safetensors"))


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    seqfit("prepare", "--train", write_corpus(tmp / "train.txt", 1200, 1), "--valid", write_corpus(tmp / "valid.txt", 120, 2),
           "--out", tmp / "lm")
    lines = []
    for i in range(160):
        label = ("neg", "pos")[i % 2]
        body = " ".join(["the", "film", "was", "very", "quite", "story"][(i * 7 + k) % 6] for k in range(4 + i % 13))
        lines.append(json.dumps({"text": f"{'awful' if label == 'neg' else 'great'} {body}", "label": label}))
    (tmp / "train.jsonl").write_text("\n".join(lines) + "\n")
    (tmp / "valid.jsonl").write_text("\n".join(lines[:40]) + "\n")
    seqfit("prepare", "--train", tmp / "train.jsonl", "--valid", tmp / "valid.jsonl", "--task", "classify",
           "--label-field", "label", "--out", tmp / "cls")
    pairs = [json.dumps({"src": " ".join("abcdef"[(i * k) % 6] for k in range(3 + i % 7)),
                         "tgt": " ".join("abcdef"[(i * k) % 6] for k in range(3 + i % 7))[::-1]}) for i in range(160)]
    (tmp / "pairs.jsonl").write_text("\n".join(pairs) + "\n")
    (tmp / "pairs-valid.jsonl").write_text("\n".join(pairs[:40]) + "\n")
    seqfit("prepare", "--train", tmp / "pairs.jsonl", "--valid", tmp / "pairs-valid.jsonl", "--task", "seq2seq",
           "--text-field", "src", "--target-field", "tgt", "--out", tmp / "s2s")
    return tmp


@pytest.mark.parametrize("task, flags", [("lm", LM), ("cls", CLASSIFY), ("s2s", SEQ2SEQ)])
def test_two_ranks_of_batch_b_equal_one_process_of_batch_2b(stores, tmp_path, task, flags):
    data = stores / task
    seqfit("train", data, "--out", tmp_path / "one", *flags, "--batch-size", "8", "--dropout", "0", "--max-steps", "12")
    two = seqfit("train", data, "--out", tmp_path / "two", *flags, "--batch-size", "4", "--dropout", "0",
                 "--max-steps", "12", "--nproc", "2", "--json")
    summary = json.loads(two.stdout)  # rank 0 alone reports
    assert summary["world_size"] == 2 and summary["step"] == 12
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-6, atol=1e-7, msg=name)


def test_stop_and_resume_at_two_ranks_is_bit_exact(stores, tmp_path):
    data = stores / "lm"
    flags = [*LM, "--batch-size", "4", "--dropout", "0.2", "--nproc", "2"]  # dropout: each rank's RNG is restored
    seqfit("train", data, "--out", tmp_path / "whole", *flags, "--max-steps", "16")
    seqfit("train", data, "--out", tmp_path / "split", *flags, "--max-steps", "7")
    seqfit("train", data, "--out", tmp_path / "split", "--resume", "--nproc", "2", "--max-steps", "16")
    a, b = weights(tmp_path / "whole"), weights(tmp_path / "split")
    assert all(torch.equal(a[k], b[k]) for k in a)
    state = json.loads((tmp_path / "split" / "checkpoint" / "state.json").read_text())
    assert "world_size" in json.dumps(state)  # each rank's RNG and carried state are saved
    # a different world size resumes too (streams re-cut, states restarted), and says so
    resumed = seqfit("train", data, "--out", tmp_path / "split", "--resume", "--max-steps", "18")
    assert "re-sharded" in resumed.stderr + resumed.stdout


def test_a_killed_rank_ends_the_run_with_a_non_zero_exit(stores, tmp_path):
    import psutil

    launcher = subprocess.Popen([sys.executable, "-m", "seqfit", "train", str(stores / "lm"), "--out", str(tmp_path / "r"),
                                 *LM, "--batch-size", "4", "--max-steps", "100000", "--nproc", "2"],
                                env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        workers = []
        while time.monotonic() < deadline and len(workers) < 2:
            time.sleep(0.5)
            workers = [p for p in psutil.Process(launcher.pid).children(recursive=True)
                       if "seqfit" in " ".join(p.cmdline())]
        assert len(workers) == 2, "the two ranks did not start"
        while not (tmp_path / "r" / "metrics.jsonl").exists() and time.monotonic() < deadline:
            time.sleep(0.2)  # training has begun
        os.kill(workers[1].pid, signal.SIGKILL)
        started = time.monotonic()
        code = launcher.wait(timeout=90)
        assert code != 0
        assert time.monotonic() - started < 90
        assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in workers)
    finally:
        if launcher.poll() is None:
            launcher.kill()


def test_a_memory_probe_asked_from_a_rank_runs_on_its_own(monkeypatch, data_dir):
    """The planner's probe child must not try to join the group of the rank that asked for it."""
    from seqfit.config import ModelCfg, RunCfg, TrainCfg
    from seqfit.memory.probe import measure_run

    for key, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(key, value)
    cfg = RunCfg(model=ModelCfg(layers=1, hidden=16, embed=8), train=TrainCfg(batch_size=4, bptt=8))
    result = measure_run(cfg, data_dir, steps=2, timeout=120)
    assert result["peak_bytes"] > 0 and result["device"] == "cpu"
