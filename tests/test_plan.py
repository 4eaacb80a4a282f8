"""plan_for_budget and `seqfit plan`: the chosen plan fits, nothing fitting is refused before allocating."""

from __future__ import annotations

import json

import pytest

from seqfit.config import RunCfg, merge
from seqfit.errors import BudgetError
from seqfit.measure.memory import read_resident
from seqfit.memory.constants import Constants
from seqfit.memory.estimate import DataInfo, estimate
from seqfit.memory.plan import (SAFETY_MARGIN, apply_plan, candidates, effective_batch, plan_for_budget,
                                requested_plan)

MB = 2**20
CONSTS = Constants()


@pytest.fixture(autouse=True)
def no_calibration(monkeypatch, tmp_path):
    monkeypatch.setenv("SEQFIT_NO_CALIBRATE", "1")
    monkeypatch.setenv("SEQFIT_CACHE_DIR", str(tmp_path / "cache"))


def cfg_of(model=None, train=None, memory=None) -> RunCfg:
    return merge(RunCfg(), {"model": {"layers": 2, "hidden": 256, "embed": 256, **(model or {})},
                            "train": {"batch_size": 64, "bptt": 100, **(train or {})},
                            "memory": {"device": "cpu", **(memory or {})}})


def test_chosen_plan_fits_and_resolves_to_itself():
    cfg, data = cfg_of(memory={"loss": "auto"}), DataInfo(30_000)
    want = estimate(cfg, data, requested_plan(cfg, data, "cpu"), CONSTS)["peak"]
    least = min(estimate(cfg, data, p, CONSTS)["peak"] for p in candidates(cfg, data, "cpu"))
    budget = int((want + least / (1 - SAFETY_MARGIN)) / 2)  # the plan as asked does not fit, a smaller one does
    assert budget < want
    choice = plan_for_budget(cfg, data, budget, CONSTS, device="cpu")
    assert choice.plan["predicted_peak_bytes"] <= budget * (1 - SAFETY_MARGIN)
    assert sum(choice.parts.values()) == choice.plan["predicted_peak_bytes"]
    resolved = requested_plan(choice.cfg, data, "cpu")
    assert {k: choice.plan[k] for k in resolved} == resolved
    assert effective_batch(choice.cfg) == effective_batch(cfg)  # same gradients: same streams per step
    assert choice.cfg.model == cfg.model and choice.cfg.train.optimizer == cfg.train.optimizer
    assert choice.alternatives and all("fits" in a for a in choice.alternatives)
    assert "fit" in choice.plan["reason"]


def test_more_memory_never_gives_a_slower_plan():
    cfg, data = cfg_of(memory={"loss": "auto"}), DataInfo(10_000)
    speeds = [plan_for_budget(cfg, data, b * MB, CONSTS, device="cpu").plan["predicted_tokens_per_s"]
              for b in (450, 600, 900, 2000)]
    assert speeds == sorted(speeds)


def test_planner_turns_to_chunked_loss_and_checkpointing_when_needed():
    cfg = cfg_of({"hidden": 512, "embed": 512}, {"batch_size": 32, "bptt": 400}, {"loss": "auto"})
    data = DataInfo(50_000)
    roomy = plan_for_budget(cfg, data, 64 * 2**30, CONSTS, device="cpu").plan
    assert roomy["checkpoint_time"] == 0 and roomy["micro_batch"] == 32
    tight = min((p for p in candidates(cfg, data, "cpu") if p["micro_batch"] == 1),
                key=lambda p: estimate(cfg, data, p, CONSTS)["peak"])
    budget = int(estimate(cfg, data, tight, CONSTS)["peak"] / (1 - SAFETY_MARGIN)) + MB
    plan = plan_for_budget(cfg, data, budget, CONSTS, device="cpu").plan
    assert plan["predicted_peak_bytes"] <= budget
    assert plan["loss"] == "chunked" or plan["checkpoint_time"] or plan["micro_batch"] < 32


