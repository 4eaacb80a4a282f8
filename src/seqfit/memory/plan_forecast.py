"""The planner for forecasters (--task forecast): requested plan, candidates and a small memory estimate.

A forecaster's step is small and regular: every window has the same length (--lookback), so the worst
batch is simply micro-batch x lookback. The candidates vary only what leaves the gradients unchanged:

    micro-batch      a divisor of the effective batch; the rest is accumulated
    checkpointing    exact time-chunked checkpointing every k steps (none, or about sqrt(lookback)),
                     unless --checkpoint-time is given

What the estimate counts (estimate_forecaster), and what it leaves out:

    weights, gradients, optimizer state   exact, from the parameter shapes (estimate.py's helpers)
    activations                           micro-batch x kept steps x the cell's per-token bytes (the same
                                          calibrated constants a classifier's unidirectional layer uses),
                                          plus the float32 windows and the tiny head
    data                                  the accumulated micro-batches' windows, (B, L, F) + (B, h, targets),
                                          and the window index: five int64 per series (offsets, lengths,
                                          window counts and firsts, the sampler's non-empty list); never
                                          anything per window or per row, so 2,000 series of 50,000 rows
                                          cost what one series does, plus 80 KB; --normalize series adds
                                          each series' statistics: float64 mean/std as stored and float32
                                          mean/scale as used, 24 bytes per series and column

It leaves out what a forecaster does not have (embeddings, vocabulary-sized logits) and does not model
the quantile head separately (B x horizon x targets x quantiles floats: negligible beside the RNN). Known-future
inputs (--future-covariates, --calendar) add k columns to every lookback row, and horizon x k inputs (and
weights) to the head: both counted.

Static categories (prepare --static-field) add an embedding table per column (cardinality x
models.forecaster.static_dim) and E = the embeddings' total width to every lookback row (the (B, L, E)
copy of the embeddings is counted with the window) and to the head's inputs. --decoder autoregressive
replaces the direct head by a decoder stack over the horizon (inputs targets + k, the encoder's layers and
hidden) and a per-step head (targets x quantiles, from H + E): in training it runs teacher-forced as one
fused call over the horizon, so its activations are the same per-token constants over horizon steps,
kept while the encoder's are kept (the encoder's state is its initial state).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

from seqfit.config import RunCfg
from seqfit.errors import SeqfitError
from seqfit.memory.batch_split import apply_batch_plan, split_effective_batch
from seqfit.memory.constants import DEFAULT_CONSTANTS, Constants
from seqfit.memory.estimate import F32, GATES, Replay, blas_buffers, chunk_len, dot, optimizer_scratch
from seqfit.memory.pool_plan import FORECASTER_POOL_SLACK, pool_slack, pools_chunk_buffers
from seqfit.memory.throughput import classifier_step_seconds

__all__ = ["ForecastInfo", "forecast_columns", "forecast_info_from_dir", "requested_forecast_plan",
           "forecast_candidates", "apply_forecast_plan", "describe_forecast_plan", "estimate_forecaster",
           "score_forecast_plan", "parse_quantiles", "forecaster_param_shapes"]

INDEX_BYTES_PER_SERIES = 5 * 8  # int64 offsets, lengths, window counts, window firsts, sampler's non-empty series
NORM_BYTES_PER_SERIES_COLUMN = 2 * 8 + 2 * 4  # --normalize series: (S, 2, F) float64 stored + (S, F) x 2 float32


@dataclass(frozen=True)
class ForecastInfo:
    """What the estimate needs to know about a series store and the columns a run reads."""

    num_inputs: int  # targets + covariates + future covariates + calendar features, per lookback row
    num_targets: int
    train_rows: int = 0
    series: int = 1  # series in the train split (a store prepared with --group-field holds many)
    vocab_size: int = 0  # none (api.plan reports it for every task)
    columns: int = 0  # the store's columns (per-series statistics cover every one; 0: num_inputs)
    num_future: int = 0  # future covariates + calendar features, per horizon row (the head reads horizon x these)
    static_sizes: tuple[int, ...] = ()  # categories of each static column the run embeds (prepare --static-field)


def _names(spec: str) -> list[str]:
    return [c.strip() for c in spec.split(",") if c.strip()]


def forecast_columns(cfg: RunCfg, columns: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(targets, covariates, future covariates) the config names among the store's ``columns``; one line when
    one is missing or named twice."""
    future = _names(cfg.model.future_covariates)
    targets = _names(cfg.model.target) or [c for c in columns if c not in future]
    covariates = _names(cfg.model.covariates)
    for kind, names in (("--target", targets), ("--covariates", covariates), ("--future-covariates", future)):
        missing = [c for c in names if c not in columns]
        if missing:
            raise SeqfitError(f"{kind}: column(s) {', '.join(map(repr, missing))} not in the data "
                              f"(it has: {', '.join(columns)})")
    if overlap := sorted(set(targets) & set(covariates)):
        raise SeqfitError(f"--covariates repeats target column(s) {', '.join(map(repr, overlap))}: "
                          "a target's past is an input already")
    if overlap := sorted(set(future) & (set(targets) | set(covariates))):
        raise SeqfitError(f"--future-covariates repeats column(s) {', '.join(map(repr, overlap))} of --target or "
                          "--covariates: a column is a target, a past covariate or a known-future one")
    if any(len(set(n)) != len(n) for n in (targets, covariates, future)):
        raise SeqfitError("--target, --covariates and --future-covariates must not name a column twice")
    return targets, covariates, future


