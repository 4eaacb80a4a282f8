"""PhaseProfiler: an allocation of known size shows up in the phase that made it, and only there."""

import json
import time

import pytest
import torch

from seqfit.measure.profile import PHASES, PhaseProfiler

MB = 2**20


def _step(prof: PhaseProfiler, work: dict) -> None:
    for name in PHASES:
        with prof.phase(name):
            work.get(name, lambda: torch.randn(64).sum())()
    prof.step_done()


def _transient(size_bytes: int, hold_s: float = 0.0):
    def work():
        t = torch.ones(size_bytes // 4)  # float32; ones() touches every page, so it is resident
        assert t.numel() * t.element_size() == size_bytes
        if hold_s:
            time.sleep(hold_s)
        del t

    return work


def test_transient_allocation_shows_in_its_phase_only():
    size = 200 * MB
    with PhaseProfiler("cpu") as prof:
        for _ in range(2):
            _step(prof, {"loss": _transient(size)})
    rows = {r["phase"]: r for r in prof.table()}
    assert list(rows) == list(PHASES)
    loss = rows["loss"]
    assert loss["steps"] == 2
    for key in ("rise_rss", "rise_anon"):
        assert 0.9 * size <= loss[key] <= 1.1 * size, (key, loss[key])
    assert abs(loss["delta_anon"]) < 0.1 * size  # freed before the phase ended
    assert 0.9 * size <= loss["over_base"] <= 1.1 * size
    for name in PHASES:
        if name != "loss":
            assert rows[name]["rise_rss"] < 0.1 * size, (name, rows[name])
            assert rows[name]["rise_anon"] < 0.1 * size, (name, rows[name])


def test_sampler_alone_catches_an_allocation_held_a_while():
    # where /proc/self/clear_refs is not writable the sampler thread is all there is
    size = 64 * MB
    prof = PhaseProfiler("cpu", interval=0.002)
    prof.hwm = False
    with prof:
        _step(prof, {"forward": _transient(size, hold_s=0.05)})
    rows = {r["phase"]: r for r in prof.table()}
    assert 0.9 * size <= rows["forward"]["rise_anon"] <= 1.1 * size
    assert rows["backward"]["rise_anon"] < 0.1 * size
    assert "may miss short spikes" in prof.format_table()


def test_kept_tensor_is_a_delta_of_the_phase_that_made_it_and_the_one_that_freed_it():
    size = 64 * MB
    kept = {}
    work = {
        "forward": lambda: kept.update(t=torch.ones(size // 4)),  # "activations" kept for backward
        "backward": lambda: kept.clear(),
    }
    with PhaseProfiler("cpu") as prof:
        _step(prof, work)
    rows = {r["phase"]: r for r in prof.table()}
    assert 0.9 * size <= rows["forward"]["delta_anon"] <= 1.1 * size
    assert -1.1 * size <= rows["backward"]["delta_anon"] <= -0.9 * size
    assert rows["backward"]["rise_anon"] < 0.1 * size  # freeing is no rise
    assert rows["loss"]["peak_anon"] >= prof.baseline.anon + 0.9 * size  # still held in between
    assert rows["loss"]["rise_anon"] < 0.1 * size  # but not new there


def test_repeated_phase_in_a_step_folds_and_custom_phases_follow():
    with PhaseProfiler("cpu") as prof:
        for _ in range(3):
            for _ in range(4):  # gradient accumulation: four micro-batches a step
                with prof.phase("forward"):
                    time.sleep(0.002)
            with prof.phase("eval"):
                pass
            prof.step_done()
    rows = prof.table()
    assert [r["phase"] for r in rows] == ["forward", "eval"]
    assert rows[0]["steps"] == 3
    assert rows[0]["seconds"] >= 4 * 0.002  # summed over the micro-batches of a step


def test_nested_phases_raise():
    with PhaseProfiler("cpu") as prof:
        with prof.phase("forward"):
            with pytest.raises(RuntimeError, match="do not nest"):
                with prof.phase("loss"):
                    pass


def test_predicted_table_and_json():
    size = 32 * MB
    with PhaseProfiler("cpu", keep_timeline=True) as prof:
        _step(prof, {"loss": _transient(size, hold_s=0.02)})
    rows = {r["phase"]: r for r in prof.table({"loss": size, "forward": 0})}
    assert rows["loss"]["predicted"] == size
    assert rows["loss"]["ratio"] == pytest.approx(rows["loss"]["over_base"] / size)
    assert 0.9 <= rows["loss"]["ratio"] <= 1.1
    assert "predicted" not in rows["data"]
    text = prof.format_table({"loss": size})
    assert all(name in text for name in PHASES) and "ratio" in text
    data = json.loads(json.dumps(prof.to_json({"loss": size})))
    assert data["steps"] == 1 and [r["phase"] for r in data["phases"]] == list(PHASES)
    assert set(data["per_step"][0]) == set(PHASES)
    assert [s[0] for s in data["spans"]] == list(PHASES)
    assert prof.timeline and max(s[2] for s in prof.timeline) >= prof.baseline.anon + 0.9 * size
    assert data["peaks"]["peak_anon"] == max(r["peak_anon"] for r in data["phases"]) == rows["loss"]["peak_anon"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_allocation_shows_in_its_phase_only():
    size = 256 * MB
    device = torch.device("cuda")
    with PhaseProfiler(device) as prof:
        for _ in range(2):
            _step(prof, {"loss": lambda: torch.ones(size // 4, device=device).sum().item()})
    rows = {r["phase"]: r for r in prof.table()}
    assert 0.9 * size <= rows["loss"]["rise_cuda"] <= 1.1 * size
    assert rows["loss"]["peak_cuda_reserved"] >= size
    for name in PHASES:
        if name != "loss":
            assert rows[name]["rise_cuda"] < 0.1 * size


def test_phase_predictions_fold_the_estimate_into_profiler_phases():
    from seqfit.config import RunCfg
    from seqfit.memory.constants import default_constants
    from seqfit.memory.estimate import DataInfo, estimate, phase_predictions
    from seqfit.memory.plan import requested_plan

    cfg = RunCfg()
    consts = default_constants("cpu")
    est = estimate(cfg, DataInfo(5000), requested_plan(cfg, DataInfo(5000), "cpu"), consts)
    got = phase_predictions(est, 100 * MB)
    assert set(got) == {"forward", "loss", "backward", "optimizer"}
    assert got["backward"] == max(est["phases"]["backward"], est["phases"]["loss backward"]) - 100 * MB
    assert max(got.values()) == est["peak"] - 100 * MB


def test_profile_command_prints_predicted_next_to_measured(data_dir, tmp_path):
    """In a fresh process, as users run it: the baseline then is the runtime alone."""
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ, SEQFIT_NO_CALIBRATE="1", SEQFIT_CACHE_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-m", "seqfit", "profile", str(data_dir), "--steps", "2", "--layers", "1",
                          "--hidden", "32", "--embed", "32", "--batch-size", "4", "--bptt", "8", "--device", "cpu",
                          "--json"], capture_output=True, text=True, env=env, check=True).stdout
    rows = {r["phase"]: r for r in json.loads(out)["phases"]}
    for phase in ("forward", "loss", "backward", "optimizer"):
        assert rows[phase]["predicted"] > 0 and rows[phase]["ratio"] == rows[phase]["over_base"] / rows[phase]["predicted"]
