"""The time profile: model FLOPs by hand, the ceilings cache, `seqfit profile --time`, and hooks that change nothing."""

from __future__ import annotations

import json

import pytest
import torch

from seqfit.config import ModelCfg
from seqfit.engine.time_run import part_hooks
from seqfit.measure import ceilings as ceilings_mod
from seqfit.measure.ceilings import best_ceiling, load_ceilings, raise_ceiling
from seqfit.measure.flops import classifier_step_flops, lm_step_flops, recurrent_flops, step_flops
from seqfit.measure.profile import PHASES
from seqfit.measure.time_profile import TimeProfiler
from seqfit.models.lm import LanguageModel

FAKE = {"gflops": {"fp32_mkl": 10.0, "fp32_onednn": 20.0}, "skipped": {"bf16": "test"}, "size": 8, "seconds": 0.0}


def test_flops_match_a_hand_count():
    # LSTM, 2 layers, H = 3, E = 2, V = 5, 7 tokens. Per token: layer 1 multiplies [x; h] (2 + 3) by a
    # 5 x 12 matrix: 2 * 5 * 12 = 120; layer 2 (3 + 3) x 12: 144; the output 3 x 5: 2 * 15 = 30.
    assert recurrent_flops("lstm", 2, 3, 2, tokens=1) == 120 + 144
    assert lm_step_flops(cell="lstm", layers=2, hidden=3, embed=2, vocab=5, tokens=7) == 3 * 7 * (120 + 144 + 30)
    # GRU (3 gates), bidirectional, 1 layer, H = 4, 6 features, 3 classes; 10 real tokens in 2 sequences:
    # per token 2 directions * 2 * 12 * (6 + 4) = 480; per sequence the head reads 2 * 4: 2 * 8 * 3 = 48.
    assert classifier_step_flops(cell="gru", layers=1, hidden=4, input_size=6, classes=3, tokens=10, sequences=2,
                                 directions=2) == 3 * (10 * 480 + 2 * 48)
    # a second bidirectional layer reads both directions: input 2 * 4
    assert recurrent_flops("rnn", 6, 4, 2, tokens=1, directions=2) == 2 * 2 * 4 * (6 + 4) + 2 * 2 * 4 * (8 + 4)


def test_step_flops_reads_the_sizes_off_the_model():
    cfg = ModelCfg(cell="gru", layers=2, hidden=12, embed=6, dropout=0.0)
    model = LanguageModel(cfg, vocab_size=50)
    want = lm_step_flops(cell="gru", layers=2, hidden=12, embed=6, vocab=50, tokens=40)
    assert step_flops("lm", model, {"tokens": 40}) == want
    assert step_flops("seq2seq", torch.nn.Linear(2, 2), {"tokens": 40}) is None