def test_too_small_a_budget_is_refused_with_what_the_smallest_plan_needs_before_allocating():
    # 250k vocabulary x 4096 hidden: the weights alone are ~8 GB; building it would allocate them
    cfg, data = cfg_of({"hidden": 4096, "embed": 4096}, {"batch_size": 8}), DataInfo(250_000)
    before = read_resident()[1]
    with pytest.raises(BudgetError) as e:
        plan_for_budget(cfg, data, 1 * 2**30, CONSTS, device="cpu")
    assert read_resident()[1] - before < 64 * MB  # nothing model-sized was allocated
    message = str(e.value)
    assert "smallest plan" in message and "needs" in message and "\n" not in message
    assert e.value.exit_code == 3


def test_apply_plan_keeps_everything_else():
    cfg = cfg_of(train={"lr": 3.0, "clip": 0.5}, memory={"precision": "bf16"})
    plan = {**requested_plan(cfg, DataInfo(100), "cpu"), "micro_batch": 16, "accumulate": 4, "checkpoint_time": 10}
    out = apply_plan(cfg, plan)
    assert out.train.batch_size == 16 and out.memory.accumulate == 4 and out.memory.checkpoint_time == 10
    assert out.train.lr == 3.0 and out.train.clip == 0.5 and out.memory.precision == "bf16"


def run_cli(capsys, *args):
    from seqfit.cli.plan_cmd import plan

    try:
        plan.main([str(a) for a in args], standalone_mode=False)
        code = 0
    except BudgetError as e:
        code = e.exit_code
        print(e)
    out, err = capsys.readouterr()
    return code, out, err


def test_plan_command_json_with_a_data_dir(capsys, data_dir):
    code, out, _ = run_cli(capsys, data_dir, "--layers", "1", "--hidden", "32", "--embed", "32", "--budget", "2GB",
                           "--device", "cpu", "--json")
    assert code == 0
    r = json.loads(out)
    assert r["predicted_peak_bytes"] == sum(r["parts"].values())
    assert r["plan"]["micro_batch"] * r["plan"]["accumulate"] == 20  # the config's default batch
    assert r["budget_bytes"] == 2 * 2**30 and r["plan"]["predicted_peak_bytes"] <= r["budget_bytes"]


def test_plan_command_table_and_refusal(capsys):
    code, out, _ = run_cli(capsys, "--vocab-size", "10000", "--hidden", "650", "--embed", "650", "--device", "cpu")
    assert code == 0 and "predicted peak" in out and "optimizer state" in out
    code, out, _ = run_cli(capsys, "--vocab-size", "250000", "--hidden", "2048", "--embed", "2048", "--budget", "500MB",
                           "--device", "cpu")
    assert code == 3 and "smallest plan" in out


def test_plan_verify_measures_a_real_run(capsys):
    code, out, _ = run_cli(capsys, "--vocab-size", "200", "--layers", "1", "--hidden", "64", "--embed", "64",
                           "--batch-size", "8", "--bptt", "16", "--device", "cpu", "--verify", "--verify-steps", "3",
                           "--json")
    assert code == 0
    r = json.loads(out)
    assert r["measured_peak_bytes"] > 0
    assert abs(r["predicted_peak_bytes"] - r["measured_peak_bytes"]) / r["measured_peak_bytes"] < 0.25
    assert 0 < r["baseline_bytes"] < r["measured_peak_bytes"]  # the runtime before the model, under the peak