def parse_quantiles(spec: str) -> list[float]:
    """"0.1,0.5,0.9" -> [0.1, 0.5, 0.9]: strictly increasing, each in (0, 1)."""
    try:
        qs = [float(v) for v in spec.split(",") if v.strip()]
    except ValueError:
        raise SeqfitError(f"--quantiles must be comma-separated numbers in (0, 1), got {spec!r}") from None
    if not qs or any(not 0 < q < 1 for q in qs) or any(b <= a for a, b in zip(qs, qs[1:])):
        raise SeqfitError(f"--quantiles must be increasing numbers in (0, 1), got {spec!r}")
    return qs


def forecast_info_from_dir(cfg: RunCfg, data_dir: str | Path) -> ForecastInfo:
    from seqfit.data.series import SeriesStore

    store = SeriesStore(data_dir)
    targets, covariates, future = forecast_columns(cfg, store.columns)
    train = store.meta["splits"].get("train", {})
    calendar = 0
    if cfg.model.calendar:
        from seqfit.data.calendar import choose_parts

        calendar = 2 * len(choose_parts(store.split("train").times if store.has_split("train") else None))
    k = len(future) + calendar
    static = tuple(len(store.static_vocab[c]) for c in store.static_fields) if cfg.model.static else ()
    return ForecastInfo(num_inputs=len(targets) + len(covariates) + k, num_targets=len(targets), num_future=k,
                        train_rows=train.get("rows", 0), series=int(train.get("series", 1)),
                        columns=len(store.columns), static_sizes=static)


def requested_forecast_plan(cfg: RunCfg, device: str) -> dict:
    """The plan the config asks for as it stands (no budget)."""
    mem, t, m = cfg.memory, cfg.train, cfg.model
    if t.bptt:
        raise SeqfitError("--bptt does not apply to forecasting (each window is backpropagated whole); "
                          "use --checkpoint-time for long --lookback windows")
    micro, accumulate = split_effective_batch(cfg)
    quantiles = parse_quantiles(m.quantiles) if m.forecast_loss == "quantile" else []
    mode = "exact" if mem.checkpoint_time else "full"
    return {"device": device, "precision": mem.precision, "micro_batch": micro, "max_tokens": 0,
            "accumulate": accumulate, "mode": mode, "buffer_pool": pools_chunk_buffers(device, mode), "bptt": 0,
            "checkpoint_time": mem.checkpoint_time, "optimizer": t.optimizer, "lookback": t.lookback,
            "horizon": m.horizon, "loss": m.forecast_loss, "quantiles": quantiles}


