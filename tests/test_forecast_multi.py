"""A forecaster on a store of many series (--group-field): one model beats seasonal naive across series of
different levels, trends and seasons (10, 12, 16 and 24 rows, where the baseline has the one --season 24, right
for some series only: the network learns each series' own); predict writes one row per series and step, detect one per series and point, both
naming the series by its group value; the planner's index costs bytes per series, not per window."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli as _cli

from seqfit.config import from_options

N, VALID = 900, 180  # rows per series; the last 20% of each is held out
LEVELS, AMPS, PERIODS = [0, 8, -6, 15, 4, -12], [3, 2, 4, 1.5, 3, 2.5], [24, 12, 16, 24, 10, 16]
TRENDS = [0.01, -0.005, 0.02, 0.0, 0.01, -0.01]
NAMES = [f"store-{k}" for k in range(6)]
SPIKES = {1: 820, 4: 790}  # series -> row (in the valid tail) of a +20 noise-sigma spike, for detect
NOISE = 0.3
FLAGS = ["--task", "forecast", "--target", "y", "--lookback", 48, "--horizon", 12, "--season", 24, "--cell", "gru",
         "--layers", 1, "--hidden", 32, "--dropout", 0, "--optimizer", "adam", "--lr", 0.01, "--batch-size", 32,
         "--clip", 1, "--log-every", 100, "--checkpoint-every", 0]


def long_csv(path: Path, spikes: bool = False) -> Path:
    rng = np.random.default_rng(3)
    lines = ["id,t,y"]
    for k, name in enumerate(NAMES):
        t = np.arange(N)
        y = (LEVELS[k] + TRENDS[k] * t + AMPS[k] * np.sin(2 * np.pi * t / PERIODS[k] + k)
             + rng.normal(0, NOISE, N))
        if spikes and k in SPIKES:
            y[SPIKES[k]] += 20 * NOISE  # the one-step errors of a short run are ~2x the noise
        stamps = 1000 * k + (k + 1) * t  # each series its own clock: every k + 1 units
        lines += [f"{name},{a},{b:.6f}" for a, b in zip(stamps, y)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("fm")
    data, spiky, run = tmp / "data", tmp / "spiky", tmp / "run"
    for src, out in ((long_csv(tmp / "d.csv"), data), (long_csv(tmp / "s.csv", spikes=True), spiky)):
        assert _cli("prepare", src, "--task", "series", "--columns", "y", "--group-field", "id", "--time-field", "t",
                    "--valid-fraction", 0.2, "--out", out) == 0
    assert _cli("train", data, "--out", run, *FLAGS, "--max-steps", 300) == 0
    return {"data": data, "spiky": spiky, "run": run}


def test_beats_seasonal_naive_across_series(trained, cli):
    code, out, err = cli("evaluate", trained["run"], "--split", "valid", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["origins"] == 6 * ((VALID - 60) // 12 + 1)  # origins every horizon rows of each series
    sn = result["baselines"]["seasonal_naive"]
    print("MASE", result["mase"], "pooled", result["mase_pooled"], "seasonal naive", sn["mase"], "naive",
          result["baselines"]["naive"]["mase"])
    # mase: the mean of each series' own (the quiet series weigh as much as the big ones); pooled: one scale
    assert result["mase"] < 0.9 < sn["mase"] and result["mase_pooled"] < 0.6 < 0.9 < sn["mase_pooled"]
    assert result["mae"] < sn["mae"] and result["rmse"] < sn["rmse"] and result["mase_series"] == 6


def test_predict_writes_one_row_per_series_and_step(trained, cli, tmp_path):
    import torch

    from seqfit.engine.run_dir import load_run

    out = tmp_path / "f.csv"
    code, stdout, err = cli("predict", trained["run"], trained["data"], "--out", out, "--json")
    assert code == 0, err
    assert json.loads(stdout)["series"] == 6 and json.loads(stdout)["count"] == 72
    rows = [line.split(",") for line in out.read_text().splitlines()]
    assert rows[0] == ["series", "time", "step", "y"]
    rows = rows[1:]
    assert [r[0] for r in rows] == [n for n in NAMES for _ in range(12)]
    assert [int(r[2]) for r in rows] == list(range(1, 13)) * 6
    last = [1000 * k + (k + 1) * (N - 1) for k in range(6)]
    assert [int(r[1]) for r in rows] == [last[k] + (k + 1) * s for k in range(6) for s in range(1, 13)]

    # each series' forecast from its own last 48 rows, normalised with the train statistics
    run = load_run(trained["run"], task="forecast")
    valid = run.task.store.split("valid")
    mean, scale = valid.mean[0], valid.scale[0]
    x = np.stack([valid.read(int(e) - 48, 48, normalize=False)[:, 0] for e in valid.offsets[1:]])  # (6, 48)
    with torch.no_grad():
        pred = run.model(torch.from_numpy((x - mean) * scale)[:, :, None]).numpy()[:, :, 0, 0]  # (6, 12)
    np.testing.assert_allclose([float(r[3]) for r in rows], (pred / scale + mean).ravel(), rtol=1e-4, atol=1e-4)


def test_detect_names_the_series_and_finds_its_spikes(trained, cli, tmp_path):
    out = tmp_path / "a.csv"
    code, stdout, err = cli("detect", trained["run"], trained["spiky"], "--out", out, "--json")
    assert code == 0, err
    summary = json.loads(stdout)
    rows = [line.split(",") for line in out.read_text().splitlines()]
    assert rows[0] == ["series", "time", "value", "forecast", "score", "anomaly"]
    rows = rows[1:]
    # every valid row: the first --lookback borrow their windows from the series' train rows
    assert summary["split"] == "valid" and summary["series"] == 6 and len(rows) == 6 * VALID
    assert summary["context_series"] == 6
    assert [r[0] for r in rows] == [n for n in NAMES for _ in range(VALID)]
    first = [1000 * k + (k + 1) * (N - VALID) for k in range(6)]  # each series' first scored time
    assert [int(r[1]) for r in rows[::VALID]] == first
    flagged = {(r[0], int(r[1])) for r in rows if r[5] == "1"}
    spikes = {(NAMES[k], 1000 * k + (k + 1) * row) for k, row in SPIKES.items()}
    print("flagged", sorted(flagged))
    assert spikes <= flagged and len(flagged) <= len(spikes) + 2


def test_plan_counts_the_index_per_series(trained, cli):
    from seqfit.memory.plan_forecast import INDEX_BYTES_PER_SERIES, ForecastInfo, estimate_forecaster, \
        forecast_info_from_dir, requested_forecast_plan

    cfg = from_options({"task": "forecast", "target": "y", "lookback": 48, "horizon": 12})
    info = forecast_info_from_dir(cfg, trained["data"])
    assert (info.series, info.train_rows) == (6, 6 * (N - VALID))
    plan = requested_forecast_plan(cfg, "cpu")
    one, many = (estimate_forecaster(cfg, ForecastInfo(1, 1, series=s), plan) for s in (1, 2001))
    assert many["parts"]["data"] - one["parts"]["data"] == 2000 * INDEX_BYTES_PER_SERIES
    code, out, err = cli("plan", trained["data"], "--task", "forecast", "--target", "y", "--lookback", 48, "--json")
    assert code == 0, err and json.loads(out)["predicted_peak_bytes"] > 0
