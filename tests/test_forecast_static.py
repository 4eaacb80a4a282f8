"""Static per-series categories (prepare --static-field): stored per split and series equal to the data, a
category that varies within a series is a one-line error, and a forecaster that embeds them beats the same
model without them (--no-static) when two categories share every value but move through them differently.

The data: series of category "up" repeat 0, 1, 3 and those of category "down" 0, 1, -2, so both step by +1,
+2 and -3, in opposite orders. The forecaster reads its lookback relative to the last value (a residual over
the naive forecast), so a lookback of two rows shows one step: which step comes next depends on the category
alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli as _cli

from seqfit.data.series import SeriesStore

N, SERIES = 120, 8  # rows per series
KINDS = ["up" if k % 2 == 0 else "down" for k in range(SERIES)]
REGIONS = [10 + k // 4 for k in range(SERIES)]  # an integer column: 10 or 11
FLAGS = ["--task", "forecast", "--target", "y", "--lookback", 2, "--horizon", 3, "--season", 1, "--cell", "gru",
         "--layers", 1, "--hidden", 16, "--dropout", 0, "--optimizer", "adam", "--lr", 0.02, "--batch-size", 32,
         "--log-every", 1000, "--checkpoint-every", 0, "--max-steps", 150, "--seed", 1]


def long_csv(path: Path, vary: bool = False) -> Path:
    rng = np.random.default_rng(0)
    lines = ["id,kind,region,y"]
    for k in range(SERIES):
        shape = np.array([0, 1, 3] if KINDS[k] == "up" else [0, 1, -2])
        y = shape[(k + np.arange(N)) % 3] + rng.normal(0, 0.05, N)
        kinds = [KINDS[k]] * N
        if vary and k == 3:
            kinds[50] = "other"
        lines += [f"s{k},{c},{REGIONS[k]},{v:.5f}" for c, v in zip(kinds, y)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("static")
    assert _cli("prepare", long_csv(tmp / "d.csv"), "--task", "series", "--columns", "y", "--group-field", "id",
                "--static-field", "kind,region", "--valid-fraction", 0.25, "--out", tmp / "data") == 0
    return tmp / "data"


def test_categories_stored_equal_the_data(data):
    store = SeriesStore(data)
    assert store.static_fields == ["kind", "region"]
    assert store.static_vocab == {"kind": ["up", "down"], "region": ["10", "11"]}  # order of first appearance
    for name in ("train", "valid"):
        split = store.split(name)
        ids = split.static  # (S, 2)
        assert ids.shape == (SERIES, 2) and ids.dtype == np.int64
        for i, series in enumerate(split.names):
            k = int(series[1:])
            assert store.static_vocab["kind"][ids[i, 0]] == KINDS[k]
            assert store.static_vocab["region"][ids[i, 1]] == str(REGIONS[k])
    meta = json.loads((data / "meta.json").read_text())
    assert meta["report"]["static"] == {"kind": 2, "region": 2}


def test_a_category_varying_within_a_series_is_an_error(tmp_path, cli):
    out = tmp_path / "bad"
    code, _, err = cli("prepare", long_csv(tmp_path / "v.csv", vary=True), "--task", "series", "--columns", "y",
                       "--group-field", "id", "--static-field", "kind", "--out", out)
    assert code == 2 and "varies within series 's3'" in err and "'other'" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    code, _, err = cli("prepare", long_csv(tmp_path / "d.csv"), "--task", "series", "--columns", "y",
                       "--static-field", "kind", "--out", out)
    assert code == 2 and "--group-field" in err and not out.exists()
    code, _, err = cli("prepare", long_csv(tmp_path / "d.csv"), "--task", "series", "--columns", "y",
                       "--group-field", "id", "--static-field", "y", "--out", out)
    assert code == 2 and "--static-field 'y'" in err and not out.exists()


def test_static_embeddings_beat_the_same_model_without(data, tmp_path, cli):
    results = {}
    for name, extra in (("static", []), ("plain", ["--no-static"])):
        run = tmp_path / name
        code, _, err = cli("train", data, "--out", run, *FLAGS, *extra)
        assert code == 0, err
        code, out, err = cli("evaluate", run, "--split", "valid", "--json")
        assert code == 0, err
        results[name] = json.loads(out)
    s, p = results["static"], results["plain"]
    print("MAE static", s["mae"], "without", p["mae"], "naive", s["baselines"]["naive"]["mae"])
    assert s["mae"] < 0.3 * p["mae"] and s["mase"] < 0.3 * p["mase"]  # about 0.07 against 0.58


def test_the_planner_counts_the_embeddings(data):
    from seqfit.memory.plan_forecast import forecast_info_from_dir, forecaster_param_shapes
    from seqfit.config import from_options
    from seqfit.engine.forecast import ForecastTask
    import torch

    cfg = from_options({"task": "forecast", "target": "y", "lookback": 4, "horizon": 3, "hidden": 8, "layers": 1})
    info = forecast_info_from_dir(cfg, data)
    assert info.static_sizes == (2, 2)
    model = ForecastTask(cfg, data, torch.device("cpu")).build_model()
    assert sorted(map(tuple, forecaster_param_shapes(cfg, info))) == sorted(tuple(p.shape) for p in model.parameters())
    assert len(model.static) == 2 and model.num_static == 6  # min(16, ceil(sqrt(2)) + 1) = 3 each
    off = from_options({"task": "forecast", "target": "y", "lookback": 4, "horizon": 3, "static": False})
    assert forecast_info_from_dir(off, data).static_sizes == ()


def test_a_store_without_static_categories_still_trains(tmp_path, cli):
    src = long_csv(tmp_path / "d.csv")
    old = tmp_path / "old"
    code, _, err = cli("prepare", src, "--task", "series", "--columns", "y", "--group-field", "id", "--out", old)
    assert code == 0, err
    meta = json.loads((old / "meta.json").read_text())
    assert "static_fields" not in meta and not list(old.glob("*.static.npy"))
    run = tmp_path / "run"
    code, _, err = cli("train", old, "--out", run, *FLAGS[:-4], "--max-steps", 5)
    assert code == 0, err
    code, out, err = cli("evaluate", run, "--split", "valid", "--json")
    assert code == 0, err


def test_predict_on_a_store_without_the_runs_categories_is_an_error(data, tmp_path, cli):
    run = tmp_path / "run"
    code, _, err = cli("train", data, "--out", run, *FLAGS[:-4], "--max-steps", 3)
    assert code == 0, err
    code, out, err = cli("predict", run, data, "--out", tmp_path / "f.csv")
    assert code == 0, err
    plain = tmp_path / "plain"
    code, _, err = cli("prepare", long_csv(tmp_path / "d.csv"), "--task", "series", "--columns", "y", "--group-field",
                       "id", "--out", plain)
    assert code == 0, err
    code, _, err = cli("predict", run, plain, "--out", tmp_path / "g.csv")
    assert code == 2 and "--static-field" in err