def test_train_refuses_a_budget_nothing_fits_before_writing_anything(capsys, data_dir, tmp_path):
    from seqfit.cli.main import main

    out = tmp_path / "run"
    try:
        main(["train", str(data_dir), "--out", str(out), "--hidden", "64", "--embed", "64", "--budget", "50MB",
              "--device", "cpu", "--max-steps", "2"])
        code = 0
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 3 and "smallest plan" in err and "needs" in err
    assert not out.exists()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_chunked_loss_is_no_longer_the_peak_of_the_large_lstm_recipe(precision):
    # 2 x 650 LSTM, 64 x 200 tokens, V = 18k, no budget: --loss auto picks chunked. With a 1 GiB byte-sized
    # default chunk one chunk held all 12,800 rows and the loss's backward was the peak (2.0 GB predicted,
    # 2.0 GB measured in fp32; 1.8 GB in bf16). With rows at the speed knee the bf16 run fits in 1 GiB; in
    # fp32 the peak moves to the recurrent layers' backward (their activations alone are ~940 MiB).
    from seqfit.memory.constants import DEFAULT_CONSTANTS

    cfg = cfg_of({"hidden": 650, "embed": 650}, {"batch_size": 64, "bptt": 200},
                 {"loss": "auto", "precision": precision})
    data = DataInfo(18_000)
    plan = requested_plan(cfg, data, "cpu")
    assert plan["loss"] == "chunked" and plan["loss_chunk"] == 0
    est = estimate(cfg, data, plan, DEFAULT_CONSTANTS)
    assert est["phases"]["loss backward"] < 1.1 * 2**30
    assert est["phase"] == "backward" and est["parts"]["output_loss"] == 0
    if precision == "bf16":
        assert est["peak"] < 2**30


def test_chunk_options_start_at_the_runtime_default_and_shrink():
    from seqfit.memory.plan_lm import _chunk_options
    from seqfit.nn.chunked_loss import default_chunk_tokens

    cfg = cfg_of(memory={"loss": "auto"})
    for vocab, tokens in ((18_000, 12_800), (100_000, 3200), (250_000, 640)):
        options = _chunk_options(cfg, DataInfo(vocab), tokens)
        assert options[0] == default_chunk_tokens(vocab, tokens) and len(options) >= 3
        assert options == sorted(set(options), reverse=True) and options[-1] <= options[0] // 8


def test_effective_batch_under_a_budget_is_the_planners_to_split(cli, data_dir, tmp_path, monkeypatch):
    """No --batch-size: the default (20) does not divide 256, and must not block the planner (it chose before)."""
    monkeypatch.setenv("SEQFIT_CACHE_DIR", str(tmp_path))
    code, out, err = cli("plan", data_dir, "--effective-batch", "256", "--bptt", "70", "--budget", "900MB",
                         "--no-calibrate", "--json")
    assert code == 0, err
    plan = json.loads(out)["plan"]
    assert plan["micro_batch"] * plan["accumulate"] == plan["batch_size"] == 256
    code, out, err = cli("plan", data_dir, "--effective-batch", "256", "--no-calibrate", "--json")  # no budget
    assert code == 0, err
    plan = json.loads(out)["plan"]
    assert (plan["micro_batch"], plan["accumulate"]) == (16, 16)  # the largest divisor of 256 under 20


def test_the_alternatives_table_tells_plans_with_and_without_spare_gradients_apart(cli, data_dir, tmp_path,
                                                                                    monkeypatch):
    """A CPU language model's plans come in pairs that differ only by their spare gradients: each table row says
    which it is, so no two rows read the same."""
    monkeypatch.setenv("SEQFIT_CACHE_DIR", str(tmp_path))
    code, out, err = cli("plan", data_dir, "--budget", "2GB", "--no-calibrate", "--device", "cpu")
    assert code == 0, err
    header, *rows = out.split("alternatives (fastest first):\n", 1)[1].splitlines()
    assert header.split()[-4:] == ["spares", "peak", "tokens/s", "fits"]
    # micro x acc, ckpt, loss, chunk, spares; then peak (number and unit), tokens/s, fits
    settings = [tuple(row.split()[:7]) for row in rows if " x " in row]
    assert settings and {s[-1] for s in settings} == {"yes", "no"} and len(set(settings)) == len(settings)
