"""The anomaly section of bench_forecast.py (issue 14): `seqfit detect` against labelled real anomalies.

Labelled series that ship as files inside pip packages (read, never imported; no downloads):

    mitdb    sktime datasets/data/mitdb/mitdb.csv (data,label): 7,500 ECG values, one labelled segment of 352
    yahoo    sktime datasets/data/yahoo/yahoo.csv (data,label): 1,000 values, 7 labelled points
    kdd135   aeon datasets/data/KDD-TSAD_135/135_UCR_Anomaly_InternalBleeding16_TEST.csv (value,is_anomaly):
             7,501 values, one labelled segment of 12; the archive's anomaly-free train span is its first 1,200
             (the _TRAIN.csv beside it). aeon ships this one series of the 250 of the UCR archive (KDD-TSAD's
             other series are downloaded by aeon's loader, which this benchmark does not do).

One recipe for all: the fit span is the archive's train span (kdd135) or else the first FIT_FRACTION of the series,
its first 3/4 the train split and its last 1/4 the valid split (detect takes its error scale from there); the rest is
the test split, scored by `seqfit detect` (one-step forecasts of a GRU 1x32, lookback ANOMALY_LOOKBACK, horizon 1,
the forecast recipe's optimiser and steps) at its default threshold THRESHOLD. The test split starts
ANOMALY_LOOKBACK rows before the fit span ends, so its first scored row is the first row after the fit span.
Baselines, scored on the same rows with the same threshold:

    zscore   |x_t - mean| / std of the ANOMALY_LOOKBACK values before t
    naive    |d_t - median(d)| / (1.4826 MAD(d)), d_t = x_t - x_(t-1), median and MAD over the fit span

Metrics on the scored rows: point-wise precision, recall, F1 at the threshold; point-adjusted F1 (Xu et al. 2018,
"Unsupervised anomaly detection via variational auto-encoder for seasonal KPIs", WWW: a labelled segment counts as
found in full when any of its points is flagged; it flatters detectors, long segments most); best_f1: the point-wise
F1 at the best threshold chosen on the labels themselves (an oracle upper bound, not a usable setting).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from common import WORK

ANOMALY_LOOKBACK = 64
THRESHOLD = 4.0  # seqfit detect's default
FIT_FRACTION = 0.4
MAD_SIGMA = 1.4826
RECIPE = ["--cell", "gru", "--layers", "1", "--hidden", "32", "--dropout", "0", "--batch-size", "32", "--optimizer", "adam",
          "--lr", "0.003", "--schedule", "cosine", "--clip", "1", "--log-every", "100", "--checkpoint-every", "0"]
SETS = ("mitdb", "yahoo", "kdd135")


def _package_data(pkg: str, rel: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{pkg} not installed (pip install seqfit[bench])")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / rel
    if not path.is_file():
        raise FileNotFoundError(f"{pkg} does not ship datasets/data/{rel}")
    return path


def labelled(name: str) -> tuple[np.ndarray, np.ndarray, int]:
    """(values, 0/1 labels, end of the fit span) of one labelled series."""
    import pandas as pd

    if name in ("mitdb", "yahoo"):
        df = pd.read_csv(_package_data("sktime", f"{name}/{name}.csv"))
        return df["data"].to_numpy(float), df["label"].to_numpy(int), int(FIT_FRACTION * len(df))
    if name == "kdd135":
        rel = "KDD-TSAD_135/135_UCR_Anomaly_InternalBleeding16_{}.csv"
        df = pd.read_csv(_package_data("aeon", rel.format("TEST")))
        fit = len(pd.read_csv(_package_data("aeon", rel.format("TRAIN"))))
        return df["value"].to_numpy(float), df["is_anomaly"].to_numpy(int), fit
    raise ValueError(name)


def zscore_scores(x: np.ndarray, w: int) -> np.ndarray:
    """|x_t - mean(x[t-w:t])| / std(x[t-w:t]) (nan for t < w)."""
    c1, c2 = np.concatenate([[0], np.cumsum(x)]), np.concatenate([[0], np.cumsum(x * x)])
    out = np.full(len(x), np.nan)
    t = np.arange(w, len(x))
    mean = (c1[t] - c1[t - w]) / w
    std = np.sqrt(np.maximum((c2[t] - c2[t - w]) / w - mean ** 2, 0))
    out[t] = np.abs(x[t] - mean) / np.maximum(std, 1e-9 * max(1.0, np.abs(x).max()))
    return out


def naive_scores(x: np.ndarray, fit: int) -> np.ndarray:
    d = np.diff(x, prepend=np.nan)
    centre = np.median(d[1:fit])
    scale = max(np.median(np.abs(d[1:fit] - centre)) * MAD_SIGMA, 1e-9 * max(1.0, np.abs(x).max()))
    return np.abs(d - centre) / scale


def _prf(pred: np.ndarray, labels: np.ndarray) -> tuple[float, float, float]:
    tp = int((pred & labels).sum())
    p = tp / max(int(pred.sum()), 1)
    r = tp / max(int(labels.sum()), 1)
    return p, r, 2 * p * r / (p + r) if p + r else 0.0


def point_adjust(pred: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """A labelled segment with any flagged point flagged in full (Xu et al. 2018)."""
    out = pred.copy()
    idx = np.flatnonzero(labels)
    for seg in np.split(idx, np.flatnonzero(np.diff(idx) > 1) + 1) if len(idx) else []:
        if pred[seg].any():
            out[seg] = True
    return out


def best_f1(scores: np.ndarray, labels: np.ndarray) -> float:
    """Point-wise F1 at the best threshold (an oracle: the threshold is chosen on the labels)."""
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(labels[order])
    flagged = np.arange(1, len(order) + 1)
    last = np.r_[scores[order][1:] != scores[order][:-1], True]  # cut only between distinct scores
    f1 = 2 * tp / (flagged + labels.sum())
    return float(f1[last].max()) if labels.any() else 0.0


def metrics(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    labels = labels.astype(bool)
    pred = scores > threshold
    p, r, f1 = _prf(pred, labels)
    return {"flagged": int(pred.sum()), "precision": round(p, 3), "recall": round(r, 3), "f1": round(f1, 3),
            "pa_f1": round(_prf(point_adjust(pred, labels), labels)[2], 3), "best_f1": round(best_f1(scores, labels), 3)}


def _write(path: Path, t: np.ndarray, y: np.ndarray) -> Path:
    path.write_text("t,y\n" + "".join(f"{a},{b:.6f}\n" for a, b in zip(t, y)))
    return path


def _seqfit_scores(name: str, y: np.ndarray, fit: int, steps: int, cli) -> np.ndarray:
    """seqfit detect's score of every row (nan where it scored none), and the run's training seconds."""
    L = ANOMALY_LOOKBACK
    work = WORK / "anomaly" / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t = np.arange(len(y))
    cut = fit * 3 // 4
    files = {"train": _write(work / "train.csv", t[:cut], y[:cut]), "valid": _write(work / "valid.csv", t[cut:fit], y[cut:fit]),
             "test": _write(work / "test.csv", t[fit - L:], y[fit - L:])}
    data, run, out = work / "data", work / "run", work / "detect.csv"
    cli("prepare", "--train", files["train"], "--valid", files["valid"], "--test", files["test"], "--task", "series",
        "--columns", "y", "--time-field", "t", "--out", data)
    cli("train", data, "--out", run, "--task", "forecast", "--target", "y", "--lookback", L, "--horizon", 1,
        "--season", 1, *RECIPE, "--max-steps", steps, "--json")
    summary = json.loads(cli("detect", run, data, "--out", out, "--threshold", THRESHOLD, "--json"))
    import pandas as pd

    det = pd.read_csv(out)
    scores = np.full(len(y), np.nan)
    scores[det["time"].to_numpy(int)] = det["score"].to_numpy(float)
    assert summary["scored"] == len(det) == len(y) - fit, summary
    return scores


def run_anomaly(steps: int, cli) -> dict:
    rows = []
    for name in SETS:
        try:
            y, labels, fit = labelled(name)
        except FileNotFoundError as exc:
            rows.append({"data": name, "method": "-", "status": "skipped", "reason": str(exc)})
            continue
        span = slice(fit, len(y))
        head = {"data": name, "rows": len(y), "scored": len(y) - fit, "labelled": int(labels[span].sum()),
                "segments": int(np.sum(np.diff(np.r_[0, labels[span]]) == 1))}
        try:
            scores = {"seqfit": _seqfit_scores(name, y, fit, steps, cli)}
        except Exception as exc:  # one data set failing should not hide the others
            rows.append({**head, "method": "seqfit", "status": "failed", "reason": str(exc)[-300:]})
            scores = {}
        scores |= {"zscore": zscore_scores(y, ANOMALY_LOOKBACK), "naive": naive_scores(y, fit)}
        for method, s in scores.items():
            rows.append({**head, "method": method, "status": "ok", **metrics(s[span], labels[span], THRESHOLD)})
    ok = [r for r in rows if r["status"] == "ok"]
    summary = {f"mean_{k}_{m}": round(float(np.mean([r[k] for r in ok if r["method"] == m])), 3)
               for m in ("seqfit", "zscore", "naive") for k in ("f1", "pa_f1", "best_f1")
               if any(r["method"] == m for r in ok)}
    return {"name": "forecast-anomaly", "rows": rows, "steps": steps, "threshold": THRESHOLD,
            "note": f"seqfit detect (GRU 1x32, lookback {ANOMALY_LOOKBACK}, horizon 1) vs rolling z-score and naive "
                    f"one-step baselines, threshold {THRESHOLD:g}; pa_f1 point-adjusted, best_f1 oracle threshold",
            "summary": summary}
