"""The memory watchdog: a run pushed over its budget stops with a checkpoint (exit 4) and resumes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from seqfit.errors import MemoryBudgetExceeded
from seqfit.measure.memory import MemorySampler, read_resident
from seqfit.memory.watchdog import Watchdog

MB = 2**20


def test_check_passes_under_budget_and_raises_over_it():
    with MemorySampler(interval=0.005) as sampler:
        dog = Watchdog(read_resident()[1] + 200 * MB, sampler)
        dog.check(step=1)
        hog = np.ones(300 * MB // 8)  # (37.5M,) float64, written: resident anonymous pages
        with pytest.raises(MemoryBudgetExceeded) as e:
            dog.check(step=2)
        del hog
    assert e.value.exit_code == 4
    assert "step 2" in str(e.value) and "--resume" in str(e.value)


def test_a_spike_between_checks_is_not_missed():
    with MemorySampler(interval=0.002) as sampler:
        dog = Watchdog(read_resident()[1] + 150 * MB, sampler)
        hog = np.ones(250 * MB // 8)
        import time

        time.sleep(0.05)  # the sampler sees it
        del hog  # gone again before the check
        with pytest.raises(MemoryBudgetExceeded):
            dog.check()


def test_training_pushed_over_budget_stops_with_a_checkpoint_and_resumes(capsys, data_dir, tmp_path, monkeypatch):
    """A leak of 400 MB at step 3 crosses a budget the plan fits in: exit 4, checkpoint, then --resume finishes."""
    import seqfit.engine.session as session
    from seqfit.cli.main import main

    monkeypatch.setenv("SEQFIT_NO_CALIBRATE", "1")
    monkeypatch.setenv("SEQFIT_CACHE_DIR", str(tmp_path / "cache"))
    real_step, leaked, calls = session.train_step, [], []

    def leaky_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            leaked.append(np.ones(400 * MB // 8))  # another "process": resident, anonymous, never freed
        return real_step(*args, **kwargs)

    monkeypatch.setattr(session, "train_step", leaky_step)
    out = tmp_path / "run"
    tiny = ["--layers", "1", "--hidden", "32", "--embed", "32", "--batch-size", "4", "--bptt", "8", "--lr", "0.01",
            "--device", "cpu", "--log-every", "1", "--checkpoint-every", "100"]

    def run(*args):
        try:
            main([str(a) for a in args])
            return 0
        except SystemExit as e:
            return e.code or 0

    budget = f"{(read_resident()[1] + 250 * MB) // MB}MB"  # fits the tiny run, not the leak
    code = run("train", data_dir, "--out", out, *tiny, "--budget", budget, "--max-steps", 10)
    err = capsys.readouterr().err
    assert code == 4, err
    assert "budget" in err and "--resume" in err
    saved = dict(json.loads((out / "checkpoint" / "state.json").read_text())["state"]["__dict__"])
    assert saved["step"] == 3  # the step in flight when memory crossed finished; nothing more was lost
    leaked.clear()
    monkeypatch.setattr(session, "train_step", real_step)
    code = run("train", data_dir, "--out", out, "--resume", "--max-steps", 10, "--json")
    assert code == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["step"] == 10