def forecast_candidates(cfg: RunCfg, data: ForecastInfo, device: str) -> list[dict]:
    base = requested_forecast_plan(cfg, device)
    eff = base["micro_batch"] * base["accumulate"]
    micros = sorted((d for d in range(1, eff + 1) if eff % d == 0), reverse=True)
    T = base["lookback"]
    ks = [base["checkpoint_time"]] if base["checkpoint_time"] else [0] + ([math.ceil(math.sqrt(T))] if T >= 4 else [])
    modes = {k: "exact" if k else "full" for k in ks}
    return [{**base, "micro_batch": b, "accumulate": eff // b, "checkpoint_time": k, "mode": modes[k],
             "buffer_pool": pools_chunk_buffers(device, modes[k])} for b in micros for k in ks]


apply_forecast_plan = apply_batch_plan  # micro-batch, accumulation and checkpointing: all the planner varies


def describe_forecast_plan(plan: dict) -> str:
    mode = f"checkpoint every {plan['checkpoint_time']} steps" if plan["mode"] == "exact" else "full BPTT"
    return (f"micro-batch {plan['micro_batch']} x {plan['accumulate']} accumulated, lookback {plan['lookback']}, "
            f"horizon {plan['horizon']}, {mode}, {plan['precision']}, {plan['optimizer']}")


def forecaster_param_shapes(cfg: RunCfg, data: ForecastInfo) -> list[tuple[int, ...]]:
    """Shapes of every parameter models.forecaster.Forecaster builds (all trainable)."""
    m = cfg.model
    g, H = GATES[m.cell], m.hidden
    quantiles = len(parse_quantiles(m.quantiles)) if m.forecast_loss == "quantile" else 1
    from seqfit.models.forecaster import static_dim

    E = static_width(data)
    shapes: list[tuple[int, ...]] = [(c, static_dim(c)) for c in data.static_sizes]

    def stack(inputs: int) -> None:
        for i in range(m.layers):
            shapes.extend([(g * H, inputs if i == 0 else H), (g * H, H), (g * H,), (g * H,)])
            if m.layer_norm:
                shapes.extend([(H,), (H,)])

    stack(data.num_inputs + E)
    if m.decoder == "autoregressive":
        stack(data.num_targets + data.num_future)
        outputs = data.num_targets * quantiles
        return shapes + [(outputs, H + E), (outputs,)]
    outputs = m.horizon * data.num_targets * quantiles
    return shapes + [(outputs, H + m.horizon * data.num_future + E), (outputs,)]


def static_width(data: ForecastInfo) -> int:
    """E: the static embeddings' total width (0 without static columns)."""
    from seqfit.models.forecaster import static_dim

    return sum(static_dim(c) for c in data.static_sizes)


