"""The forecasting task (--task forecast): predict the next --horizon rows of the --target columns from the
last --lookback rows (targets and --covariates), on a "series" store (`seqfit prepare --task series`).

Windows are index arithmetic over the memory-mapped split, never materialised::

    row        s ......... s+L-1 | s+L ...... s+L+h-1
               [ lookback: inputs ] [ horizon: targets ]      one window = its start s

A split is one series (`seqfit prepare` writes a split's input files back to back in time order), or many
(--group-field at prepare: row offsets per series); the valid split is the held-out tail of each series.
Windows are numbered series by series (seqfit.data.window_index), so a window never spans two series or
two splits, and a series' first window in the valid split starts at its own first row there (its first L
rows are context only). Every series must hold L + h train rows; in valid, shorter series are skipped.

Training draws every valid start once per epoch (--series-weight length; or every series equally often,
--series-weight equal) in an order computed on demand from (--seed, epoch) alone (seqfit.data.window_sampler:
no per-window array, whatever the number of series): epoch_groups(epoch) is a pure function, so a resumed
run is bit-exact. Values are normalised per column (--normalize, seqfit.data.series_norm: the train split's
mean and std over every series, each series' own, or each window's lookback's), the loss is taken in normalised
units (mse, mae, or the pinball loss averaged over --quantiles) and reported metrics in original units.
Known-future inputs (--future-covariates columns, --calendar features of the time field, seqfit.data.calendar)
are read over the lookback like the other inputs, and their horizon rows (B, h, k) go to the head as well
(seqfit.models.forecaster): a window reads its L + h rows already, so they cost no extra read.
Static per-series categories (prepare --static-field; --no-static leaves them out) are looked up per window
from its series (one id per column, O(series) memory) and go to the model's embeddings; a DATA store other
than the train one (predict, detect) is mapped to the run's categories by name. --decoder autoregressive
feeds the true horizon targets to the decoder in training (teacher forcing) and its own forecasts elsewhere.
Validation takes the same loss, and the MAE in original units, over fixed valid windows: one every
horizon rows, or at most --eval-batches batches of them evenly spaced.

`seqfit evaluate` runs a rolling-origin backtest: origins every --horizon rows over each series of the split,
the model against the naive and seasonal-naive forecasts on the same windows; MASE divides by the train
split's in-sample seasonal-naive MAE (season --season; 0 or 1: the naive forecast), differences taken within
each series: ``mase`` is the mean over series of each series' own MASE, ``mase_pooled`` errors summed over
every series against one scale (seqfit.measure.forecast_metrics).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from seqfit.config import RunCfg
from seqfit.data import calendar
from seqfit.data.series import SeriesSplit, SeriesStore
from seqfit.data.series_norm import WindowNorm
from seqfit.data.window_sampler import EpochWindows
from seqfit.engine.distributed import Dist
from seqfit.engine.task import NoCarriedState
from seqfit.errors import SeqfitError
from seqfit.measure.forecast_metrics import PER_SERIES_MAX, SeriesErrors, seasonal_scales
from seqfit.memory.plan_forecast import forecast_columns, requested_forecast_plan
from seqfit.models.forecaster import Forecaster

__all__ = ["ForecastTask", "window_rows", "forecast_loss", "seasonal_scale", "backtest"]


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
    pooled over its series (differences within each); MASE divides by it (Hyndman & Koehler 2006)."""
    return seasonal_scales(split, columns, season)[0]


