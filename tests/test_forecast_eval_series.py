"""`seqfit evaluate` on a store of several series: MASE is the mean over series of each series' own MASE
(scaled by its own train seasonal-naive error), the pooled figure stays under mase_pooled, a series constant
in train (no scale) is left out and counted, per_series breaks it down; the baselines' figures equal those
computed by hand from a NumPy copy; a store of one series reports the same number both ways."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli_ok

N, VALID, L, H, M = 300, 100, 24, 6, 12
NAMES = ["a", "b", "flat"]
FLAGS = ["--task", "forecast", "--target", "y", "--lookback", L, "--horizon", H, "--season", M, "--cell", "gru",
         "--layers", 1, "--hidden", 8, "--dropout", 0, "--batch-size", 16, "--log-every", 100,
         "--checkpoint-every", 0, "--max-steps", 5, "--seed", 1]


def values() -> np.ndarray:
    """(S, N): two seasonal series of very different scales, and one constant series."""
    rng = np.random.default_rng(0)
    t = np.arange(N)
    shape = np.sin(2 * np.pi * t / M)
    return np.stack([10 + 2 * shape + rng.normal(0, 0.2, N), 1000 + 300 * shape + rng.normal(0, 30, N),
                     np.full(N, 7.0)])


def write(path: Path, names: list[str]) -> Path:
    v = values()
    lines = ["id,t,y"] + [f"{n},{t},{float(x)!r}" for n in names for t, x in enumerate(v[NAMES.index(n)])]
    path.write_text("\n".join(lines) + "\n")
    return path


def by_hand(v: np.ndarray) -> dict:
    """Seasonal-naive and naive MAE sums over the backtest windows of each series' valid tail, and its train scale."""
    v = v.astype(np.float32).astype(np.float64)  # the store keeps float32
    train, valid = v[:, :N - VALID], v[:, N - VALID:]
    diff = np.abs(train[:, M:] - train[:, :-M])  # (S, N - VALID - M)
    out = {"scale": diff.mean(1), "pooled_scale": diff.sum() / diff.size, "sn": [], "naive": []}
    rows = L - M + np.arange(H) % M
    for s in range(len(v)):
        starts = range(0, VALID - L - H + 1, H)
        y = np.stack([valid[s, a + L:a + L + H] for a in starts])  # (W, H)
        sn = np.stack([valid[s, a:a + L][rows] for a in starts])
        naive = np.stack([np.repeat(valid[s, a + L - 1], H) for a in starts])
        out["sn"].append(np.abs(sn - y))
        out["naive"].append(np.abs(naive - y))
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    cli = run_cli_ok
    tmp = tmp_path_factory.mktemp("eval_series")
    out = {}
    for key, names, extra in (("many", NAMES, ["--group-field", "id"]), ("one", ["b"], [])):
        cli("prepare", write(tmp / f"{key}.csv", names), "--task", "series", "--columns", "y", "--time-field", "t",
            "--valid-fraction", VALID / N, "--out", tmp / f"data-{key}", *extra)
        cli("train", tmp / f"data-{key}", "--out", tmp / key, *FLAGS)
        out[key] = tmp / key
    return out


def test_mase_is_the_mean_of_each_series_own(runs, cli):
    code, stdout, err = cli("evaluate", runs["many"], "--json")
    assert code == 0, err
    result = json.loads(stdout)
    hand = by_hand(values())
    assert result["mase_series"] == 2 and result["mase_skipped"] == 1  # "flat" has no seasonal-naive error
    assert [p["series"] for p in result["per_series"]] == NAMES and result["per_series"][2]["mase"] is None
    for key, base in (("sn", "seasonal_naive"), ("naive", "naive")):
        own = [hand[key][s].mean() / hand["scale"][s] for s in range(2)]  # a and b
        pooled = np.mean([e.mean() for e in hand[key]]) / hand["pooled_scale"]  # equal window counts
        got = result["baselines"][base]
        np.testing.assert_allclose(got["mase"], np.mean(own), rtol=1e-9)
        np.testing.assert_allclose(got["mase_pooled"], pooled, rtol=1e-9)
        np.testing.assert_allclose([p[f"{base}_mase"] for p in result["per_series"][:2]], own, rtol=1e-9)
        assert got["mase_skipped"] == 1 and np.isfinite(got["mase"])
    # the big series dominates the pooled figure; the mean weighs both alike
    assert result["baselines"]["seasonal_naive"]["mase"] != pytest.approx(result["baselines"]["seasonal_naive"]["mase_pooled"])
    model = [p["mase"] for p in result["per_series"] if p["mase"] is not None]
    assert result["mase"] == pytest.approx(np.mean(model), rel=1e-12)
    assert all(p["origins"] == (VALID - L - H) // H + 1 for p in result["per_series"])

    code, stdout, err = cli("evaluate", runs["many"])
    assert code == 0, err
    assert "mean over 2 series (pooled" in stdout and "1 series without a seasonal-naive scale" in stdout


def test_one_series_reports_the_same_mase_both_ways(runs, cli):
    code, stdout, err = cli("evaluate", runs["one"], "--json")
    assert code == 0, err
    result = json.loads(stdout)
    assert "per_series" not in result and result["mase_series"] == 1 and result["mase_skipped"] == 0
    assert result["mase"] == result["mase_pooled"]  # bit for bit: the same sums in the same order
    for base in ("naive", "seasonal_naive"):
        assert result["baselines"][base]["mase"] == result["baselines"][base]["mase_pooled"]
    hand = by_hand(values()[1:2])
    np.testing.assert_allclose(result["baselines"]["seasonal_naive"]["mase"], hand["sn"][0].mean() / hand["scale"][0],
                               rtol=1e-9)
