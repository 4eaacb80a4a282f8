"""The language-model task: token streams with the state carried across batches (truncated BPTT).

A batch of B streams is split into ``accumulate`` micro-batches of B / accumulate streams, each with
its own slice of the carried state; the loss is divided by the whole batch's target tokens. After each
step a few streams (--state-reset) restart from a zero state, where evaluation and generation start.
A data-parallel rank reads its own block of the streams (data/batching.py).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from seqfit.config import RunCfg
from seqfit.data.batching import StreamBatches
from seqfit.data.store import TokenStore
from seqfit.engine.distributed import Dist, unwrap
from seqfit.engine.evaluate import EVAL_STREAMS, evaluate_lm
from seqfit.memory.estimate import DataInfo
from seqfit.memory.requested import requested_plan
from seqfit.models.build import build_model, count_parameters
from seqfit.nn.regularisers import activation_regularisation
from seqfit.nn.state import State, detach_state, reset_streams

__all__ = ["LanguageModelTask", "slice_state", "cat_states"]


def slice_state(state: State, rows: slice) -> State:
    return [tuple(t[:, rows] for t in s) if isinstance(s, tuple) else s[:, rows] for s in state]


def cat_states(states: list[State]) -> State:
    """Join per-micro-batch states back along the batch dimension (dim 1 of (directions, B, H))."""
    joined = []
    for layer in zip(*states):
        if isinstance(layer[0], tuple):
            joined.append(tuple(torch.cat(parts, dim=1) for parts in zip(*layer)))
        else:
            joined.append(torch.cat(layer, dim=1))
    return joined


def _streams(n: int) -> str:
    return f"{n} stream" + ("s" if n != 1 else "")


class LanguageModelTask:
    name = "lm"

    def __init__(self, cfg: RunCfg, data_dir: Path, device: torch.device, dist: Dist = Dist()):
        self.cfg, self.device, self.dist = cfg, device, dist
        self.store = TokenStore(data_dir)
        self.plan = requested_plan(cfg, DataInfo(len(self.store.vocab)), device.type)
        self.state: State | None = None  # carried across batches; None: zeros at the next batch
        self._new_states: list[State] = []
        self.steps_done = 0  # draws the streams whose state restarts (reset_streams)
        self._windows: tuple[int, list] | None = None  # --variable-bptt: (epoch, its windows)

    @functools.cached_property
    def batches(self) -> StreamBatches:
        """This rank's training streams (built on first use: evaluating a run needs no train split)."""
        return StreamBatches(self.store.split("train"), self.plan["batch_size"], self.plan["bptt"],
                             shard=(self.dist.rank, self.dist.world))

    def check_data(self, warn) -> None:
        self.batches  # TokenStore checked the store on opening; too few tokens for the streams fail here

    def build_model(self):
        return build_model(self.cfg, self.store.vocab, loss_kind=self.plan["loss"])

    def describe(self, model) -> str:
        p = self.plan
        return (f"{p['device']} {p['precision']}, batch {p['micro_batch']} x {p['accumulate']} accumulated, "
                f"bptt {p['bptt']}, loss {p['loss']}, optimizer {p['optimizer']}, "
                f"{count_parameters(model):,} parameters")

    # -- data --
    def steps_per_epoch(self) -> int:
        return len(self.batches)

    def epoch_groups(self, epoch: int) -> Sequence[int] | list[tuple[int, int]]:
        """Batch numbers (fixed windows), or (position, length) windows drawn from (seed, epoch) alone."""
        if not self.cfg.train.variable_bptt:
            return range(len(self.batches))  # the same windows every epoch
        if self._windows is None or self._windows[0] != epoch:
            rng = np.random.default_rng([self.cfg.train.seed, epoch])
            self._windows = (epoch, self.batches.random_windows(rng))
        return self._windows[1]

    def probe_group(self, step: int) -> int:
        return step % len(self.batches)  # every batch is the same size

    def micro_batches(self, group) -> list[tuple[torch.Tensor, torch.Tensor, slice]]:
        x, y = self.batches.batch(group) if isinstance(group, int) else self.batches.window(*group)
        return self.split_streams(x, y)

    def split_streams(self, x: torch.Tensor, y: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, slice]]:
        """Inputs and targets (B, T) of one batch -> ``accumulate`` micro-batches of streams, on the device."""
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        accumulate = self.plan["accumulate"]
        if x.shape[0] % accumulate:
            raise ValueError(f"batch of {x.shape[0]} streams does not split into {accumulate} micro-batches")
        micro = x.shape[0] // accumulate
        rows = [slice(k * micro, (k + 1) * micro) for k in range(accumulate)]
        return [(x[r], y[r], r) for r in rows]

    def denominator(self, micro) -> int:
        if self.cfg.train.variable_bptt:  # as AWD-LSTM scales the learning rate by length / bptt
            return sum(y.shape[0] for _, y, _ in micro) * self.plan["bptt"]
        return sum(y.numel() for _, y, _ in micro)

    # -- one micro-batch --
    def backward(self, model, micro, *, denom: int, precision, phase) -> dict[str, float]:
        x, y, rows = micro
        if self.state is None:
            self.state = unwrap(model).init_state(self.plan["batch_size"], device=self.device)
        t = self.cfg.train
        with phase("forward"), precision.autocast():
            if t.ar or t.tar:
                feats, raw, s = model(x, slice_state(self.state, rows), with_raw=True)  # (b, T, H) each
            else:
                feats, s = model(x, slice_state(self.state, rows))  # (b, T, H); through DDP when there is one
        with phase("loss"), precision.autocast():
            loss = unwrap(model).head.loss(feats.reshape(-1, feats.shape[-1]), y.reshape(-1))
            # AR/TAR are means over the micro-batch: times its tokens, they weigh as in AWD-LSTM once divided by denom
            penalty = activation_regularisation(feats, raw, t.ar, t.tar) * y.numel() if t.ar or t.tar else 0.0
        with phase("backward"):
            precision.backward((loss + penalty) / denom)  # the logged loss leaves the penalty out
        self._new_states.append(detach_state(s))
        loss_sum = loss.item()
        del loss, feats  # frees this micro-batch's graph before the next one is built
        return {"loss_sum": loss_sum, "tokens": y.numel()}

    def end_step(self) -> None:
        states, self._new_states = self._new_states, []
        self.steps_done += 1
        t = self.cfg.train
        self.state = reset_streams(cat_states(states) if len(states) > 1 else states[0], t.state_reset, seed=t.seed,
                                   step=self.steps_done, shard=(self.dist.rank, self.dist.world))

    def start_epoch(self) -> None:
        self.state = None

    def state_dict(self) -> dict:
        return {"hidden": detach_state(self.state)}  # the engine's "step" (saved beside it) gives steps_done

    def load_state_dict(self, state: dict) -> None:
        self.steps_done = state.get("step", 0)
        hidden = state.get("hidden")
        self.state = None if hidden is None else [
            tuple(t.to(self.device) for t in s) if isinstance(s, tuple) else s.to(self.device) for s in hidden]

    # -- metrics --
    def train_metrics(self, stats: dict) -> dict:
        return {"loss": stats["loss_sum"] / stats["tokens"]}

    def validate(self, model, precision) -> dict | None:
        if not self.store.has_split("valid"):
            return None
        # EVAL_STREAMS streams, not the micro-batch: the same run under another plan reports the same perplexity
        return evaluate_lm(model, self.store.split("valid"), bptt=self.plan["bptt"], device=self.device,
                           precision=precision, max_batches=self.cfg.train.eval_batches)

    def describe_valid(self, result: dict) -> str:
        return f"valid loss {result['loss']:.3f} ppl {result['ppl']:.2f} ({_streams(result['streams'])})"

    def evaluate_split(self, model, split: str, precision, *, batch_size: int = 0, warn=None) -> tuple[dict, str]:
        """`seqfit evaluate`: perplexity on a split (``batch_size`` streams, default EVAL_STREAMS)."""
        result = evaluate_lm(model, self.store.split(split), batch_size=batch_size or EVAL_STREAMS,
                             bptt=self.plan["bptt"], device=self.device, precision=precision)
        return result, (f"loss {result['loss']:.4f}, perplexity {result['ppl']:.2f} over {result['tokens']:,} tokens "
                        f"({_streams(result['streams'])}, each from a zero state)")

    def summary(self, last_valid: dict | None) -> dict:
        return {"valid_loss": last_valid and last_valid["loss"], "valid_ppl": last_valid and last_valid["ppl"]}