class ForecastTask(NoCarriedState):
    name = "forecast"

    def __init__(self, cfg: RunCfg, data_dir: Path, device: torch.device, dist: Dist = Dist()):
        self.cfg, self.device, self.dist = cfg, device, dist
        self.store = SeriesStore(data_dir)
        if cfg.model.bidirectional:
            raise SeqfitError("a forecaster's encoder reads the past only: drop --bidirectional")
        self.targets, self.covariates, self.future = forecast_columns(cfg, self.store.columns)
        cols = self.store.columns
        self.target_idx = [cols.index(c) for c in self.targets]
        self.future_idx = [cols.index(c) for c in self.future]
        # targets first (the model's level), then past covariates, then the known-future columns (then calendar)
        self.input_idx = self.target_idx + [cols.index(c) for c in self.covariates] + self.future_idx
        self.plan = requested_forecast_plan(cfg, device.type)
        self.lookback, self.horizon = cfg.train.lookback, cfg.model.horizon
        self.quantiles = self.plan["quantiles"]
        self.train_split = self.store.split("train")
        self.calendar = calendar.choose_parts(self.train_split.times) if cfg.model.calendar else []  # parts used
        self.num_future = len(self.future_idx) + 2 * len(self.calendar)  # known-future inputs per horizon row
        self.future_rows = self.horizon if self.future_idx else 0  # rows past an origin a forecast reads (predict)
        self.valid = self.store.split("valid") if self.store.has_split("valid") else None
        self.static_fields = self.store.static_fields if cfg.model.static else []  # per-series categories
        self.static_vocab = {c: self.store.static_vocab[c] for c in self.static_fields}
        self._static_ids: dict[int, tuple[SeriesSplit, np.ndarray]] = {}  # per split (see _cached)
        self.index = self.train_split.window_index(self.lookback + self.horizon)  # where windows start, per series
        self.starts = self.index.count  # windows of the train split
        self._epoch_groups: EpochWindows | None = None
        self._norms: dict[int, tuple[SeriesSplit, WindowNorm]] = {}
        self.norm(self.train_split)  # --normalize series on a store without per-series statistics: refused here

    @staticmethod
    def _cached(cache: dict, split: SeriesSplit, make):
        """make(split), once per split object; the split is kept with it so that its id stays its own."""
        if id(split) not in cache:
            cache[id(split)] = (split, make(split))
        return cache[id(split)][1]

    def norm(self, split: SeriesSplit) -> WindowNorm:
        """How ``split``'s windows are normalised (--normalize), against this run's train split."""
        return self._cached(self._norms, split, lambda s: WindowNorm(self.cfg.train.normalize, s, self.train_split))

    def check_data(self, warn) -> None:
        L, h, rows = self.lookback, self.horizon, len(self.train_split)
        short = np.flatnonzero(self.index.lengths < L + h)
        if len(short) and self.train_split.num_series > 1:
            i = int(short[0])
            more = f" (and {len(short) - 1} more of {self.train_split.num_series})" if len(short) > 1 else ""
            raise SeqfitError(f"series {self.train_split.names[i]!r}{more} has {int(self.index.lengths[i])} train rows, "
                              f"fewer than --lookback {L} + --horizon {h} = {L + h}: shorten them, or leave short "
                              "series out of the data")
        if self.starts < 1:
            raise SeqfitError(f"--lookback {L} + --horizon {h} needs {L + h} rows; the train split has {rows}: "
                              "shorten them or add data")
        if self.cfg.train.season > L:
            raise SeqfitError(f"--season {self.cfg.train.season} is longer than --lookback {L}: the seasonal-naive "
                              "baseline reads the last season from the lookback window; raise --lookback")
        valid = self.valid.window_index(L + h) if self.valid is not None else None
        if valid is not None and valid.count == 0:
            warn(f"warning: the valid split has {len(self.valid)} rows, fewer than --lookback + --horizon = {L + h}"
                 + (" in each series" if self.valid.num_series > 1 else "") + "; no validation")
            self.valid = None
        elif valid is not None and (skipped := int((valid.counts == 0).sum())):
            warn(f"warning: {skipped} of {self.valid.num_series} series have fewer than --lookback + --horizon = "
                 f"{L + h} valid rows; they are not validated")

    def build_model(self) -> Forecaster:
        return Forecaster(self.cfg.model, num_inputs=len(self.input_idx) + 2 * len(self.calendar),
                          num_targets=len(self.targets), horizon=self.horizon, num_quantiles=max(1, len(self.quantiles)),
                          checkpoint_time=self.plan["checkpoint_time"], num_future=self.num_future,
                          static_sizes=tuple(len(v) for v in self.static_vocab.values()),
                          decoder=self.cfg.model.decoder, point=self._point_index())

    def _point_index(self) -> int:
        """The output the point forecast reads: the quantile nearest the median, or the only one."""
        return int(np.argmin([abs(q - 0.5) for q in self.quantiles])) if self.quantiles else 0

    def _static(self, split: SeriesSplit, starts) -> torch.Tensor | None:
        """(B, K) int64 category ids of the windows' series, in this run's vocabularies, or None (no static)."""
        if not self.static_fields:
            return None
        ids = self._cached(self._static_ids, split, self._map_static)  # (S, K)
        return self._tensor(ids[split.series_of(np.asarray(starts, dtype=np.int64))])

    def _map_static(self, split: SeriesSplit) -> np.ndarray:
        """(S, K) ids of ``split``'s series in the run's vocabularies (another store's are mapped by name)."""
        missing = [c for c in self.static_fields if c not in split.static_vocab]
        if missing or split.static is None:
            raise SeqfitError(f"the run reads static categories {', '.join(self.static_fields)}; {split.dir} lacks "
                              f"{', '.join(missing or self.static_fields)}: prepare it with --static-field "
                              f"{','.join(self.static_fields)}")
        ids = split.static[:, [split.static_fields.index(c) for c in self.static_fields]]  # (S, K)
        out = np.empty_like(ids)
        for k, c in enumerate(self.static_fields):
            ours = {name: i for i, name in enumerate(self.static_vocab[c])}
            theirs = split.static_vocab[c]
            unknown = [t for t in theirs if t not in ours]
            if unknown and np.isin(ids[:, k], [theirs.index(t) for t in unknown]).any():
                raise SeqfitError(f"{split.dir}: --static-field {c!r} category {unknown[0]!r} was not seen in "
                                  "training; the model has no embedding for it")
            out[:, k] = np.array([ours.get(t, 0) for t in theirs], dtype=np.int64)[ids[:, k]]
        return out

    def describe(self, model) -> str:
        plan, S = self.plan, self.train_split.num_series
        return (f"{plan['device']} {plan['precision']}, lookback {self.lookback} -> horizon {self.horizon} of "
                f"{', '.join(self.targets)}" + (f" (covariates {', '.join(self.covariates)})" if self.covariates else "")
                + (f" (known future {', '.join(self.future + [f'calendar {c}' for c in self.calendar])})" if self.num_future else "")
                + (f" (static {', '.join(f'{c} ({len(v)})' for c, v in self.static_vocab.items())})" if self.static_fields else "")
                + (", autoregressive decoder" if self.cfg.model.decoder == "autoregressive" else "")
                + f", {self.cfg.train.normalize} normalisation, {plan['loss']} loss, batch {plan['micro_batch']} x {plan['accumulate']}, "
                + (f"checkpoint every {plan['checkpoint_time']} steps, " if plan["checkpoint_time"] else "")
                + f"{self.starts:,} windows" + (f" of {S:,} series" if S > 1 else "")
                + f", {sum(p.numel() for p in model.parameters()):,} parameters")

    # -- data --
    def steps_per_epoch(self) -> int:
        return len(self.epoch_groups(0))

    def epoch_groups(self, epoch: int) -> EpochWindows:
        """Every window start once (or every series equally often), shuffled by (seed, epoch) alone; this
        rank's share of each batch of micro-batch x ranks windows, ``accumulate`` batches to a step."""
        if self._epoch_groups is None or self._epoch_groups.epoch != epoch:
            self._epoch_groups = EpochWindows(self.index, seed=self.cfg.train.seed, epoch=epoch,
                                              micro=self.plan["micro_batch"], accumulate=self.plan["accumulate"],
                                              rank=self.dist.rank, world=self.dist.world,
                                              weight=self.cfg.train.series_weight)
        return self._epoch_groups

    def probe_group(self, step: int) -> list[np.ndarray]:
        """Every window has the same length: any full group is a peak one."""
        return self.epoch_groups(0)[0]

    def _tensor(self, a: np.ndarray | None) -> torch.Tensor | None:
        return None if a is None else torch.from_numpy(np.ascontiguousarray(a)).to(self.device, non_blocking=True)

    def _inputs(self, split: SeriesSplit, starts, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The model's inputs from normalised rows (B, n, F) starting at ``starts`` (n >= L + h with future
        columns): x (B, L, inputs [+ calendar]) and the horizon rows' known-future values (B, h, k), or None."""
        L, h = self.lookback, self.horizon
        x = rows[:, :L][:, :, self.input_idx]  # (B, L, inputs)
        if not self.num_future:
            return self._tensor(x), None
        future = rows[:, L:L + h][:, :, self.future_idx] if self.future_idx else np.zeros((len(rows), h, 0), np.float32)
        if self.calendar:
            if split.times is None:
                raise SeqfitError(f"the run reads --calendar features; {split.dir} has no time field: prepare it "
                                  "with --time-field")
            cal = calendar.features(calendar.window_seconds(split.times, split.offsets, starts, L + h),
                                    self.calendar)  # (B, L + h, 2 x parts)
            x = np.concatenate([x, cal[:, :L]], 2)
            future = np.concatenate([future, cal[:, L:]], 2)  # (B, h, k)
        return self._tensor(x), self._tensor(future)

    def _batch(self, split: SeriesSplit, starts) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        raw = window_rows(split, starts, self.lookback + self.horizon, normalize=False)  # (B, L + h, F)
        rows, _, _ = self.norm(split).apply(starts, raw, self.lookback)
        x, future = self._inputs(split, starts, rows)  # (B, L, inputs), (B, h, k) | None
        y = rows[:, self.lookback:][:, :, self.target_idx]  # (B, h, T)
        return x, future, self._tensor(y)

    def micro_batches(self, group: list[np.ndarray]) -> list:
        """(x, future, y, static (B, K) ids | None) per micro-batch."""
        return [(*self._batch(self.train_split, starts), self._static(self.train_split, starts)) for starts in group]

    def denominator(self, micro) -> int:
        return sum(m[2].numel() for m in micro)

    def _quantiles(self) -> torch.Tensor | None:
        return torch.tensor(self.quantiles, device=self.device) if self.quantiles else None

    def backward(self, model, micro, *, denom: int, precision, phase) -> dict[str, float]:
        x, future, y, static = micro
        with phase("forward"), precision.autocast():
            pred = model(x, future, static, y)  # (B, h, T, Q); y: teacher forcing (autoregressive decoder)
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
    def forecast_raw(self, model, split: SeriesSplit, starts, raw: np.ndarray, precision):
        """Forecasts of raw windows (B, >= L, F) starting at ``starts``: (normalised (B, h, T, Q) tensor, original
        units (B, h, T, Q), the normalised rows (B, n, F)), de-normalised with the statistics that normalised them.
        With future columns a window shorter than L + h (a series' end, at detect) repeats its last row's values."""
        if (short := self.lookback + self.future_rows - raw.shape[1]) > 0:
            raw = np.concatenate([raw, np.repeat(raw[:, -1:], short, 1)], 1)  # (B, L + h, F)
        rows, mean, scale = self.norm(split).apply(starts, raw, self.lookback)
        x, future = self._inputs(split, starts, rows)
        with precision.autocast():
            pred = model(x, future, self._static(split, starts)).float().cpu()
        t = self.target_idx
        return pred, pred.numpy() / scale[:, :, t, None] + mean[:, :, t, None], rows  # (B|1, 1, T, 1) broadcast

    @torch.no_grad()
    def _predict(self, model, split: SeriesSplit, starts: np.ndarray, precision, batch: int):
        """Yield (normalised forecasts (B, h, T, Q), the same in original units, raw rows (B, L + h, F), the rows
        normalised (B, L + h, F))."""
        was_training = model.training
        model.eval()
        try:
            for i in range(0, len(starts), batch):
                raw = window_rows(split, starts[i:i + batch], self.lookback + self.horizon, normalize=False)
                norm, pred, rows = self.forecast_raw(model, split, starts[i:i + batch], raw, precision)
                yield norm, pred, raw, rows
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
        span, B = self.lookback + self.horizon, self.plan["micro_batch"]
        if self.cfg.train.eval_batches:  # fixed, evenly spaced: at most --eval-batches batches
            index = self.valid.window_index(span)
            n = index.count
            starts = index.starts(np.unique(np.linspace(0, n - 1, min(n, self.cfg.train.eval_batches * B)).round()))
        else:  # a window every horizon rows of each series, as the backtest: every row forecast once
            starts = self.valid.window_index(span, self.horizon).all_starts()
        loss, abs_err, count = 0.0, 0.0, 0
        q = self._quantiles()
        q = None if q is None else q.cpu()
        for norm, pred, raw, rows in self._predict(model, self.valid, starts, precision, B):
            y = raw[:, self.lookback:][:, :, self.target_idx]  # (B, h, T) original units
            y_n = torch.from_numpy(np.ascontiguousarray(rows[:, self.lookback:][:, :, self.target_idx]))
            loss += forecast_loss(norm, y_n, self.plan["loss"], q).item()
            abs_err += float(np.abs(self._point(pred) - y).sum())
            count += y.size
        return {"loss": loss / count, "mae": abs_err / count, "windows": int(len(starts))}

    def describe_valid(self, result: dict) -> str:
        return f"valid loss {result['loss']:.4f} MAE {result['mae']:.4g}"

    def evaluate_split(self, model, split: str, precision, *, batch_size: int = 0, warn=None) -> tuple[dict, str]:
        """`seqfit evaluate`: the rolling-origin backtest of ``split`` (see backtest)."""
        part = self.store.split(split)
        if part.window_index(self.lookback + self.horizon).count == 0:
            raise SeqfitError(f"the {split} split has {len(part)} rows, fewer than --lookback + --horizon = "
                              f"{self.lookback + self.horizon}" + (" in each series" if part.num_series > 1 else "")
                              + ": nothing to backtest")
        result = backtest(self, model, part, precision, batch=batch_size or self.plan["micro_batch"])
        b = result["baselines"]
        mase = lambda r: "n/a" if r["mase"] is None else f"{r['mase']:.3f}"
        interval = (f", {result['interval'][0]:g}-{result['interval'][1]:g} interval covers {result['coverage']:.1%}, "
                    f"pinball {result['pinball']:.4g}" if "coverage" in result else "")
        many = ""
        if part.num_series > 1:
            pooled = "n/a" if result["mase_pooled"] is None else f"{result['mase_pooled']:.3f}"
            many = (f"; MASE is the mean over {result['mase_series']:,} series (pooled {pooled})"
                    + (f", {result['mase_skipped']:,} series without a seasonal-naive scale (constant in train, "
                       "or not in it) left out" if result["mase_skipped"] else ""))
        return result, (f"MAE {result['mae']:.4g}, RMSE {result['rmse']:.4g}, sMAPE {result['smape']:.2f}%, "
                        f"MASE {mase(result)} (naive {mase(b['naive'])}, seasonal naive {mase(b['seasonal_naive'])})"
                        f"{interval} over {result['origins']:,} origins{many}")

    def summary(self, last_valid: dict | None) -> dict:
        return {"valid_loss": last_valid and last_valid["loss"], "valid_mae": last_valid and last_valid["mae"],
                "valid_ppl": None}


