"""`seqfit predict` on forecast runs (forecasts from the end of a split, CSV/Parquet) and `seqfit detect`
(one-step-ahead anomaly scores): one small model trained once for the module."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from test_forecast import NOISE, SEASON, series, write_csv

TRAIN, VALID, TEST = 2000, 600, 1000
SPIKES = np.arange(100, 1000, 90)[:10]  # test rows of +8 sigma spikes
SHIFT_AT, SHIFT = 950, 8 * NOISE  # a level shift of +8 sigma from this test row on
SHIFT_POSITIVES = 1  # the first point after the shift: a one-step model adapts to the new level from there
FLAGS = ["--task", "forecast", "--target", "y", "--lookback", 48, "--horizon", 6, "--season", SEASON, "--cell", "gru",
         "--layers", 1, "--hidden", 32, "--dropout", 0, "--optimizer", "adam", "--lr", 0.005, "--batch-size", 32,
         "--clip", 1, "--log-every", 100]


def _cli(*args) -> tuple[int, str]:
    from seqfit.cli.main import main

    try:
        main([str(a) for a in args])
    except SystemExit as e:
        return e.code or 0, ""
    return 0, ""


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """Train / valid clean, test with spikes and a level shift; a GRU trained 300 steps, and a quantile one."""
    tmp = tmp_path_factory.mktemp("fp")
    cols = series(TRAIN + VALID + TEST, seed=7)
    cols["t"] = 1000 + 10 * cols["t"]  # a time field: every 10 units from 1000
    y = cols["y"].copy()
    y[TRAIN + VALID + SPIKES] += 8 * NOISE
    y[TRAIN + VALID + SHIFT_AT:] += SHIFT
    cols["y"] = y
    parts = {name: {k: v[a:b] for k, v in cols.items()} for name, (a, b) in
             {"train": (0, TRAIN), "valid": (TRAIN, TRAIN + VALID), "test": (TRAIN + VALID, TRAIN + VALID + TEST)}.items()}
    files = {name: write_csv(tmp / f"{name}.csv", part) for name, part in parts.items()}
    data = tmp / "data"
    assert _cli("prepare", "--train", files["train"], "--valid", files["valid"], "--test", files["test"], "--task", "series",
                "--columns", "y", "--time-field", "t", "--out", data)[0] == 0
    runs = {}
    for name, extra in (("point", []), ("quantile", ["--forecast-loss", "quantile", "--quantiles", "0.1,0.5,0.9"])):
        runs[name] = tmp / name
        assert _cli("train", data, "--out", runs[name], *FLAGS, *extra, "--max-steps", 300)[0] == 0
    return {"data": data, "runs": runs, "y": y, "t": cols["t"], "tmp": tmp}


def test_predict_writes_the_forecast_from_the_end_of_the_split(trained, cli, tmp_path):
    import torch

    from seqfit.engine.run_dir import load_run

    for name in ("point", "quantile"):
        out = tmp_path / f"{name}.csv"
        code, stdout, err = cli("predict", trained["runs"][name], trained["data"], "--out", out, "--json")
        assert code == 0, err
        assert json.loads(stdout)["split"] == "test"
        lines = out.read_text().splitlines()
        header = lines[0].split(",")
        assert header == ["series", "time", "step", "y"] + (["y_q0.1", "y_q0.5", "y_q0.9"] if name == "quantile" else [])
        rows = [line.split(",") for line in lines[1:]]
        assert len(rows) == 6 and [r[0] for r in rows] == ["test"] * 6 and [int(r[2]) for r in rows] == list(range(1, 7))
        last_t = int(trained["t"][-1])
        assert [int(r[1]) for r in rows] == [last_t + 10 * k for k in range(1, 7)]  # extrapolated time
        got = np.array([[float(v) for v in r[3:]] for r in rows])
        assert np.isfinite(got).all()

        # the model's own forecast at the same origin: the last 48 rows, normalised with the train statistics
        run = load_run(trained["runs"][name], task="forecast")
        task = run.task
        raw = trained["y"][-48:].astype(np.float32)
        x = (raw - task.train_split.mean[0]) * task.train_split.scale[0]
        with torch.no_grad():
            pred = run.model(torch.from_numpy(x[None, :, None])).numpy()[0, :, 0]  # (h, Q) normalised
        want = pred / task.train_split.scale[0] + task.train_split.mean[0]
        point = want[:, 1] if name == "quantile" else want[:, 0]
        np.testing.assert_allclose(got[:, 0], point, rtol=1e-4, atol=1e-4)
        if name == "quantile":
            np.testing.assert_allclose(got[:, 1:], want, rtol=1e-4, atol=1e-4)
            assert (got[:, 1] <= got[:, 3]).all()


def test_predict_parquet_split_and_horizon(trained, cli, tmp_path):
    import pyarrow.parquet as pq

    out = tmp_path / "f.parquet"
    code, _, err = cli("predict", trained["runs"]["point"], trained["data"], "--split", "valid", "--horizon", 3, "--out", out)
    assert code == 0, err
    table = pq.read_table(out).to_pydict()
    assert list(table) == ["series", "time", "step", "y"]
    assert table["series"] == ["valid"] * 3 and table["step"] == [1, 2, 3]
    assert table["time"] == [int(trained["t"][TRAIN + VALID - 1]) + 10 * k for k in (1, 2, 3)]
    assert np.isfinite(table["y"]).all()

    bad = tmp_path / "bad.csv"
    code, _, err = cli("predict", trained["runs"]["point"], trained["data"], "--horizon", 7, "--out", bad)
    assert code == 2 and err.strip().count("\n") == 0 and "--horizon 7 is more than the run's --horizon 6" in err, err
    assert not bad.exists()


def _precision_recall(path: Path) -> tuple[float, float, dict]:
    lines = [line.split(",") for line in path.read_text().splitlines()]
    assert lines[0] == ["series", "time", "value", "forecast", "score", "anomaly"]
    rows = lines[1:]
    assert len(rows) == TEST  # every test row: the first --lookback read their windows from the valid split
    assert {r[0] for r in rows} == {"test"}  # a store of one series: named after the split, as predict names it
    times = np.array([int(r[1]) for r in rows])
    flagged = set(((times[[r[5] == "1" for r in rows]] - 1000) // 10 - TRAIN - VALID).tolist())  # test row numbers
    positives = set(SPIKES.tolist()) | set(range(SHIFT_AT, SHIFT_AT + SHIFT_POSITIVES))
    hits = len(flagged & positives)
    return hits / max(1, len(flagged)), hits / len(positives), {"flagged": sorted(flagged)}


@pytest.mark.parametrize("name", ["point", "quantile"])
def test_detect_finds_spikes_and_the_shift(trained, cli, tmp_path, name):
    out = tmp_path / "a.csv"
    code, stdout, err = cli("detect", trained["runs"][name], trained["data"], "--out", out, "--json")
    assert code == 0, err
    summary = json.loads(stdout)
    precision, recall, info = _precision_recall(out)
    print(name, "precision", precision, "recall", recall, summary, info)
    assert summary["scored"] == TEST and summary["anomalies"] == len(info["flagged"])
    assert precision >= 0.9 and recall >= 0.9


def test_detect_bad_input_is_one_line(trained, cli, tmp_path, data_dir):
    out = tmp_path / "a.csv"
    code, _, err = cli("detect", trained["runs"]["point"], tmp_path / "missing", "--out", out)
    assert code == 2 and err.strip().count("\n") == 0 and "does not exist" in err, err
    lm = tmp_path / "lm"
    code, _, err = cli("train", data_dir, "--out", lm, "--max-steps", 1, "--layers", 1, "--hidden", 8, "--embed", 8)
    assert code == 0, err
    code, _, err = cli("detect", lm, trained["data"], "--out", out)
    assert code == 2 and err.strip().count("\n") == 0 and "not a 'forecast' model" in err, err
    assert not out.exists()


def test_predict_on_other_data_with_iso_times(trained, cli, tmp_path):
    n = 100
    stamps = [str(np.datetime64("2026-01-01T00:00") + np.timedelta64(h, "h")) for h in range(n)]
    y = series(n, seed=9)["y"]
    (tmp_path / "new.csv").write_text("ts,y\n" + "".join(f"{t},{v:.6f}\n" for t, v in zip(stamps, y)))
    data = tmp_path / "new"
    code, _, err = cli("prepare", tmp_path / "new.csv", "--task", "series", "--columns", "y", "--time-field", "ts",
                       "--valid-fraction", "0", "--out", data)
    assert code == 0, err
    out = tmp_path / "f.csv"
    code, stdout, err = cli("predict", trained["runs"]["point"], data, "--out", out, "--json")
    assert code == 0, err
    rows = [line.split(",") for line in out.read_text().splitlines()[1:]]
    assert [r[0] for r in rows] == ["train"] * 6
    assert [r[1] for r in rows] == [str(np.datetime64(stamps[-1]) + np.timedelta64(k, "h")) for k in range(1, 7)]

    code, _, err = cli("predict", trained["runs"]["point"], tmp_path / "missing", "--out", tmp_path / "g.csv")
    assert code == 2 and err.strip().count("\n") == 0 and "not a prepared data directory" in err, err
