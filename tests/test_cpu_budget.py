"""--max-cpu-minutes stops training on the process's CPU time (time.process_time), as --max-minutes does on
the wall clock: after the step in flight, with a checkpoint of that step, a summary, and exit 0."""

from __future__ import annotations

import json
import time

from conftest import write_corpus

TINY = ["--layers", "1", "--hidden", "32", "--embed", "16", "--batch-size", "4", "--bptt", "8", "--log-every", "1",
        "--checkpoint-every", "0", "--eval-batches", "2"]


def _data(tmp_path, cli):
    data = tmp_path / "data"
    code, _, err = cli("prepare", "--train", write_corpus(tmp_path / "t.txt", 800, 1), "--out", data)
    assert code == 0, err
    return data


def test_a_small_cpu_budget_stops_before_the_epochs_end(tmp_path, cli):
    data, run = _data(tmp_path, cli), tmp_path / "run"
    code, out, err = cli("train", data, "--out", run, *TINY, "--epochs", "200", "--max-cpu-minutes", "0.002", "--json")
    assert code == 0, err
    summary = json.loads(out)
    step = summary["step"]
    assert f"--max-cpu-minutes 0.002 reached at step {step}" in err
    assert step > 0 and summary["epoch"] < 200  # 200 epochs of this corpus take ~100x the budget
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert dict(state["state"]["__dict__"])["step"] == step  # the checkpoint is of the step it stopped after
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if r["kind"] == "train"][-1] == step


def test_the_budget_reads_cpu_time_not_the_wall_clock(tmp_path, cli, monkeypatch):
    data = _data(tmp_path, cli)
    # CPU time that never advances: the budget is never spent, however long the run takes on the wall clock
    monkeypatch.setattr(time, "process_time", lambda: 5.0)
    code, out, err = cli("train", data, "--out", tmp_path / "still", *TINY, "--max-steps", "6",
                         "--max-cpu-minutes", "0.0001", "--json")
    assert code == 0, err
    assert json.loads(out)["step"] == 6 and "reached" not in err
    # CPU time that leaps an hour after the loop starts: the run stops after its first step
    calls = iter(range(10**6))
    monkeypatch.setattr(time, "process_time", lambda: 3600.0 * min(1, next(calls)))
    code, out, err = cli("train", data, "--out", tmp_path / "leap", *TINY, "--max-steps", "6",
                         "--max-cpu-minutes", "30", "--json")
    assert code == 0, err
    assert json.loads(out)["step"] == 1 and "--max-cpu-minutes 30 reached at step 1" in err


def test_a_cosine_schedule_ends_with_the_cpu_budget(tmp_path, cli, monkeypatch):
    """--schedule cosine under --max-cpu-minutes: the lr falls with the budget's share spent (a CPU clock that
    advances a second per reading here), not with the 200 epochs' steps, and is near 0 when the budget ends."""
    data = _data(tmp_path, cli)
    ticks = iter(range(10**7))
    monkeypatch.setattr(time, "process_time", lambda: float(next(ticks)))
    run = tmp_path / "cos"
    code, out, err = cli("train", data, "--out", run, *TINY, "--epochs", "200", "--schedule", "cosine", "--lr", "2",
                         "--max-cpu-minutes", "1", "--json")
    assert code == 0, err
    assert "--max-cpu-minutes 1 reached" in err
    lrs = [r["lr"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]
    assert len(lrs) >= 5 and all(a >= b for a, b in zip(lrs, lrs[1:]))  # falling at every step
    assert lrs[0] < 2.0 and lrs[-1] < 0.1 * 2.0  # by the budget's share, to ~0 as it runs out
    spent = json.loads((run / "checkpoint" / "state.json").read_text())
    assert "cpu_spent" in json.dumps(spent)


def test_schedule_counts_cpu_across_resume():
    import math

    import torch

    from seqfit.engine.schedule import make_schedule

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make_schedule("cosine", opt, base_lr=1.0, total_steps=10**6)
    sched.budget(100.0)
    for _ in range(4):
        sched.step(10.0)  # 40 of 100 CPU seconds
    assert math.isclose(sched.lr, 0.5 * (1 + math.cos(math.pi * 0.4)), rel_tol=1e-6)
    again = make_schedule("cosine", torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), base_lr=1.0,
                          total_steps=10**6)
    again.load_state_dict(sched.state_dict())
    again.budget(60.0)  # resumed with 60 more: 40 of 100 spent still
    assert math.isclose(again.lr, sched.lr, rel_tol=1e-9)
    plain = make_schedule("constant", opt, base_lr=1.0, total_steps=10)
    plain.budget(1.0)
    plain.step(5.0)
    assert plain.lr == 1.0  # only the cosine reads the budget
