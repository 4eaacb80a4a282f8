"""--decoder autoregressive: an RNN decoder started from the encoder's final state, stepping over the horizon.
Shapes; the teacher-forced training pass equals a hand-written loop; at inference it feeds back its own
forecasts; it learns a noisy sine; train/evaluate/predict round trip; the default (direct) is unchanged."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from seqfit.config import from_options
from seqfit.models.forecaster import Forecaster


def _model(decoder="autoregressive", *, cell="gru", layers=2, future=0, quantiles=1, point=0, static=()):
    torch.manual_seed(0)
    cfg = from_options({"task": "forecast", "cell": cell, "layers": layers, "hidden": 8, "dropout": 0.0,
                        "decoder": decoder}).model
    return Forecaster(cfg, num_inputs=3 + future, num_targets=2, horizon=5, num_quantiles=quantiles,
                      num_future=future, static_sizes=static, decoder=decoder, point=point)


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn"])
@pytest.mark.parametrize("future", [0, 2])
def test_shapes(cell, future):
    model = _model(cell=cell, future=future, quantiles=3, point=1, static=(4,))
    x, y = torch.randn(6, 10, 3 + future), torch.randn(6, 5, 2)
    fut = torch.randn(6, 5, future) if future else None
    static = torch.tensor([[0], [1], [2], [3], [0], [1]])  # (B, K = 1)
    assert model(x, fut, static, y).shape == (6, 5, 2, 3)  # teacher forced
    assert model(x, fut, static).shape == (6, 5, 2, 3)  # its own forecasts
    assert model.head.weight.shape == (2 * 3, 8 + 3) and model.decoder.layers[0].weight_ih_l0.shape[1] == 2 + future


def _reference(model: Forecaster, x, future, y, feed_own: bool):
    """The decoder as a plain loop of single steps: each reads the previous target (true, or forecast)."""
    level = x[:, -1:, :2]
    rel = torch.cat([x[:, :, :2] - level, x[:, :, 2:]], 2)
    _, state = model.rnn(rel)
    prev, outs = torch.zeros(x.shape[0], 1, 2), []
    for j in range(model.horizon):
        inp = torch.cat([prev, future[:, j:j + 1]], 2) if future is not None else prev
        out, state = model.decoder(inp, state)
        delta = model.head(out).view(x.shape[0], 1, 2, model.num_quantiles)
        outs.append(delta)
        prev = delta[..., model.point] if feed_own else y[:, j:j + 1] - level
    return torch.cat(outs, 1) + level.transpose(1, 2).unsqueeze(1)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_teacher_forced_loss_equals_a_hand_written_loop(cell):
    from seqfit.engine.forecast import forecast_loss

    model = _model(cell=cell, future=2, quantiles=3, point=1)
    x, fut, y = torch.randn(4, 7, 5), torch.randn(4, 5, 2), torch.randn(4, 5, 2)
    q = torch.tensor([0.1, 0.5, 0.9])
    got = forecast_loss(model(x, fut, None, y), y, "quantile", q)
    want = forecast_loss(_reference(model, x, fut, y, feed_own=False), y, "quantile", q)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    got.backward()  # gradients reach the decoder and the encoder
    assert model.decoder.layers[0].weight_ih_l0.grad.abs().sum() > 0 and model.rnn.layers[0].weight_ih_l0.grad.abs().sum() > 0


def test_inference_feeds_back_its_own_forecasts():
    model = _model(future=2, quantiles=3, point=1).eval()
    x, fut = torch.randn(4, 7, 5), torch.randn(4, 5, 2)
    y = torch.randn(4, 5, 2) * 5  # far from anything the untrained model forecasts
    with torch.no_grad():
        own = model(x, fut)
        forced = model(x, fut, None, y)
        torch.testing.assert_close(own, _reference(model, x, fut, y, feed_own=True), rtol=1e-5, atol=1e-5)
        assert (own[:, 0] - forced[:, 0]).abs().max() < 1e-6  # step 0 reads the last observed value either way
        assert (own[:, 1:] - forced[:, 1:]).abs().max() > 1e-2  # later steps read different previous values
        # fed its own point forecasts as the "truth", the teacher-forced pass is the free-running one
        torch.testing.assert_close(model(x, fut, None, own[..., 1]), own, rtol=1e-5, atol=1e-5)


def test_the_direct_default_is_unchanged():
    cfg = from_options({"task": "forecast"})
    assert cfg.model.decoder == "direct"
    model = _model("direct", future=2)
    assert not hasattr(model, "decoder") and not len(model.static)
    assert sorted(k.split(".")[0] for k in model.state_dict()) == ["head", "head"] + ["rnn"] * 8
    assert model.head.weight.shape == (5 * 2, 8 + 5 * 2)
    x = torch.randn(3, 7, 5)
    with torch.no_grad():
        assert torch.equal(model(x, torch.zeros(3, 5, 2)), model(x, torch.zeros(3, 5, 2), None, torch.randn(3, 5, 2)))


# -- end to end: a noisy sine, trained for a few seconds --

SEASON, NOISE = 16, 0.1
FLAGS = ["--task", "forecast", "--target", "y", "--lookback", 32, "--horizon", 8, "--season", 1, "--cell", "gru",
         "--layers", 1, "--hidden", 24, "--dropout", 0, "--optimizer", "adam", "--lr", 0.01, "--batch-size", 32,
         "--clip", 1, "--log-every", 1000, "--checkpoint-every", 0, "--decoder", "autoregressive", "--max-steps", 150]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    from seqfit.cli.main import main

    tmp = tmp_path_factory.mktemp("ar")
    rng = np.random.default_rng(0)
    t = np.arange(1500)
    y = 2 * np.sin(2 * np.pi * t / SEASON) + 0.5 * np.sin(2 * np.pi * t / 5.3) + rng.normal(0, NOISE, len(t))
    (tmp / "s.csv").write_text("t,y\n" + "".join(f"{a},{b:.6f}\n" for a, b in zip(t, y)))
    for args in (["prepare", tmp / "s.csv", "--task", "series", "--columns", "y", "--time-field", "t",
                  "--valid-fraction", 0.2, "--out", tmp / "data"],
                 ["train", tmp / "data", "--out", tmp / "run", *FLAGS]):
        try:
            main([str(a) for a in args])
        except SystemExit as e:
            assert not e.code
    return {"data": tmp / "data", "run": tmp / "run", "y": y}


def test_learns_a_sine_to_mase_below_one(trained, cli):
    code, out, err = cli("evaluate", trained["run"], "--split", "valid", "--json")
    assert code == 0, err
    result = json.loads(out)  # --season 1: MASE against the naive forecast's in-sample error
    print("MASE", result["mase"], "naive", result["baselines"]["naive"]["mase"])
    assert result["mase"] < 1 and result["mae"] < 0.5 * result["baselines"]["naive"]["mae"]  # ~0.66, ~2.97


def test_save_predict_evaluate_round_trip(trained, cli, tmp_path):
    from seqfit.engine.run_dir import load_run

    cfg = (trained["run"] / "config.toml").read_text()
    assert 'decoder = "autoregressive"' in cfg
    out = tmp_path / "f.csv"
    code, _, err = cli("predict", trained["run"], trained["data"], "--out", out)
    assert code == 0, err
    rows = [line.split(",") for line in out.read_text().splitlines()[1:]]
    assert [int(r[2]) for r in rows] == list(range(1, 9))
    got = np.array([float(r[3]) for r in rows])

    run = load_run(trained["run"], task="forecast")  # the saved weights, its own forecasts fed back
    task = run.task
    assert run.model.decoder_kind == "autoregressive"
    raw = trained["y"][-32:].astype(np.float32)
    x = (raw - task.train_split.mean[0]) * task.train_split.scale[0]
    run.model.eval()
    with torch.no_grad():
        pred = run.model(torch.from_numpy(x[None, :, None])).numpy()[0, :, 0, 0]
    np.testing.assert_allclose(got, pred / task.train_split.scale[0] + task.train_split.mean[0], rtol=1e-4, atol=1e-4)
    code, again, err = cli("evaluate", trained["run"], "--split", "valid", "--json")
    assert code == 0, err
    code, once_more, err = cli("evaluate", trained["run"], "--split", "valid", "--json")
    assert json.loads(again)["mae"] == json.loads(once_more)["mae"]


def test_the_planner_counts_the_decoder(trained):
    from seqfit.memory.plan_forecast import (estimate_forecaster, forecast_info_from_dir, forecaster_param_shapes,
                                             requested_forecast_plan)

    opts = {"task": "forecast", "target": "y", "lookback": 32, "horizon": 8, "cell": "lstm", "hidden": 16,
            "layers": 2, "forecast_loss": "quantile"}
    sizes = {}
    for decoder in ("direct", "autoregressive"):
        cfg = from_options({**opts, "decoder": decoder})
        info = forecast_info_from_dir(cfg, trained["data"])
        shapes = forecaster_param_shapes(cfg, info)
        model = Forecaster(cfg.model, num_inputs=1, num_targets=1, horizon=8, num_quantiles=3, decoder=decoder)
        assert sorted(map(tuple, shapes)) == sorted(tuple(p.shape) for p in model.parameters())
        sizes[decoder] = estimate_forecaster(cfg, info, requested_forecast_plan(cfg, "cpu"))["peak"]
    assert sizes["autoregressive"] > sizes["direct"]


def test_bad_decoder_is_one_line(trained, cli, tmp_path):
    code, _, err = cli("train", trained["data"], "--out", tmp_path / "r", "--task", "forecast", "--decoder", "beam")
    assert code == 2 and "beam" in err


def test_old_runs_default_to_direct(trained):
    from seqfit.config import from_dict, to_dict

    d = to_dict(from_options({"task": "forecast"}))
    del d["model"]["decoder"], d["model"]["static"]  # a config written before these keys existed
    assert from_dict(d).model.decoder == "direct" and from_dict(d).model.static
