"""Fixed-seed runs through `seqfit train`, stopped and resumed in the middle: the numbers must not move.

Two checks:
- always: a run stopped at step 12 and resumed to step 24 logs the same losses and ends with the same
  weights, bit for bit, as the uninterrupted run;
- on the machine kind that recorded tests/data/engine_reference.json (same torch, CPU model and flags):
  the losses and weights equal the recorded ones bit for bit. The reference was recorded from the two
  task loops before they moved onto the one engine, so this is the proof that the move changed nothing.
  Other machines skip it: float results depend on the CPU's kernels.
  Re-recorded once since, when Adam took its fused step (commit ba494cf): it reorders the update's float
  arithmetic (tests/test_optim.py holds it to the plain update); with the plain step the old reference
  still held bit for bit, so nothing else on this path has moved the numbers.

Refresh the reference (only when a change is meant to alter the numbers):
    SEQFIT_RECORD_REFERENCE=1 .venv/bin/python -m pytest tests/test_engine_equivalence.py
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from conftest import write_corpus

REFERENCE = Path(__file__).parent / "data" / "engine_reference.json"
STEPS, STOP = 24, 12

LM_FLAGS = ["--layers", "2", "--hidden", "24", "--embed", "16", "--dropout", "0.2", "--batch-size", "8", "--bptt", "12",
            "--accumulate", "2", "--optimizer", "adam", "--lr", "0.01", "--clip", "1.0", "--schedule", "constant",
            "--log-every", "1", "--eval-every", "8", "--checkpoint-every", "100", "--checkpoint-time", "5",
            "--state-reset", "0.05"]
CLASSIFY_FLAGS = ["--task", "classify", "--layers", "1", "--hidden", "16", "--embed", "8", "--dropout", "0.2",
                  "--pooling", "mean", "--batch-size", "8", "--accumulate", "2", "--optimizer", "adam", "--lr", "0.02",
                  "--clip", "1.0", "--schedule", "constant", "--log-every", "1", "--eval-every", "8",
                  "--checkpoint-every", "100", "--checkpoint-time", "4"]


def machine_key() -> str:
    flags = ""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        model = next((l.split(":", 1)[1].strip() for l in cpuinfo.splitlines() if l.startswith("model name")), "")
        flags = " ".join(f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f in cpuinfo)
    except OSError:
        model = platform.processor()
    return f"torch {torch.__version__} | {model} | {flags} | threads {torch.get_num_threads()}"


def write_reviews(path: Path, n: int, seed: int) -> Path:
    g = np.random.default_rng(seed)
    words = ["the", "a", "film", "book", "was", "is", "and", "very", "quite", "story"]
    with open(path, "w") as f:
        for i in range(n):
            label = ("neg", "pos")[i % 2]
            body = " ".join(g.choice(words, g.integers(5, 25)))
            f.write(json.dumps({"text": f"{'awful' if label == 'neg' else 'great'} {body}", "label": label}) + "\n")
    return path


@pytest.fixture
def stores(tmp_path, cli):
    lm = tmp_path / "lm"
    code, _, err = cli("prepare", "--train", write_corpus(tmp_path / "train.txt", 600, 1),
                       "--valid", write_corpus(tmp_path / "valid.txt", 120, 2), "--out", lm)
    assert code == 0, err
    cls = tmp_path / "cls"
    code, _, err = cli("prepare", "--train", write_reviews(tmp_path / "train.jsonl", 96, 1),
                       "--valid", write_reviews(tmp_path / "valid.jsonl", 32, 2), "--task", "classify",
                       "--label-field", "label", "--out", cls)
    assert code == 0, err
    return {"lm": (lm, LM_FLAGS), "classify": (cls, CLASSIFY_FLAGS)}


def run_numbers(cli, data: Path, flags: list[str], out: Path, *, stop_at: int = 0) -> dict:
    """Train to STEPS (through a stop at ``stop_at`` and --resume when given); the logged losses and a weight digest."""
    if stop_at:
        code, _, err = cli("train", data, "--out", out, *flags, "--max-steps", stop_at)
        assert code == 0, err
        code, _, err = cli("train", data, "--out", out, "--resume", "--max-steps", STEPS)
    else:
        code, _, err = cli("train", data, "--out", out, *flags, "--max-steps", STEPS)
    assert code == 0, err
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    weights = load_file(str(out / "checkpoint" / "model.safetensors"))
    digest = hashlib.sha256(b"".join(weights[k].tobytes() for k in sorted(weights))).hexdigest()
    return {"train": [r["loss"].hex() for r in records if r["kind"] == "train"],
            "valid": {str(r["step"]): r["loss"].hex() for r in records if r["kind"] == "valid"},
            "weights": digest}


@pytest.mark.parametrize("task", ["lm", "classify"])
def test_resume_is_bit_exact_and_matches_reference(task, stores, cli, tmp_path):
    data, flags = stores[task]
    whole = run_numbers(cli, data, flags, tmp_path / "whole")
    resumed = run_numbers(cli, data, flags, tmp_path / "resumed", stop_at=STOP)
    assert len(whole["train"]) == STEPS
    assert resumed["train"] == whole["train"] and resumed["weights"] == whole["weights"]
    # The stopped run also validated where it stopped; every validation of the whole run is there, equal.
    assert {k: resumed["valid"].get(k) for k in whole["valid"]} == whole["valid"]

    recorded = json.loads(REFERENCE.read_text()) if REFERENCE.exists() else {}
    if os.environ.get("SEQFIT_RECORD_REFERENCE"):
        recorded.setdefault(machine_key(), {})[task] = whole
        REFERENCE.parent.mkdir(exist_ok=True)
        REFERENCE.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
    reference = recorded.get(machine_key(), {}).get(task)
    if reference is None:
        pytest.skip(f"no recorded reference for this machine ({machine_key()})")
    assert whole == reference
