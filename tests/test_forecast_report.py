"""`seqfit report` on a forecast run: PNGs of history, forecast and quantile interval for a few series, drawn
from the same forecasts `seqfit predict` writes (checked on the arrays the plot read back from its lines)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli_ok

N, NAMES = 160, ["north", "south/east", "west"]  # a name with a slash: the file name must be made safe


def _long_csv(path: Path) -> Path:
    rng = np.random.default_rng(5)
    lines = ["id,t,y"]
    for k, name in enumerate(NAMES):
        t = np.arange(N)
        y = 3 * k + np.sin(2 * np.pi * t / 12) + rng.normal(0, 0.1, N)
        lines += [f"{name},{100 + 5 * a},{b:.6f}" for a, b in zip(t, y)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("frep")
    data, out = tmp / "data", tmp / "run"
    for args in (["prepare", _long_csv(tmp / "d.csv"), "--task", "series", "--columns", "y", "--group-field", "id",
                  "--time-field", "t", "--valid-fraction", 0.25, "--out", data],
                 ["train", data, "--out", out, "--task", "forecast", "--target", "y", "--lookback", 24, "--horizon", 6,
                  "--season", 12, "--cell", "gru", "--layers", 1, "--hidden", 8, "--dropout", 0, "--batch-size", 16,
                  "--forecast-loss", "quantile", "--quantiles", "0.1,0.5,0.9", "--max-steps", 15, "--log-every", 5,
                  "--checkpoint-every", 0]):
        run_cli_ok(*args)
    return {"data": data, "run": out}


def _predicted(cli, run: dict, tmp_path: Path) -> dict[str, dict[str, np.ndarray]]:
    out = tmp_path / "pred.csv"
    code, _, err = cli("predict", run["run"], run["data"], "--out", out)
    assert code == 0, err
    by: dict[str, dict[str, list]] = {}
    with open(out, newline="") as f:
        for row in csv.DictReader(f):
            d = by.setdefault(row["series"], {"time": [], "y": [], "y_q0.1": [], "y_q0.9": []})
            for key in d:
                d[key].append(float(row[key]))
    return {s: {k: np.array(v) for k, v in d.items()} for s, d in by.items()}


def test_report_plots_the_forecasts_predict_writes(run, cli, tmp_path):
    from seqfit.engine.forecast_report import forecast_plots

    predicted = _predicted(cli, run, tmp_path)
    drawn = forecast_plots(run["run"])
    assert [d["series"] for d in drawn] == NAMES and {d["split"] for d in drawn} == {"valid"}
    for d in drawn:
        want = predicted[d["series"]]
        assert Path(d["path"]).stat().st_size > 1000
        np.testing.assert_allclose(d["forecast"][0], want["y"], rtol=1e-6, atol=1e-6)  # CSV holds 6 decimals
        np.testing.assert_allclose(d["lower"][0], want["y_q0.1"], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(d["upper"][0], want["y_q0.9"], rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(d["time"], dtype=float), want["time"])
        assert len(d["history"][0]) == 24  # max(lookback, 3 x horizon) rows of history
    assert Path(drawn[1]["path"]).name == "forecast-south_east.png"


def test_report_cli_writes_the_forecast_pngs_beside_the_others(run, cli):
    code, out, err = cli("report", run["run"], "--series", "west", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert [Path(p).name for p in result["forecast_plots"]] == ["forecast-west.png"]
    plots = Path(run["run"]) / "plots"
    assert (plots / "forecast-west.png").is_file() and (plots / "loss.png").is_file()
    assert "plots/forecast-west.png" in Path(result["report"]).read_text()


def test_report_unknown_series_is_one_line(run, cli):
    code, _, err = cli("report", run["run"], "--series", "nowhere")
    assert code == 2 and "no series 'nowhere'" in err and len(err.strip().splitlines()) == 1
