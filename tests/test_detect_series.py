"""`seqfit detect` on two series of very different noise (0.1 and 10): each series is scored against its own
error scale (--scale series, the default), so the spikes of both are found, where one global scale misses the
quiet series' spikes (and flags the loud one's noise); and the held-out tail borrows its first windows from the
series' train rows, so every tail point is scored, with the scores of windows cut by hand from a NumPy copy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli_ok
import torch

N, VALID, L = 1200, 400, 24
NAMES, LEVELS, NOISES = ["quiet", "loud"], [5.0, -50.0], [0.1, 10.0]
SPIKES = np.array([3, 10, 40, 77, 120, 160, 210, 260, 300, 350])  # valid rows; 3 and 10 need the train rows' context
FLAGS = ["--task", "forecast", "--target", "y", "--lookback", L, "--horizon", 2, "--season", 1, "--cell", "gru",
         "--layers", 1, "--hidden", 8, "--dropout", 0, "--optimizer", "adam", "--lr", 0.01, "--batch-size", 32,
         "--clip", 1, "--log-every", 100, "--checkpoint-every", 0, "--max-steps", 80, "--seed", 1, "--normalize", "series"]


def values() -> np.ndarray:
    """(S, N): white noise around each level, 10-sigma spikes (alternating sign) in the valid tail."""
    rng = np.random.default_rng(0)
    v = np.stack([lv + sd * rng.normal(0, 1, N) for lv, sd in zip(LEVELS, NOISES)])
    sign = np.where(np.arange(len(SPIKES)) % 2, -1.0, 1.0)
    for s, sd in enumerate(NOISES):
        v[s, N - VALID + SPIKES] += 10 * sd * sign
    return v


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    cli = run_cli_ok
    tmp = tmp_path_factory.mktemp("detect_series")
    lines = ["id,t,y"] + [f"{name},{t},{float(x)!r}" for name, row in zip(NAMES, values()) for t, x in enumerate(row)]
    (tmp / "d.csv").write_text("\n".join(lines) + "\n")
    data = tmp / "data"
    cli("prepare", tmp / "d.csv", "--task", "series", "--columns", "y", "--group-field", "id", "--time-field", "t",
        "--valid-fraction", VALID / N, "--out", data)
    cli("train", data, "--out", tmp / "run", *FLAGS)
    return {"data": data, "run": tmp / "run"}


def _read(path: Path) -> dict[str, np.ndarray]:
    lines = [line.split(",") for line in path.read_text().splitlines()]
    assert lines[0] == ["series", "time", "value", "forecast", "score", "anomaly"]
    cols = list(zip(*lines[1:]))
    return {"series": np.array(cols[0]), "time": np.array(cols[1], dtype=np.int64),
            "value": np.array(cols[2], dtype=np.float64), "score": np.array(cols[4], dtype=np.float64),
            "anomaly": np.array(cols[5], dtype=np.int64)}


def _precision_recall(table: dict, name: str) -> tuple[float, float]:
    mine = table["series"] == name
    flagged = set((table["time"][mine & (table["anomaly"] == 1)] - (N - VALID)).tolist())
    hits = len(flagged & set(SPIKES.tolist()))
    return hits / max(1, len(flagged)), hits / len(SPIKES)


def test_each_series_against_its_own_scale(trained, cli, tmp_path):
    out = tmp_path / "a.csv"
    code, stdout, err = cli("detect", trained["run"], trained["data"], "--split", "valid", "--out", out, "--json")
    assert code == 0, err
    summary = json.loads(stdout)
    table = _read(out)
    assert summary["scale"] == "series" and summary["series_own_scale"] == 2 and summary["series_global_scale"] == 0
    assert summary["context_series"] == 2 and summary["scored"] == 2 * VALID  # every tail point, its first L too
    own = {name: _precision_recall(table, name) for name in NAMES}  # (precision, recall)

    # one global scale: the loud series' noise swamps it, the quiet series' spikes go unseen
    out = tmp_path / "g.csv"
    code, stdout, err = cli("detect", trained["run"], trained["data"], "--split", "valid", "--scale", "global",
                            "--out", out, "--json")
    assert code == 0, err
    assert json.loads(stdout)["series_own_scale"] == 0
    table = _read(out)
    quiet, loud = _precision_recall(table, "quiet"), _precision_recall(table, "loud")
    print("precision, recall: own scale", own, "global scale: quiet", quiet, "loud", loud)  # after the last cli call
    assert all(precision >= 0.9 and recall >= 0.9 for precision, recall in own.values())
    assert quiet[1] <= 0.2  # the quiet series' spikes are missed
    assert loud[0] < 0.5  # and the loud series' ordinary noise is flagged


def test_every_tail_point_is_scored_as_a_window_cut_by_hand(trained, cli, tmp_path):
    from seqfit.engine.forecast_output import MAD_SIGMA
    from seqfit.engine.run_dir import load_run

    out = tmp_path / "all.csv"
    code, _, err = cli("detect", trained["run"], trained["data"], "--split", "valid", "--threshold", 1e9, "--out", out)
    assert code == 0, err  # a threshold nothing reaches: no point is cleaned, each score is its raw window's
    table = _read(out)
    run = load_run(trained["run"], task="forecast")
    full = values().astype(np.float32)  # (S, N): the store holds float32 copies of the CSV values
    train = full[:, :N - VALID].astype(np.float64)
    for s, name in enumerate(NAMES):
        mine = table["series"] == name
        np.testing.assert_array_equal(table["time"][mine], np.arange(N - VALID, N))  # every valid row, in order
        mean, std = np.float32(train[s].mean()), np.float32(1 / train[s].std())

        def forecast(rows: np.ndarray) -> np.ndarray:  # one-step forecasts of rows t from rows t-L .. t-1
            x = np.stack([full[s, t - L:t] for t in rows])[:, :, None]  # (B, L, 1), cut from the NumPy copy
            with torch.no_grad():
                pred = run.model(torch.from_numpy(((x - mean) * std).astype(np.float32))).float().numpy()
            return pred[:, 0, 0, 0] / std + mean

        calib = full[s, L:N - VALID] - forecast(np.arange(L, N - VALID))  # the train tail's errors set the scale
        centre = np.median(calib)
        scale = np.median(np.abs(calib - centre)) * MAD_SIGMA
        rows = np.arange(N - VALID, N)
        want = np.abs(full[s, rows] - forecast(rows) - centre) / scale
        np.testing.assert_allclose(table["value"][mine], full[s, rows], rtol=1e-6)
        np.testing.assert_allclose(table["score"][mine], want, rtol=1e-3, atol=1e-3)

    code, stdout, err = cli("detect", trained["run"], trained["data"], "--split", "valid", "--no-context", "--out",
                            tmp_path / "n.csv", "--json")
    assert code == 0, err
    assert json.loads(stdout)["scored"] == 2 * (VALID - L)  # without context: from each series' row L on


def test_predict_borrows_the_history_of_a_short_tail(trained, cli, tmp_path):
    """New data continuing the run's series with fewer rows than --lookback: forecast from the run's rows in front."""
    rng = np.random.default_rng(5)
    more = np.stack([lv + sd * rng.normal(0, 1, 10) for lv, sd in zip(LEVELS, NOISES)])  # (S, 10): times N .. N+9
    lines = ["id,t,y"] + [f"{name},{N + t},{float(x)!r}" for name, row in zip(NAMES, more) for t, x in enumerate(row)]
    (tmp_path / "new.csv").write_text("\n".join(lines) + "\n")
    new = tmp_path / "new"
    code, _, err = cli("prepare", tmp_path / "new.csv", "--task", "series", "--columns", "y", "--group-field", "id",
                       "--time-field", "t", "--valid-fraction", 0, "--out", new)
    assert code == 0, err
    out = tmp_path / "f.csv"
    code, _, err = cli("predict", trained["run"], new, "--out", out, "--horizon", 1)
    assert code == 0, err  # 10 rows < --lookback 24: the other 14 are the run's last valid rows
    rows = [line.split(",") for line in out.read_text().splitlines()[1:]]
    assert [r[0] for r in rows] == NAMES and [int(r[1]) for r in rows] == [N + 10, N + 10]
    from seqfit.engine.run_dir import load_run

    run = load_run(trained["run"], task="forecast")
    full = np.concatenate([values(), more], 1).astype(np.float32)  # (S, N + 10)
    train = full[:, :N - VALID].astype(np.float64)
    for s in range(len(NAMES)):
        mean, std = np.float32(train[s].mean()), np.float32(1 / train[s].std())
        x = ((full[s, -L:] - mean) * std).astype(np.float32)[None, :, None]  # (1, L, 1)
        with torch.no_grad():
            want = run.model(torch.from_numpy(x)).float().numpy()[0, 0, 0, 0] / std + mean
        np.testing.assert_allclose(float(rows[s][3]), want, rtol=1e-4, atol=1e-4)
