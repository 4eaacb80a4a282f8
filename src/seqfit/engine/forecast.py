"""The forecasting task (--task forecast): predict the next --horizon rows of the --target columns from the
last --lookback rows (targets and --covariates), on a "series" store (`seqfit prepare --task series`).

Windows are index arithmetic over the memory-mapped split, never materialised::

    row        s ......... s+L-1 | s+L ...... s+L+h-1
               [ lookback: inputs ] [ horizon: targets ]      one window = its start s

A split is one series: `seqfit prepare` writes a split's input files back to back in time order and keeps
no boundaries, and the valid split is the held-out tail of the same series. So a window never spans two
splits, and the valid split's first window starts at its own row 0 (its first L rows are context only).

Training draws every valid start 0 .. rows-L-h once per epoch, in an order drawn from a generator seeded by
(--seed, epoch) alone: epoch_groups(epoch) is a pure function, so a resumed run is bit-exact. Values are
normalised per column with the train split's mean and std (meta.json), the loss is taken in normalised
units (mse, mae, or the pinball loss averaged over --quantiles) and reported metrics in original units.
Validation takes the same loss, and the MAE in original units, over fixed valid windows: one every
horizon rows, or at most --eval-batches batches of them evenly spaced.

`seqfit evaluate` runs a rolling-origin backtest: origins every --horizon rows over the split, the model
against the naive and seasonal-naive forecasts on the same windows; MASE divides by the train split's
in-sample seasonal-naive MAE (season --season; 0 or 1: the naive forecast).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from seqfit.config import RunCfg
from seqfit.data.series import SeriesSplit, SeriesStore
from seqfit.engine.distributed import Dist
from seqfit.engine.task import NoCarriedState
from seqfit.errors import SeqfitError
from seqfit.memory.plan_forecast import forecast_columns, requested_forecast_plan
from seqfit.models.forecaster import Forecaster

__all__ = ["ForecastTask", "window_rows", "forecast_loss", "seasonal_scale", "backtest"]

SCALE_CHUNK = 1 << 16  # rows read at a time for the train split's seasonal-naive scale


def window_rows(split: SeriesSplit, starts, length: int, *, normalize: bool = True) -> np.ndarray:
    """(B, length, F) float32 rows from each start: one contiguous read per window off the memory map."""
    return split.windows(np.asarray(starts, dtype=np.int64), length, normalize=normalize)


def forecast_loss(pred: torch.Tensor, y: torch.Tensor, kind: str, quantiles: torch.Tensor | None) -> torch.Tensor:
    """Summed loss of forecasts (B, h, T, Q) against y (B, h, T): squared or absolute error, or the pinball
    loss averaged over the Q quantiles (so every kind sums one number per predicted value)."""
    err = y.unsqueeze(-1) - pred  # (B, h, T, Q)
    if kind == "mse":
        return err.square().sum()
    if kind == "mae":
        return err.abs().sum()
    return torch.maximum(quantiles * err, (quantiles - 1) * err).sum() / len(quantiles)


def seasonal_scale(split: SeriesSplit, columns: list[int], season: int) -> np.ndarray:
    """Per column, the in-sample MAE of the seasonal-naive forecast y[t - m] over ``split`` (original units),
    read a chunk at a time; MASE divides by it (Hyndman & Koehler 2006)."""
    m, rows = max(1, season), len(split)
    total, count = np.zeros(len(columns)), 0
    for start in range(m, rows, SCALE_CHUNK):
        n = min(SCALE_CHUNK, rows - start)
        part = split.read(start - m, n + m, normalize=False)[:, columns].astype(np.float64)  # (n + m, T)
        total += np.abs(part[m:] - part[:-m]).sum(0)
        count += n
    return total / max(1, count)


class _Errors:
    """Summed errors of point forecasts (original units), per target column."""

    def __init__(self, targets: int):
        self.abs, self.sq, self.smape, self.count = np.zeros(targets), np.zeros(targets), np.zeros(targets), 0

    def add(self, pred: np.ndarray, y: np.ndarray) -> None:  # (N, h, T) each
        err = np.abs(pred - y)
        denom = np.abs(pred) + np.abs(y)
        self.abs += err.sum((0, 1))
        self.sq += (err ** 2).sum((0, 1))
        self.smape += np.where(denom > 0, 2 * err / np.where(denom > 0, denom, 1), 0).sum((0, 1))
        self.count += y.shape[0] * y.shape[1]

    def result(self, scale: np.ndarray) -> dict:
        n = max(1, self.count)
        mae = self.abs / n
        mase = np.where(scale > 0, mae / np.where(scale > 0, scale, 1), np.inf)
        return {"mae": float(mae.mean()), "rmse": float(np.sqrt(self.sq.sum() / (n * len(scale)))),
                "smape": float(100 * self.smape.sum() / (n * len(scale))),
                "mase": float(mase.mean()) if np.isfinite(mase).all() else None}


class ForecastTask(NoCarriedState):
    name = "forecast"

    def __init__(self, cfg: RunCfg, data_dir: Path, device: torch.device, dist: Dist = Dist()):
        self.cfg, self.device, self.dist = cfg, device, dist
        self.store = SeriesStore(data_dir)
        if cfg.model.bidirectional:
            raise SeqfitError("a forecaster's encoder reads the past only: drop --bidirectional")
        self.targets, self.covariates = forecast_columns(cfg, self.store.columns)
        cols = self.store.columns
        self.target_idx = [cols.index(c) for c in self.targets]
        self.input_idx = self.target_idx + [cols.index(c) for c in self.covariates]  # targets first (the model's level)
        self.plan = requested_forecast_plan(cfg, device.type)
        self.lookback, self.horizon = cfg.train.lookback, cfg.model.horizon
        self.quantiles = self.plan["quantiles"]
        self.train_split = self.store.split("train")
        self.valid = self.store.split("valid") if self.store.has_split("valid") else None
        self.starts = len(self.train_split) - self.lookback - self.horizon + 1  # valid window starts: 0 .. starts-1
        self._epoch_groups: tuple[int, list] | None = None

    def check_data(self, warn) -> None:
        L, h, rows = self.lookback, self.horizon, len(self.train_split)
        if self.starts < 1:
            raise SeqfitError(f"--lookback {L} + --horizon {h} needs {L + h} rows; the train split has {rows}: "
                              "shorten them or add data")
        if self.cfg.train.season > L:
            raise SeqfitError(f"--season {self.cfg.train.season} is longer than --lookback {L}: the seasonal-naive "
                              "baseline reads the last season from the lookback window; raise --lookback")
        if self.valid is not None and len(self.valid) < L + h:
            warn(f"warning: the valid split has {len(self.valid)} rows, fewer than --lookback + --horizon = {L + h}; "
                 "no validation")
            self.valid = None

    def build_model(self) -> Forecaster:
        return Forecaster(self.cfg.model, num_inputs=len(self.input_idx), num_targets=len(self.targets),
                          horizon=self.horizon, num_quantiles=max(1, len(self.quantiles)),
                          checkpoint_time=self.plan["checkpoint_time"])

    def describe(self, model) -> str:
        plan = self.plan
        return (f"{plan['device']} {plan['precision']}, lookback {self.lookback} -> horizon {self.horizon} of "
                f"{', '.join(self.targets)}" + (f" (covariates {', '.join(self.covariates)})" if self.covariates else "")
                + f", {plan['loss']} loss, batch {plan['micro_batch']} x {plan['accumulate']}, "
                + (f"checkpoint every {plan['checkpoint_time']} steps, " if plan["checkpoint_time"] else "")
                + f"{self.starts:,} windows, {sum(p.numel() for p in model.parameters()):,} parameters")

    # -- data --
    def steps_per_epoch(self) -> int:
        return len(self.epoch_groups(0))

    def epoch_groups(self, epoch: int) -> list[list[np.ndarray]]:
        """Every window start once, shuffled by (seed, epoch) alone; this rank's share of each batch of
        micro-batch x ranks windows, ``accumulate`` batches to a step."""
        if self._epoch_groups is None or self._epoch_groups[0] != epoch:
            order = np.random.default_rng([self.cfg.train.seed, epoch]).permutation(self.starts)
            rank, world = self.dist.rank, self.dist.world
            size, n = self.plan["micro_batch"] * world, self.plan["accumulate"]
            batches = [order[i:i + size][rank::world] for i in range(0, len(order), size)
                       if len(order[i:i + size]) >= world]
            self._epoch_groups = (epoch, [batches[i:i + n] for i in range(0, len(batches), n)])
        return self._epoch_groups[1]

    def probe_group(self, step: int) -> list[np.ndarray]:
        """Every window has the same length: any full group is a peak one."""
        return self.epoch_groups(0)[0]

    def _batch(self, split: SeriesSplit, starts) -> tuple[torch.Tensor, torch.Tensor]:
        rows = window_rows(split, starts, self.lookback + self.horizon)  # (B, L + h, F)
        x = rows[:, :self.lookback][:, :, self.input_idx]  # (B, L, inputs)
        y = rows[:, self.lookback:][:, :, self.target_idx]  # (B, h, T)
        return (torch.from_numpy(np.ascontiguousarray(x)).to(self.device, non_blocking=True),
                torch.from_numpy(np.ascontiguousarray(y)).to(self.device, non_blocking=True))

    def micro_batches(self, group: list[np.ndarray]) -> list:
        return [self._batch(self.train_split, starts) for starts in group]

    def denominator(self, micro) -> int:
        return sum(y.numel() for _, y in micro)

    def _quantiles(self) -> torch.Tensor | None:
        return torch.tensor(self.quantiles, device=self.device) if self.quantiles else None

    def backward(self, model, micro, *, denom: int, precision, phase) -> dict[str, float]:
        x, y = micro
        with phase("forward"), precision.autocast():
            pred = model(x)  # (B, h, T, Q)
        with phase("loss"):
            loss = forecast_loss(pred.float(), y, self.plan["loss"], self._quantiles())
        with phase("backward"):
            precision.backward(loss / denom)
        part = loss.item()
        del loss, pred  # frees this micro-batch's graph before the next one is built
        return {"loss_sum": part, "count": y.numel(), "tokens": x.shape[0] * x.shape[1]}

    # -- metrics --
    def train_metrics(self, stats: dict) -> dict:
        return {"loss": stats["loss_sum"] / stats["count"]}

    @torch.no_grad()
    def _predict(self, model, split: SeriesSplit, starts: np.ndarray, precision, batch: int):
        """Yield (normalised forecasts (B, h, T, Q), the same in original units, raw rows (B, L + h, F))."""
        was_training = model.training
        model.eval()
        mean, scale = split.mean[self.target_idx][:, None], split.scale[self.target_idx][:, None]  # (T, 1)
        try:
            for i in range(0, len(starts), batch):
                raw = window_rows(split, starts[i:i + batch], self.lookback + self.horizon, normalize=False)
                x = ((raw[:, :self.lookback] - split.mean) * split.scale)[:, :, self.input_idx]  # as SeriesSplit.read
                with precision.autocast():
                    pred = model(torch.from_numpy(np.ascontiguousarray(x)).to(self.device)).float().cpu()
                yield pred, pred.numpy() / scale + mean, raw
        finally:
            model.train(was_training)

    def _point(self, pred: np.ndarray) -> np.ndarray:
        """(B, h, T) point forecasts: the quantile nearest the median, or the only output."""
        if not self.quantiles:
            return pred[..., 0]
        return pred[..., int(np.argmin([abs(q - 0.5) for q in self.quantiles]))]

    def validate(self, model, precision) -> dict | None:
        if self.valid is None:
            return None
        n = len(self.valid) - self.lookback - self.horizon + 1
        B = self.plan["micro_batch"]
        if self.cfg.train.eval_batches:  # fixed, evenly spaced: at most --eval-batches batches
            starts = np.unique(np.linspace(0, n - 1, min(n, self.cfg.train.eval_batches * B)).round().astype(np.int64))
        else:  # a window every horizon rows, as the backtest: every row of the split forecast once
            starts = np.arange(0, n, self.horizon, dtype=np.int64)
        scale = self.valid.scale[self.target_idx]
        loss, abs_err, count = 0.0, 0.0, 0
        q = self._quantiles()
        q = None if q is None else q.cpu()
        for norm, pred, raw in self._predict(model, self.valid, starts, precision, B):
            y = raw[:, self.lookback:][:, :, self.target_idx]  # (B, h, T) original units
            y_n = torch.from_numpy((y - self.valid.mean[self.target_idx]) * scale)  # as SeriesSplit.read
            loss += forecast_loss(norm, y_n, self.plan["loss"], q).item()
            abs_err += float(np.abs(self._point(pred) - y).sum())
            count += y.size
        return {"loss": loss / count, "mae": abs_err / count, "windows": int(len(starts))}

    def describe_valid(self, result: dict) -> str:
        return f"valid loss {result['loss']:.4f} MAE {result['mae']:.4g}"

    def evaluate_split(self, model, split: str, precision, *, batch_size: int = 0, warn=None) -> tuple[dict, str]:
        """`seqfit evaluate`: the rolling-origin backtest of ``split`` (see backtest)."""
        part = self.store.split(split)
        if len(part) < self.lookback + self.horizon:
            raise SeqfitError(f"the {split} split has {len(part)} rows, fewer than --lookback + --horizon = "
                              f"{self.lookback + self.horizon}: nothing to backtest")
        result = backtest(self, model, part, precision, batch=batch_size or self.plan["micro_batch"])
        b = result["baselines"]
        mase = lambda r: "n/a" if r["mase"] is None else f"{r['mase']:.3f}"
        interval = (f", {result['interval'][0]:g}-{result['interval'][1]:g} interval covers {result['coverage']:.1%}, "
                    f"pinball {result['pinball']:.4g}" if "coverage" in result else "")
        return result, (f"MAE {result['mae']:.4g}, RMSE {result['rmse']:.4g}, sMAPE {result['smape']:.2f}%, "
                        f"MASE {mase(result)} (naive {mase(b['naive'])}, seasonal naive {mase(b['seasonal_naive'])})"
                        f"{interval} over {result['origins']:,} origins")

    def summary(self, last_valid: dict | None) -> dict:
        return {"valid_loss": last_valid and last_valid["loss"], "valid_mae": last_valid and last_valid["mae"],
                "valid_ppl": None}


def backtest(task: ForecastTask, model, split: SeriesSplit, precision, *, batch: int) -> dict:
    """Rolling origin over ``split``: origins every horizon rows (windows starting at 0, h, 2h, ...); the
    model and the naive / seasonal-naive forecasts on the same windows, in original units. sMAPE is in
    percent (0-200); MASE divides each target's MAE by its train split seasonal-naive MAE, then averages
    over targets. Quantile models add the outer quantiles' interval coverage and the mean pinball loss."""
    L, h, tgt = task.lookback, task.horizon, task.target_idx
    m = max(1, task.cfg.train.season)
    starts = np.arange(0, len(split) - L - h + 1, h, dtype=np.int64)
    scale = seasonal_scale(task.train_split, tgt, m)
    model_err, naive, seasonal = _Errors(len(tgt)), _Errors(len(tgt)), _Errors(len(tgt))
    qs = np.asarray(task.quantiles)
    covered, pinball = 0, 0.0
    season_rows = L - m + np.arange(h) % m  # row of the lookback that step j of the horizon repeats
    for _, pred, raw in task._predict(model, split, starts, precision, batch):
        y = raw[:, L:][:, :, tgt].astype(np.float64)  # (B, h, T)
        past = raw[:, :L][:, :, tgt].astype(np.float64)  # (B, L, T)
        model_err.add(task._point(pred).astype(np.float64), y)
        naive.add(np.repeat(past[:, -1:], h, axis=1), y)
        seasonal.add(past[:, season_rows], y)
        if len(qs):
            covered += int(((pred[..., 0] <= y) & (y <= pred[..., -1])).sum())
            err = y[..., None] - pred
            pinball += float(np.maximum(qs * err, (qs - 1) * err).mean(-1).sum())
    result = {**model_err.result(scale), "origins": int(len(starts)), "points": model_err.count * len(tgt),
              "season": m, "baselines": {"naive": naive.result(scale), "seasonal_naive": seasonal.result(scale)}}
    if len(qs):
        result |= {"coverage": covered / max(1, result["points"]), "interval": [float(qs[0]), float(qs[-1])],
                   "pinball": pinball / max(1, result["points"])}
    return result