def estimate_forecaster(cfg: RunCfg, data: ForecastInfo, plan: dict, consts: Constants = DEFAULT_CONSTANTS) -> dict:
    """Predicted peak bytes of one forecaster step (see the module docstring for what is counted)."""
    from seqfit.nn.optim import optimizer_state_bytes

    m = cfg.model
    b, T, acc = plan["micro_batch"], plan["lookback"], plan["accumulate"]
    k = min(T, chunk_len(plan["checkpoint_time"], T)) if plan["mode"] == "exact" else T
    shapes = forecaster_param_shapes(cfg, data)
    n = sum(math.prod(s) for s in shapes)
    sizes = {"weights": F32 * n, "gradients": F32 * n, "parameters": n,
             "optimizer_state": optimizer_state_bytes(cfg.train.optimizer, shapes, momentum=cfg.train.momentum)}
    coefs = consts.coefs(m.cell, plan["precision"])
    g, H, L, F = GATES[m.cell], m.hidden, m.layers, data.num_inputs
    F_in = F + static_width(data)  # the encoder's inputs: the columns and the static embeddings
    inputs = [F_in if i == 0 else H for i in range(L)]
    dec_inputs = [data.num_targets + data.num_future if i == 0 else H for i in range(L)]  # autoregressive

    def feats(i: int, steps: int, ins: list[int] = inputs) -> tuple[int, int, int, int]:  # calibrated features
        return (b * steps * H, b * steps * ins[i], b * H, g * H * (ins[i] + H))

    def keep(i: int, steps: int, ins: list[int] = inputs) -> int:
        """As estimate_classify's layer_keep (unidirectional): the kernel's state, plus the layer's output and
        its dropout between layers (oneDNN's LSTM keeps its output among its own buffers, GRU/RNN do not)."""
        out = 2 * F32 * b * steps * H if m.dropout and i < L - 1 else 0 if m.cell == "lstm" else F32 * b * steps * H
        return coefs.kept(feats(i, steps, ins), steps) + out

    window = F32 * b * (T * F + plan["horizon"] * (data.num_targets + data.num_future))
    index = INDEX_BYTES_PER_SERIES * (data.series + 1)  # data.window_index + data.window_sampler
    if cfg.train.normalize == "series":  # data.series_norm: the train split's per-series statistics
        index += NORM_BYTES_PER_SERIES_COLUMN * data.series * max(data.columns, data.num_inputs)
    runtime = consts.baseline + int(coefs.const) + blas_buffers(b * T, F_in, H, 1, g, "full", plan["device"], consts)
    r = Replay(baseline=runtime, weights=sizes["weights"], optimizer_state=sizes["optimizer_state"], data=acc * window + index)
    states = (math.ceil(T / k) + 1) * L * (2 if m.cell == "lstm" else 1) * F32 * b * H if k < T else 0
    chunk_keep = sum(keep(i, k) for i in range(L))
    kept = states + chunk_keep
    r.now["gradients"] = sizes["gradients"] if acc > 1 else 0
    fwd = max(dot(coefs.fwd, feats(i, k)) for i in range(L))
    rise = max(dot(coefs.rise, feats(i, k)) for i in range(L))
    if m.decoder == "autoregressive":  # teacher-forced decoder over the horizon, on top of the encoder's kept
        h = plan["horizon"]
        dec = sum(keep(i, h, dec_inputs) for i in range(L)) + F32 * b * h * (H + static_width(data))  # + head input
        fwd = max(fwd, dec + max(dot(coefs.fwd, feats(i, h, dec_inputs)) for i in range(L)))
        rise = max(rise, dec + max(dot(coefs.rise, feats(i, h, dec_inputs)) for i in range(L)))
    r.moment("forward", activations=kept + fwd)
    # with the buffer pool, freed chunk buffers stay in the heap between their uses (memory/pool_plan.py)
    held = pool_slack(chunk_keep + rise, FORECASTER_POOL_SLACK) if plan.get("buffer_pool") else 0
    r.moment("backward", activations=kept + rise, temporaries=held, gradients=0 if acc > 1 else sizes["gradients"])
    r.now.update(gradients=sizes["gradients"], activations=0,
                 temporaries=optimizer_scratch(cfg, plan["device"], {**sizes, "largest_parameter": F32 * max(map(math.prod, shapes))}))
    r.moment("optimizer")
    return {"peak": r.peak, "parts": r.parts, "phase": r.phase, "phases": r.phases, "sizes": sizes,
            "chunk_steps": k, "batch": (b, T, b * T)}


def score_forecast_plan(cfg: RunCfg, data: ForecastInfo, plan: dict, consts: Constants) -> dict:
    est = estimate_forecaster(cfg, data, plan, consts)
    b, T, real = est["batch"]
    seconds = classifier_step_seconds(dataclasses.replace(cfg.model, bidirectional=False), data.num_inputs, plan,
                                      (b, T, real), consts)
    return {**plan, "predicted_peak_bytes": est["peak"], "peak_phase": est["phase"],
            "predicted_tokens_per_s": plan["accumulate"] * real / seconds, "_parts": est["parts"]}
