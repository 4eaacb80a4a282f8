"""--normalize global|series|window on series of very different levels and scales: prepare stores each
series' own mean and std (equal to NumPy's), series normalisation trains to a lower per-series MASE than
global normalisation (which squashes the small series to noise), and predict returns each series' forecast
in its own scale; a store without per-series statistics refuses --normalize series in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli_ok

N, VALID, PERIOD = 480, 96, 12
LEVELS, SCALES = [0.0, 50.0, -2000.0, 1.0e5], [0.01, 1.0, 30.0, 1000.0]
NAMES = ["tiny", "unit", "mid", "huge"]
NOISE = 0.1  # in each series' own scale
FLAGS = ["--task", "forecast", "--target", "y", "--lookback", 24, "--horizon", 6, "--season", PERIOD, "--cell", "gru",
         "--layers", 1, "--hidden", 16, "--dropout", 0, "--optimizer", "adam", "--lr", 0.01, "--batch-size", 32,
         "--clip", 1, "--log-every", 100, "--checkpoint-every", 0, "--max-steps", 150, "--seed", 1]


def values() -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(N)
    shape = np.sin(2 * np.pi * t / PERIOD) + 0.5 * np.sin(4 * np.pi * t / PERIOD + 1)
    return np.stack([lv + sc * (shape + rng.normal(0, NOISE, N)) for lv, sc in zip(LEVELS, SCALES)])  # (S, N)


def write_csv(path: Path) -> Path:
    lines = ["id,t,y"] + [f"{name},{t},{float(v)!r}" for name, row in zip(NAMES, values()) for t, v in enumerate(row)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    cli = run_cli_ok
    tmp = tmp_path_factory.mktemp("norm")
    data = tmp / "data"
    cli("prepare", write_csv(tmp / "d.csv"), "--task", "series", "--columns", "y", "--group-field", "id",
        "--time-field", "t", "--valid-fraction", VALID / N, "--out", data)
    out = {"data": data}
    for mode in ("global", "series", "window"):
        cli("train", data, "--out", tmp / mode, *FLAGS, "--normalize", mode)
        out[mode] = tmp / mode
    return out


def test_prepare_stores_each_series_statistics(runs):
    from seqfit.data.series import SeriesStore

    store = SeriesStore(runs["data"])
    v = values()
    for split, part in (("train", v[:, :N - VALID]), ("valid", v[:, N - VALID:])):
        mean, std = store.split(split).series_stats
        np.testing.assert_allclose(mean[:, 0], part.mean(1), rtol=1e-9)
        np.testing.assert_allclose(std[:, 0], part.std(1), rtol=1e-9)


def per_series_mase(run_dir: Path) -> np.ndarray:
    """Each series' MASE on the valid split: the model's MAE over rolling origins / its train seasonal-naive MAE."""
    from seqfit.engine.run_dir import load_run

    run = load_run(run_dir, task="forecast")
    task, valid = run.task, run.task.store.split("valid")
    train = values()[:, :N - VALID]
    scale = np.abs(train[:, PERIOD:] - train[:, :-PERIOD]).mean(1)  # (S,)
    starts = valid.window_index(task.lookback + task.horizon, task.horizon).all_starts()
    err = np.zeros(len(NAMES))
    count = np.zeros(len(NAMES))
    series = valid.series_of(starts)
    i = 0
    for _, pred, raw, _ in task._predict(run.model, valid, starts, run.precision, 64):
        b = len(raw)
        e = np.abs(task._point(pred)[..., 0] - raw[:, task.lookback:, 0]).mean(1)  # (B,)
        np.add.at(err, series[i:i + b], e)
        np.add.at(count, series[i:i + b], 1)
        i += b
    return err / count / scale


def test_series_normalisation_beats_global_on_mixed_scales(runs):
    g, s, w = (per_series_mase(runs[m]) for m in ("global", "series", "window"))
    print("per-series MASE  global", g.round(3), "series", s.round(3), "window", w.round(3))
    assert (s < 0.5 * g).all() and (w < 0.5 * g).all()  # every series, the biggest one too
    assert s.max() < 2  # near seasonal naive after 150 steps; global is off by orders of magnitude on the small ones


def test_predict_returns_each_series_in_its_own_scale(runs, cli, tmp_path):
    v = values()[:, :N - VALID]
    for mode in ("series", "window"):
        out = tmp_path / f"{mode}.csv"
        code, stdout, err = cli("predict", runs[mode], runs["data"], "--split", "train", "--out", out, "--json")
        assert code == 0, err
        rows = [line.split(",") for line in out.read_text().splitlines()[1:]]
        assert [r[0] for r in rows] == [n for n in NAMES for _ in range(6)]
        pred = np.array([float(r[3]) for r in rows]).reshape(len(NAMES), 6)
        t = np.arange(N - VALID, N - VALID + 6)
        shape = np.sin(2 * np.pi * t / PERIOD) + 0.5 * np.sin(4 * np.pi * t / PERIOD + 1)
        truth = np.array(LEVELS)[:, None] + np.array(SCALES)[:, None] * shape  # (S, 6) the noiseless future
        err = np.abs(pred - truth).mean(1) / np.array(SCALES)  # in each series' own scale
        print(mode, "error / scale", err.round(3), "spread", v.std(1).round(3))
        assert (err < 0.5).all()


def test_series_needs_per_series_statistics(runs, cli, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(runs["data"], old)
    meta = json.loads((old / "meta.json").read_text())
    for info in meta["splits"].values():
        info.pop("series_stats", None)
    (old / "meta.json").write_text(json.dumps(meta))
    code, out, err = cli("train", old, "--out", tmp_path / "r", *FLAGS, "--normalize", "series")
    assert code == 2 and "per-series statistics" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_plan_counts_per_series_statistics():
    from seqfit.config import from_options
    from seqfit.memory.plan_forecast import NORM_BYTES_PER_SERIES_COLUMN, ForecastInfo, estimate_forecaster, \
        requested_forecast_plan

    base = {"task": "forecast", "target": "y", "lookback": 48, "horizon": 12}
    info = ForecastInfo(num_inputs=2, num_targets=1, series=2000, columns=3)
    g, s = (from_options({**base, "normalize": m}) for m in ("global", "series"))
    plan = requested_forecast_plan(g, "cpu")
    extra = estimate_forecaster(s, info, plan)["parts"]["data"] - estimate_forecaster(g, info, plan)["parts"]["data"]
    assert extra == 2000 * 3 * NORM_BYTES_PER_SERIES_COLUMN