def backtest(task: ForecastTask, model, split: SeriesSplit, precision, *, batch: int) -> dict:
    """Rolling origin over ``split``: origins every horizon rows of each series (windows starting at its rows 0,
    h, 2h, ...); the model and the naive / seasonal-naive forecasts on the same windows, in original units. sMAPE is in
    percent (0-200); MASE divides each target's MAE by its train split seasonal-naive MAE, then averages
    over targets: ``mase`` is the mean over series of each series' own (its MAE over its train seasonal-naive
    MAE; seqfit.measure.forecast_metrics), ``mase_pooled`` one MAE over one scale of every series. A split of
    2..PER_SERIES_MAX series adds ``per_series``. Quantile models add the outer quantiles' interval coverage
    and the mean pinball loss."""
    L, h, tgt = task.lookback, task.horizon, task.target_idx
    m = max(1, task.cfg.train.season)
    starts = split.window_index(L + h, h).all_starts()
    of = split.series_of(starts)  # (N,) each origin's series
    scale, train_scale = seasonal_scales(task.train_split, tgt, m)  # (T,), (S_train, T)
    series_scale = np.full((split.num_series, len(tgt)), np.nan)  # a series the train split lacks has no scale
    at = split.positions_in(task.train_split)
    series_scale[at >= 0] = train_scale[at[at >= 0]]
    model_err, naive, seasonal = (SeriesErrors(len(tgt), split.num_series) for _ in range(3))
    qs = np.asarray(task.quantiles)
    covered, pinball, done = 0, 0.0, 0
    season_rows = L - m + np.arange(h) % m  # row of the lookback that step j of the horizon repeats
    for _, pred, raw, _ in task._predict(model, split, starts, precision, batch):
        y = raw[:, L:][:, :, tgt].astype(np.float64)  # (B, h, T)
        past = raw[:, :L][:, :, tgt].astype(np.float64)  # (B, L, T)
        who, done = of[done:done + len(y)], done + len(y)
        model_err.add(task._point(pred).astype(np.float64), y, who)
        naive.add(np.repeat(past[:, -1:], h, axis=1), y, who)
        seasonal.add(past[:, season_rows], y, who)
        if len(qs):
            covered += int(((pred[..., 0] <= y) & (y <= pred[..., -1])).sum())
            err = y[..., None] - pred
            pinball += float(np.maximum(qs * err, (qs - 1) * err).mean(-1).sum())
    result = {**model_err.result(scale, series_scale), "origins": int(len(starts)),
              "points": model_err.count * len(tgt), "season": m,
              "baselines": {"naive": naive.result(scale, series_scale),
                            "seasonal_naive": seasonal.result(scale, series_scale)}}
    if 1 < split.num_series <= PER_SERIES_MAX:
        own = {k: e.series_mase(series_scale) for k, e in
               (("mase", model_err), ("naive_mase", naive), ("seasonal_naive_mase", seasonal))}
        result["per_series"] = [
            {"series": name, "origins": int(model_err.series_count[i] // h),
             "mae": float((model_err.series_abs[i] / max(1, model_err.series_count[i])).mean()),
             **{k: (float(v[i]) if np.isfinite(v[i]) else None) for k, v in own.items()}}
            for i, name in enumerate(split.names)]
    if len(qs):
        result |= {"coverage": covered / max(1, result["points"]), "interval": [float(qs[0]), float(qs[-1])],
                   "pinball": pinball / max(1, result["points"])}
    return result
