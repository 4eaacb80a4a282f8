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
