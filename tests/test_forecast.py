"""--task forecast: windows straight off the store, a trend + season series the model learns better than the
seasonal-naive forecast, calibrated quantiles, bit-exact resume, and one-line refusals of bad input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from seqfit.config import from_options
from seqfit.data.prepare import PrepareOptions, prepare
from seqfit.engine.forecast import ForecastTask, seasonal_scale

NOISE = 0.3  # the series' known noise (std)
SEASON = 24


def series(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A trend, a daily season of SEASON steps, Gaussian noise of std NOISE; a covariate that knows the phase."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return {"t": t, "y": 10 + 0.01 * t + 3 * np.sin(2 * np.pi * t / SEASON) + rng.normal(0, NOISE, n),
            "x": np.cos(2 * np.pi * t / SEASON)}


def write_csv(path: Path, cols: dict[str, np.ndarray]) -> Path:
    names = list(cols)
    rows = zip(*(cols[k] for k in names))
    path.write_text(",".join(names) + "\n" + "".join(",".join(f"{v:.6f}" for v in r) + "\n" for r in rows))
    return path


@pytest.fixture
def seasonal(tmp_path, cli) -> Path:
    """3,000 rows: train 2,400, valid the last 600."""
    out = tmp_path / "data"
    code, _, err = cli("prepare", write_csv(tmp_path / "s.csv", series(3000)), "--task", "series", "--columns", "y",
                       "--valid-fraction", "0.2", "--out", out)
    assert code == 0, err
    return out


FLAGS = ["--task", "forecast", "--target", "y", "--lookback", 48, "--horizon", 12, "--season", SEASON, "--cell", "gru",
         "--layers", 1, "--hidden", 32, "--dropout", 0, "--optimizer", "adam", "--lr", 0.005, "--batch-size", 32,
         "--clip", 1, "--log-every", 50]


def test_windows_are_the_rows_numpy_cuts(tmp_path):
    cols = series(700, seed=3)
    out = tmp_path / "data"
    prepare(PrepareOptions(out=out, inputs=(str(write_csv(tmp_path / "s.csv", cols)),), task="series",
                           columns=("x", "y"), valid_fraction=0.1, shard_bytes=4096))  # windows cross shards
    cfg = from_options({"task": "forecast", "target": "y", "covariates": "x", "lookback": 20, "horizon": 5,
                        "batch_size": 16, "accumulate": 2})
    task = ForecastTask(cfg, out, torch.device("cpu"))
    raw = np.column_stack([cols["x"], cols["y"]]).astype(np.float32)[:630]  # the train rows, store order
    mean, std = raw.astype(np.float64).mean(0), raw.astype(np.float64).std(0)
    norm = ((raw - mean.astype(np.float32)) * (1 / std).astype(np.float32))
    starts = np.array([0, 1, 17, 300, 630 - 25])
    x, future, y = task._batch(task.train_split, starts)
    assert future is None  # no known-future inputs
    want_x = np.stack([norm[s:s + 20][:, [1, 0]] for s in starts])  # targets first, then covariates
    want_y = np.stack([norm[s + 20:s + 25][:, [1]] for s in starts])
    np.testing.assert_allclose(x.numpy(), want_x, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y.numpy(), want_y, rtol=1e-5, atol=1e-5)

    # an epoch draws every start once; the order is a function of (seed, epoch) alone
    groups = task.epoch_groups(1)
    drawn = np.concatenate([b for g in groups for b in g])
    assert sorted(drawn.tolist()) == list(range(630 - 25 + 1)) and task.steps_per_epoch() == len(groups)
    again = ForecastTask(cfg, out, torch.device("cpu"))
    assert len(again.epoch_groups(1)) == len(groups)
    assert all(np.array_equal(a, b) for ga, gb in zip(again.epoch_groups(1), groups) for a, b in zip(ga, gb))
    assert not np.array_equal(np.concatenate([b for g in task.epoch_groups(2) for b in g]), drawn)

    # MASE's scale: the train split's in-sample seasonal-naive MAE
    y_train = raw[:, 1].astype(np.float64)
    assert seasonal_scale(task.train_split, [1], 24)[0] == pytest.approx(np.abs(y_train[24:] - y_train[:-24]).mean())


def test_forecaster_beats_seasonal_naive(seasonal, cli, tmp_path):
    run = tmp_path / "run"
    code, out, err = cli("train", seasonal, "--out", run, *FLAGS, "--max-steps", 300, "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["valid_ppl"] is None and summary["valid_mae"] < 1 and summary["valid_loss"] is not None
    code, out, err = cli("evaluate", run, "--split", "valid", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["origins"] == (600 - 48 - 12) // 12 + 1
    seasonal_naive = result["baselines"]["seasonal_naive"]
    print("MASE", result["mase"], "seasonal naive", seasonal_naive["mase"], "naive", result["baselines"]["naive"]["mase"])
    assert result["mase"] < 0.9 < seasonal_naive["mase"]
    assert result["mae"] < seasonal_naive["mae"] and result["rmse"] < seasonal_naive["rmse"]
    assert result["smape"] < seasonal_naive["smape"] < result["baselines"]["naive"]["smape"]


def test_quantile_interval_covers_its_share(seasonal, cli, tmp_path):
    run = tmp_path / "run"
    code, _, err = cli("train", seasonal, "--out", run, *FLAGS, "--max-steps", 300, "--forecast-loss", "quantile",
                       "--quantiles", "0.1,0.5,0.9")
    assert code == 0, err
    code, out, err = cli("evaluate", run, "--json")
    assert code == 0, err
    result = json.loads(out)
    print("coverage", result["coverage"], "pinball", result["pinball"], "MASE", result["mase"])
    assert result["interval"] == [0.1, 0.9] and 0.7 <= result["coverage"] <= 0.9
    assert result["mase"] < 1 and result["pinball"] > 0


def _numbers(run: Path) -> dict:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    weights = load_file(str(run / "checkpoint" / "model.safetensors"))
    return {"train": [r["loss"].hex() for r in records if r["kind"] == "train"],
            "valid": {r["step"]: r["loss"].hex() for r in records if r["kind"] == "valid"},
            "weights": hashlib.sha256(b"".join(weights[k].tobytes() for k in sorted(weights))).hexdigest()}


def test_resume_is_bit_exact(tmp_path, cli):
    data = tmp_path / "data"  # 400 rows: 10 steps an epoch, so 24 steps cross two epoch ends
    code, _, err = cli("prepare", write_csv(tmp_path / "s.csv", series(400, seed=5)), "--task", "series",
                       "--columns", "y,x", "--out", data)
    assert code == 0, err
    flags = ["--task", "forecast", "--target", "y", "--covariates", "x", "--lookback", 24, "--horizon", 6,
             "--cell", "lstm", "--layers", 2, "--hidden", 8, "--dropout", 0.2, "--optimizer", "adam", "--lr", 0.01,
             "--batch-size", 16, "--accumulate", 2, "--log-every", 1, "--eval-every", 5, "--checkpoint-every", 7,
             "--forecast-loss", "quantile"]
    code, _, err = cli("train", data, "--out", tmp_path / "whole", *flags, "--max-steps", 24)
    assert code == 0, err
    code, _, err = cli("train", data, "--out", tmp_path / "resumed", *flags, "--max-steps", 11)
    assert code == 0, err
    code, _, err = cli("train", data, "--out", tmp_path / "resumed", "--resume", "--max-steps", 24)
    assert code == 0, err
    whole, resumed = _numbers(tmp_path / "whole"), _numbers(tmp_path / "resumed")
    assert len(whole["train"]) == 24
    assert resumed["train"] == whole["train"] and resumed["weights"] == whole["weights"]
    assert {k: resumed["valid"].get(k) for k in whole["valid"]} == whole["valid"]


@pytest.mark.parametrize("flags, message", [
    (["--target", "z"], "--target: column(s) 'z' not in the data"),
    (["--covariates", "y"], "--covariates repeats target"),
    (["--lookback", 5000], "--lookback 5000 + --horizon 12 needs 5012 rows; the train split has 2400"),
    (["--horizon", 0], "--horizon must be >= 1"),
    (["--forecast-loss", "quantile", "--quantiles", "0.5,1.2"], "--quantiles must be increasing numbers in (0, 1)"),
    (["--season", 100], "--season 100 is longer than --lookback 48"),
])
def test_bad_input_is_one_line_and_writes_nothing(seasonal, cli, tmp_path, flags, message):
    run = tmp_path / "run"
    base = dict(zip(FLAGS[::2], FLAGS[1::2]))
    for name, value in zip(flags[::2], flags[1::2]):
        base[name] = value
    code, _, err = cli("train", seasonal, "--out", run, *[v for kv in base.items() for v in kv], "--max-steps", 1)
    assert code == 2 and err.strip().count("\n") == 0 and message in err, err
    assert not run.exists()


def test_plan_and_budget(seasonal, cli):
    args = ["plan", seasonal, "--task", "forecast", "--target", "y", "--lookback", 480, "--horizon", 12, "--hidden", 128,
            "--batch-size", 64, "--json"]
    code, out, err = cli(*args)
    assert code == 0, err
    full = json.loads(out)
    assert full["task"] == "forecast" and full["plan"]["mode"] == "full"
    assert full["sizes"]["weights"] > 0 and full["parts"]["activations"] > 0
    budget = full["predicted_peak_bytes"] - full["parts"]["activations"] // 2
    code, out, err = cli(*args, "--budget", str(int(budget / 0.93)))
    assert code == 0, err
    chosen = json.loads(out)
    assert chosen["predicted_peak_bytes"] < full["predicted_peak_bytes"]
    assert chosen["plan"]["mode"] == "exact" or chosen["plan"]["micro_batch"] < 64


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_checkpoint_time_passes_through_exactly(cell):
    from seqfit.config import ModelCfg
    from seqfit.models.forecaster import Forecaster

    cfg = ModelCfg(cell=cell, layers=2, hidden=8, dropout=0.0)
    x = torch.randn(3, 40, 2)
    grads = []
    for k in (0, 7):
        torch.manual_seed(0)
        model = Forecaster(cfg, num_inputs=2, num_targets=1, horizon=4, num_quantiles=3, checkpoint_time=k)
        out = model(x)  # (B, h, T, Q)
        assert out.shape == (3, 4, 1, 3)
        out.square().sum().backward()
        grads.append([out.detach()] + [p.grad for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_train_under_a_budget(seasonal, cli, tmp_path):
    code, out, err = cli("train", seasonal, "--out", tmp_path / "run", *FLAGS, "--lookback", 96, "--max-steps", 2,
                         "--budget", "2GB", "--json")
    assert code == 0, err
    assert "--budget 2.0 GiB: predicted peak" in out + err
    assert json.loads(out)["plan"]["lookback"] == 96


@pytest.mark.parametrize("options", [{"cell": "lstm", "layers": 2}, {"cell": "gru", "layer_norm": True, "forecast_loss": "quantile"}])
def test_estimate_counts_the_parameters_the_model_has(options):
    from seqfit.memory.plan_forecast import ForecastInfo, forecaster_param_shapes
    from seqfit.models.forecaster import Forecaster

    cfg = from_options({"task": "forecast", "hidden": 16, "horizon": 5, **options})
    shapes = forecaster_param_shapes(cfg, ForecastInfo(num_inputs=3, num_targets=2))
    model = Forecaster(cfg.model, num_inputs=3, num_targets=2, horizon=5,
                       num_quantiles=3 if cfg.model.forecast_loss == "quantile" else 1)
    assert sorted(shapes) == sorted(tuple(p.shape) for p in model.parameters())


def test_a_store_of_tokens_is_refused_in_one_line(data_dir, cli, tmp_path):
    code, _, err = cli("train", data_dir, "--out", tmp_path / "run", "--task", "forecast", "--max-steps", 1)
    assert code == 2 and err.strip().count("\n") == 0 and "not a time series" in err, err
    assert not (tmp_path / "run").exists()
