"""Known-future covariates (--future-covariates) and calendar features (--calendar) of forecast runs."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest

N, VALID = 1400, 300
NOISE = 0.3
FLAGS = ["--task", "forecast", "--target", "y", "--lookback", 14, "--horizon", 7, "--cell", "gru", "--layers", 1,
         "--hidden", 24, "--dropout", 0, "--optimizer", "adam", "--lr", 0.01, "--batch-size", 32, "--clip", 1,
         "--log-every", 100, "--max-steps", 250]


def _data(tmp_path: Path, cli, *, dates: bool = True, name: str = "data") -> tuple[Path, np.ndarray]:
    """Daily rows from 2020-01-01: y = 3 x promo (random, 0/1) + 2 on weekends + noise."""
    rng = np.random.default_rng(3)
    days = np.datetime64("2020-01-01") + np.arange(N)
    weekday = (days.astype(np.int64) + 3) % 7  # Monday 0
    promo = (rng.random(N) < 0.3).astype(float)
    y = 3 * promo + 2 * (weekday >= 5) + rng.normal(0, NOISE, N)
    path = tmp_path / f"{name}.csv"
    t = [str(d) for d in days] if dates else list(range(N))
    path.write_text("date,y,promo\n" + "".join(f"{a},{b:.5f},{c:g}\n" for a, b, c in zip(t, y, promo)))
    out = tmp_path / name
    code, _, err = cli("prepare", path, "--task", "series", "--columns", "y,promo", "--time-field", "date",
                       "--valid-fraction", f"{VALID / N}", "--out", out)
    assert code == 0, err
    return out, days


@pytest.fixture
def daily(tmp_path, cli):
    return _data(tmp_path, cli)


def _evaluate(cli, run: Path) -> dict:
    code, out, err = cli("evaluate", run, "--split", "valid", "--json")
    assert code == 0, err
    return json.loads(out)


def test_future_covariates_and_calendar_lower_the_error(daily, cli, tmp_path):
    data, days = daily
    mae = {}
    for name, extra in (("past", ["--covariates", "promo"]), ("future", ["--future-covariates", "promo"]),
                        ("calendar", ["--future-covariates", "promo", "--calendar"]),
                        ("short", ["--future-covariates", "promo", "--lookback", 3]),  # sees no whole week
                        ("short_calendar", ["--future-covariates", "promo", "--lookback", 3, "--calendar"])):
        code, _, err = cli("train", data, "--out", tmp_path / name, *FLAGS, *extra)
        assert code == 0, err
        mae[name] = _evaluate(cli, tmp_path / name)["mae"]
    print("MAE", mae, file=sys.__stderr__)  # the cli fixture captures stdout
    assert mae["future"] < 0.6 * mae["past"]  # the promotion is known ahead: only the future read sees it
    assert mae["calendar"] < mae["past"]
    assert mae["short_calendar"] < 0.8 * mae["short"]  # the weekend effect, from the calendar when the past is short

    # predict: the origin moves back --horizon rows, and the last 7 rows (whose promo values are known) are forecast
    out = tmp_path / "fc.csv"
    code, _, err = cli("predict", tmp_path / "future", data, "--split", "valid", "--out", out, "--json")
    assert code == 0, err
    rows = list(csv.DictReader(out.open()))
    assert [r["time"] for r in rows] == [str(d) for d in days[-7:]] and [int(r["step"]) for r in rows] == list(range(1, 8))
    # --calendar with promo: same origin; detect reads the future rows too and scores every row (the first
    # --lookback from the train rows before them, calendar features included), or from the lookback on
    code, out_json, err = cli("detect", tmp_path / "calendar", data, "--split", "valid", "--out", tmp_path / "a.csv",
                              "--json")
    assert code == 0, err
    assert json.loads(out_json)["scored"] == VALID
    code, out_json, err = cli("detect", tmp_path / "calendar", data, "--split", "valid", "--no-context", "--out",
                              tmp_path / "b.csv", "--json")
    assert code == 0, err
    assert json.loads(out_json)["scored"] == VALID - 14


def test_calendar_alone_forecasts_past_the_end(daily, cli, tmp_path):
    data, days = daily
    code, _, err = cli("train", data, "--out", tmp_path / "cal", *FLAGS, "--calendar", "--max-steps", 20)
    assert code == 0, err
    out = tmp_path / "fc.csv"
    code, _, err = cli("predict", tmp_path / "cal", data, "--split", "valid", "--out", out)
    assert code == 0, err
    times = [r["time"] for r in csv.DictReader(out.open())]
    assert times == [str(days[-1] + k) for k in range(1, 8)]  # times extrapolated, features from them


def test_calendar_features_are_sin_cos_of_the_right_phases():
    from seqfit.data.calendar import choose_parts, features, phases, to_seconds, window_seconds

    # 2024-01-01 was a Monday; 2024 is a leap year (366 days); 06:00 is a quarter of the day
    t = np.array(["2024-01-01T06:00", "2024-01-03T18:00", "2024-12-31T00:00"])
    ph = phases(to_seconds(t))
    np.testing.assert_allclose(ph["hour"], [0.25, 0.75, 0.0])
    np.testing.assert_allclose(ph["weekday"], [0, 2 / 7, 1 / 7])  # Monday, Wednesday, Tuesday
    np.testing.assert_allclose(ph["yearday"], [0, 2 / 366, 365 / 366])
    f = features(to_seconds(t), ["hour", "weekday"])
    np.testing.assert_allclose(f[0], [1, 0, 0, 1], atol=1e-6)  # sin, cos of a quarter turn; Monday: (0, 1)
    np.testing.assert_allclose(f[1], [-1, 0, np.sin(4 * np.pi / 7), np.cos(4 * np.pi / 7)], atol=1e-6)
    daily = np.array([str(np.datetime64("2021-03-01") + k) for k in range(10)])
    assert choose_parts(daily) == ["weekday", "yearday"]  # daily data: no hour of day
    # past a series' end, times continue at the last spacing
    sec = window_seconds(daily, np.array([0, 10]), [7], 5)
    assert list(sec[0] // 86400 - sec[0, 0] // 86400) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("flags, message", [
    (["--future-covariates", "nope"], "--future-covariates: column(s) 'nope' not in the data"),
    (["--future-covariates", "y"], "--future-covariates repeats column(s) 'y'"),
    (["--covariates", "promo", "--future-covariates", "promo"], "--future-covariates repeats column(s) 'promo'"),
])
def test_bad_future_columns_are_one_line_and_write_nothing(daily, cli, tmp_path, flags, message):
    run = tmp_path / "run"
    code, _, err = cli("train", daily[0], "--out", run, *FLAGS, *flags)
    assert code == 2 and err.strip().count("\n") == 0 and message in err, err
    assert not run.exists()


def test_calendar_needs_dates(tmp_path, cli):
    data, _ = _data(tmp_path, cli, dates=False)
    run = tmp_path / "run"
    code, _, err = cli("train", data, "--out", run, *FLAGS, "--calendar")
    assert code == 2 and err.strip().count("\n") == 0 and "--calendar needs dates or times" in err, err
    assert not run.exists()


def test_predict_refuses_a_split_without_the_future_rows(daily, cli, tmp_path):
    data, _ = daily
    assert cli("train", data, "--out", tmp_path / "run", *FLAGS, "--future-covariates", "promo", "--max-steps", 5)[0] == 0
    short = tmp_path / "short.csv"
    short.write_text("date,y,promo\n" + "".join(f"2020-01-{d:02d},1,0\n" for d in range(1, 18)))
    other = tmp_path / "other"
    assert cli("prepare", short, "--task", "series", "--columns", "y,promo", "--time-field", "date", "--out", other)[0] == 0
    out = tmp_path / "fc.csv"
    code, _, err = cli("predict", tmp_path / "run", other, "--split", "train", "--out", out)
    assert code == 2 and err.strip().count("\n") == 0 and "fewer than the run's --lookback 14 + --horizon 7" in err, err
    assert not out.exists()


def test_plan_counts_the_known_future_inputs(daily, cli):
    from seqfit.config import from_options
    from seqfit.memory.plan_forecast import forecast_info_from_dir, forecaster_param_shapes
    from seqfit.models.forecaster import Forecaster

    data, _ = daily
    cfg = from_options(dict(task="forecast", target="y", future_covariates="promo", calendar=True, lookback=14,
                            horizon=7, cell="gru", layers=1, hidden=24))
    info = forecast_info_from_dir(cfg, data)
    assert (info.num_inputs, info.num_future) == (1 + 1 + 4, 1 + 4)  # y, promo, weekday and yearday sin/cos
    model = Forecaster(cfg.model, num_inputs=info.num_inputs, num_targets=1, horizon=7, num_future=info.num_future)
    assert [tuple(p.shape) for p in model.parameters()] == forecaster_param_shapes(cfg, info)
    code, out, err = cli("plan", data, "--task", "forecast", "--target", "y", "--future-covariates", "promo",
                         "--calendar", "--lookback", 14, "--horizon", 7, "--cell", "gru", "--layers", 1, "--hidden", 24,
                         "--json")
    assert code == 0, err
    assert json.loads(out)["sizes"]["weights"] == 4 * sum(p.numel() for p in model.parameters())