def test_ceilings_are_measured_once_then_read_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQFIT_CACHE_DIR", str(tmp_path))
    calls = []
    monkeypatch.setattr(ceilings_mod, "measure_ceilings", lambda device="cpu": calls.append(device) or dict(FAKE))
    first = load_ceilings("cpu")
    again = load_ceilings("cpu")
    assert len(calls) == 1 and first == again
    files = list(tmp_path.glob("ceilings-*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["key"]["threads"] == torch.get_num_threads()
    load_ceilings("cpu", refresh=True)  # --recalibrate
    assert len(calls) == 2
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)  # another thread count is another machine as far as GEMM goes
    try:
        load_ceilings("cpu")
    finally:
        torch.set_num_threads(threads)
    assert len(calls) == 3 and len(list(tmp_path.glob("ceilings-*.json"))) == 2
    assert best_ceiling(first, "fp32") == ("fp32_onednn", 20.0)
    assert best_ceiling(first, "bf16") is None


def test_a_faster_later_measurement_raises_the_cached_ceiling(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQFIT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(ceilings_mod, "measure_ceilings", lambda device="cpu": dict(FAKE))
    cached = load_ceilings("cpu")
    assert raise_ceiling(cached, "fp32_mkl", 5.0)["gflops"]["fp32_mkl"] == FAKE["gflops"]["fp32_mkl"]  # slower: kept
    raised = raise_ceiling(cached, "fp32_mkl", 30.0)
    assert raised["gflops"]["fp32_mkl"] == 30.0 and load_ceilings("cpu") == raised  # cached for later runs
    assert best_ceiling(raised, "fp32") == ("fp32_mkl", 30.0)
    assert "bf16" not in raise_ceiling(raised, "bf16", 999.0)["gflops"]  # a path the machine lacks stays out


def test_page_faults_and_cpu_time_land_in_their_phase():
    prof = TimeProfiler("cpu")
    with prof.step():
        with prof.phase("forward"):
            t = torch.ones(16 << 20, dtype=torch.uint8)  # 16 MiB of fresh pages, each touched
            del t
        with prof.phase("loss"):
            pass
    rows = prof.table()
    assert rows["forward"]["minflt"] > 0
    for row in rows.values():
        assert isinstance(row["minflt"], int) and row["minflt"] >= 0 and isinstance(row["majflt"], int)
        assert row["seconds"] >= 0 and row["user_s"] >= 0 and row["system_s"] >= 0
    assert rows["forward"]["seconds"] + rows["loss"]["seconds"] <= rows["step"]["seconds"]


def test_part_hooks_change_no_gradient():
    cfg = ModelCfg(cell="lstm", layers=2, hidden=8, embed=4, dropout=0.0)
    x, y = torch.randint(0, 20, (3, 5)), torch.randint(0, 20, (15,))

    def grads(hooked: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = LanguageModel(cfg, vocab_size=20)
        prof = TimeProfiler("cpu")
        handles = part_hooks(model, prof) if hooked else []
        with prof.step():
            with prof.phase("forward"):
                feats, _ = model(x)  # (3, 5, 8)
            with prof.phase("backward"):
                model.head.loss(feats.reshape(-1, 8), y).backward()
        for h in handles:
            h.remove()
        if hooked:
            table = prof.table()
            assert set(table["forward"]["parts"]) == {"other", "embedding", "recurrent"}
            assert set(table["backward"]["parts"]) == {"output", "recurrent", "embedding"}
        return [p.grad.clone() for p in model.parameters()]

    for a, b in zip(grads(False), grads(True)):
        assert torch.equal(a, b)


def test_profile_time_json_reports_every_phase(cli, data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SEQFIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(ceilings_mod, "measure_ceilings", lambda device="cpu": dict(FAKE))
    measured = []  # the run's path is measured once more after the steps, and a faster figure raises the cache
    monkeypatch.setattr(ceilings_mod, "measure_cpu_path", lambda path, **kw: measured.append(path) or 25.0)
    code, out, err = cli("profile", data_dir, "--time", "--json", "--steps", "2", "--layers", "1", "--hidden", "16",
                         "--embed", "8", "--batch-size", "4", "--bptt", "8", "--device", "cpu", "--loss", "full")
    assert code == 0, err
    report = json.loads(out)
    phases = report["phases"]
    assert set(PHASES) <= set(phases) and {"other", "step"} <= set(phases)
    for name, row in phases.items():
        for r in [row, *row.get("parts", {}).values()]:
            assert r["seconds"] >= 0 and r["user_s"] >= 0 and r["system_s"] >= 0, name
            assert isinstance(r["minflt"], int) and r["minflt"] >= 0, name
            assert isinstance(r["majflt"], int) and r["majflt"] >= 0, name
    step = phases["step"]["seconds"]
    inside = sum(phases[p]["seconds"] for p in PHASES)
    assert inside <= step + 1e-9
    assert inside + phases["other"]["seconds"] == pytest.approx(step, rel=1e-6)
    assert {"embedding", "recurrent", "output"} <= set(phases["backward"]["parts"])
    tokens = 4 * 8
    assert report["tokens_per_step"] == tokens
    assert measured == ["fp32_onednn"]
    assert report["ceilings"]["gflops"] == {**FAKE["gflops"], "fp32_onednn": 25.0}
    assert report["ceiling"] == {"path": "fp32_onednn", "gflops": 25.0}
    assert report["achieved_flops"] == pytest.approx(report["flops_per_step"] / step)
    assert report["fraction_of_ceiling"] == pytest.approx(report["achieved_flops"] / 25e9)
    assert report["steps"] == 2


def test_profile_time_refuses_a_memory_plot(cli, data_dir):
    code, _, err = cli("profile", data_dir, "--time", "--plot", "x.png")
    assert code == 2 and "--plot" in err


def _small_run():
    from seqfit.config import RunCfg, merge

    return merge(RunCfg(), {"model": {"layers": 1, "hidden": 16, "embed": 8, "dropout": 0.0},
                            "train": {"batch_size": 4, "bptt": 8},
                            "memory": {"device": "cpu", "loss": "full"}})


def test_time_steps_keeps_stepping_until_min_seconds_and_stops_at_max_steps(data_dir, monkeypatch):
    import seqfit.engine.time_run as time_run

    _, prof, stats = time_run.time_steps(_small_run(), data_dir, steps=1, warmup=1, min_seconds=0.2)
    assert len(stats) == len(prof.steps) >= 2  # one step of this size takes milliseconds
    assert sum(prof.step_seconds()) >= 0.2
    assert sum(prof.step_seconds()[:-1]) < 0.2  # and no step more than it needed
    monkeypatch.setattr(time_run, "MAX_STEPS", 3)
    _, prof, stats = time_run.time_steps(_small_run(), data_dir, steps=1, warmup=0, min_seconds=1e9)
    assert len(stats) == 3
    _, prof, stats = time_run.time_steps(_small_run(), data_dir, steps=5, warmup=0, min_seconds=1e9)
    assert len(stats) == 5  # `steps` is a floor the cap never cuts


def test_the_report_reads_rates_off_the_median_step_too(data_dir):
    from seqfit.engine.time_run import time_report, time_steps

    session, prof, stats = time_steps(_small_run(), data_dir, steps=5, warmup=1)
    prof.steps[2]["step"] = prof.steps[2]["step"] + type(prof.steps[2]["step"])(wall=10.0)  # one stalled step
    report = time_report(session, prof, stats, dict(FAKE))
    walls = sorted(s["step"].wall for s in prof.steps)
    median = report["median"]
    assert median["seconds"] == pytest.approx(walls[2]) and median["seconds"] < 1.0
    assert report["phases"]["step"]["seconds"] > 2.0  # the mean carries the stall
    assert median["tokens_per_second"] == pytest.approx(report["tokens_per_step"] / walls[2])
    assert median["fraction_of_ceiling"] == pytest.approx(report["flops_per_step"] / walls[2] / 20e9)


def test_host_steal_is_the_stolen_share_of_the_timed_steps_ticks(monkeypatch):
    import seqfit.measure.machine as machine

    readings = iter([(100, 1000), (130, 1100),  # step 1: 30 of 100 ticks stolen
                     (130, 1100), (140, 1400)])  # step 2: 10 of 300
    monkeypatch.setattr(machine, "cpu_jiffies", lambda: next(readings))
    prof = TimeProfiler("cpu")
    for _ in range(2):
        with prof.step():
            pass
    assert prof.host_steal() == pytest.approx(40 / 400)
    assert prof.to_json()["host_steal"] == pytest.approx(0.1)
    monkeypatch.setattr(machine, "cpu_jiffies", lambda: None)  # not Linux
    prof = TimeProfiler("cpu")
    with prof.step():
        pass
    assert prof.host_steal() is None


def test_cpu_jiffies_reads_steal_from_proc_stat():
    import os

    from seqfit.measure.machine import cpu_jiffies

    if not os.path.exists("/proc/stat"):
        assert cpu_jiffies() is None
        return
    with open("/proc/stat") as f:  # cpu user nice system idle iowait irq softirq steal ...
        fields = [int(v) for v in f.readline().split()[1:9]]
    steal, total = cpu_jiffies()  # read a moment later: the counters only grow
    assert fields[7] <= steal <= total and total >= sum(fields)


def test_a_ceiling_is_the_best_of_its_timed_products_and_records_the_host_steal(monkeypatch):
    import time

    sleeps = iter([0.0, 0.06, 0.01, 0.04] + [0.06] * 10)  # warm-up, then one quick product among slow ones
    gflops = ceilings_mod._best_gflops(lambda: time.sleep(next(sleeps)), size=100, repeats=4)
    assert 2 * 100**3 / 0.02 / 1e9 < gflops <= 2 * 100**3 / 0.01 / 1e9  # the quick one, not the mean
    monkeypatch.setattr(ceilings_mod, "CPU_SIZE", 64)
    measured = ceilings_mod.measure_ceilings("cpu")
    assert measured["size"] == 64 and measured["gflops"]["fp32_mkl"] > 0
    steal = measured["host_steal"]
    assert steal is None or 0.0 <= steal <= 1.0


def test_bench_speed_reads_its_rows_against_the_best_ceiling_it_saw(tmp_path, monkeypatch):
    """A ceiling measured beside a row above the cached one raises the cache, and every row of the run, the ones
    timed before it too, is read against the raised ceiling."""
    import importlib.util
    import sys
    from pathlib import Path

    file = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_speed.py"
    monkeypatch.syspath_prepend(str(file.parent))
    spec = importlib.util.spec_from_file_location("bench_speed", file)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    sys.modules.pop("common", None)  # bench_speed's import of benchmarks/common.py, as test_machine.py leaves it
    monkeypatch.setenv("SEQFIT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(ceilings_mod, "measure_ceilings", lambda device="cpu": dict(FAKE))
    cached = load_ceilings("cpu")  # fp32: MKL 10, oneDNN 20
    rows = [{"row": "a", "prec": "fp32", "GFLOP/s": 15.0, "ceiling": "fp32_onednn", "%ceil": 75.0, "ceil now": 18},
            {"row": "b", "prec": "fp32", "GFLOP/s": 20.0, "ceiling": "fp32_onednn", "%ceil": 100.0, "ceil now": 40},
            {"row": "bare", "prec": "fp32", "tok/s": 1}]
    after = bench._read_against_best(rows, cached)
    assert after["gflops"]["fp32_onednn"] == 40 and load_ceilings("cpu")["gflops"]["fp32_onednn"] == 40
    assert [r.get("%ceil") for r in rows] == [37.5, 50.0, None]
