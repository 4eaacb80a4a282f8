"""AWD-LSTM regularisers (issue 19, part): locked dropout, embedding dropout, AR/TAR; off by default and exact when off."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from seqfit.config import ModelCfg
from seqfit.models.lm import LanguageModel
from seqfit.nn.recurrent import RecurrentStack
from seqfit.nn.regularisers import LockedDropout, activation_regularisation, embedding_dropout, new_batch


def assert_same_gradients(plain: LanguageModel, chunked: LanguageModel, x: torch.Tensor, *, seed: int) -> None:
    """Both models' gradients of the same loss, with the same random masks drawn, agree."""
    grads = []
    for model in (plain, chunked):
        torch.manual_seed(seed)
        model(x)[0].pow(2).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_off_by_default():
    model = LanguageModel(ModelCfg(), 50)
    assert not any(isinstance(m, LockedDropout) for m in model.modules())
    assert model.embed_dropout == 0.0
    # (the engine's fixed-seed reference, tests/test_engine_equivalence.py, proves the default numbers unchanged)


def test_locked_dropout_keeps_one_mask_across_time_and_chunks():
    drop = LockedDropout(0.5).train()
    x = torch.ones(4, 30, 8)
    a, b = drop(x[:, :10]), drop(x[:, 10:])  # two chunks of one batch
    out = torch.cat([a, b], 1)
    zero = out == 0  # (B, T, D)
    assert zero.any() and not zero.all()
    assert torch.equal(zero, zero[:, :1].expand_as(zero))  # the same units dropped at every step
    drop.new_batch()
    assert not torch.equal(drop(x) == 0, zero)  # a new batch, a new mask
    assert torch.equal(drop.eval()(x), x)


def test_locked_dropout_with_exact_checkpointing_has_the_plain_gradients():
    torch.manual_seed(0)
    cfg = ModelCfg(layers=3, hidden=12, embed=12, dropout=0.3, locked_dropout=True)
    plain = LanguageModel(cfg, 40)
    chunked = copy.deepcopy(plain)
    chunked.checkpoint_time = 4
    x = torch.randint(0, 40, (3, 17))
    assert_same_gradients(plain, chunked, x, seed=5)


@pytest.mark.parametrize("cell, bidirectional", [("lstm", False), ("gru", True)])
def test_weight_drop_is_one_mask_per_batch_over_every_step(cell, bidirectional):
    torch.manual_seed(0)
    stack = RecurrentStack(cell, 5, 6, 1, bidirectional=bidirectional, weight_drop=0.5).train()
    x = torch.randn(3, 12, 5)
    out, _ = stack(x)
    masks = stack._weight_masks[0]
    assert set(masks) == ({"weight_hh_l0", "weight_hh_l0_reverse"} if bidirectional else {"weight_hh_l0"})
    reference = copy.deepcopy(stack.layers[0])
    with torch.no_grad():
        for name, mask in masks.items():
            getattr(reference, name).mul_(mask)  # the dropped weights at every step of the sequence
    torch.testing.assert_close(out, reference(x)[0], rtol=1e-5, atol=1e-6)
    again, _ = stack(x)
    torch.testing.assert_close(again, out)  # the same batch (no new_batch): the same mask
    new_batch(nn.Sequential(stack))
    assert not torch.equal(stack(x)[0], out)  # a new batch: a new mask
    stack.eval()
    torch.testing.assert_close(stack(x)[0], stack.layers[0](x)[0])  # none at evaluation


def test_weight_drop_with_exact_checkpointing_has_the_plain_gradients():
    torch.manual_seed(0)
    cfg = ModelCfg(layers=2, hidden=10, embed=8, dropout=0.0, weight_drop=0.4)
    plain = LanguageModel(cfg, 30)
    chunked = copy.deepcopy(plain)
    chunked.checkpoint_time = 5
    x = torch.randint(0, 30, (2, 23))
    assert_same_gradients(plain, chunked, x, seed=7)


def test_embedding_dropout_drops_whole_words():
    torch.manual_seed(1)
    emb = nn.Embedding(6, 4)
    ids = torch.tensor([[1, 2, 1, 3, 1, 2, 4, 5, 3, 1]])
    out = embedding_dropout(emb, ids, 0.5, training=True)[0]  # (T, E)
    for token in ids.unique():
        rows = out[ids[0] == token]
        dropped = (rows == 0).all(1)
        assert dropped.all() or not dropped.any()  # every occurrence of a word shares its fate
        if not dropped.any():
            torch.testing.assert_close(rows, emb.weight[token].expand_as(rows) * 2)
    assert torch.equal(embedding_dropout(emb, ids, 0.5, training=False), emb(ids))


def test_activation_regularisation_equals_its_formula():
    dropped = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4) / 10
    raw = torch.linspace(-1, 1, 24).reshape(2, 3, 4)
    expected = 2.0 * (dropped ** 2).mean() + 3.0 * ((raw[:, 1:] - raw[:, :-1]) ** 2).mean()
    torch.testing.assert_close(activation_regularisation(dropped, raw, 2.0, 3.0), expected)
    assert activation_regularisation(dropped, raw, 0.0, 0.0) == 0


@pytest.mark.parametrize("flags", [["--ar", "2"], ["--tar", "1"], ["--locked-dropout", "--embed-dropout", "0.1"],
                                   ["--weight-drop", "0.3", "--checkpoint-time", "3"], ["--variable-bptt"]])
def test_regularisers_train_through_the_engine_and_resume_exactly(cli, data_dir, tmp_path, flags):
    plain = ["--layers", "2", "--hidden", "16", "--embed", "16", "--batch-size", "4", "--bptt", "8", "--dropout", "0.2",
             "--optimizer", "adam", "--lr", "0.01", "--log-every", "1", "--checkpoint-every", "100"]
    common = [*plain, *flags]
    code, _, err = cli("train", data_dir, "--out", tmp_path / "a", *common, "--max-steps", "8")
    assert code == 0, err
    code, _, err = cli("train", data_dir, "--out", tmp_path / "b", *common, "--max-steps", "4")
    assert code == 0, err
    code, _, err = cli("train", data_dir, "--out", tmp_path / "b", "--resume", "--max-steps", "8")
    assert code == 0, err
    a = (tmp_path / "a" / "checkpoint" / "model.safetensors").read_bytes()
    assert a == (tmp_path / "b" / "checkpoint" / "model.safetensors").read_bytes()
    code, _, err = cli("train", data_dir, "--out", tmp_path / "plain", *plain, "--max-steps", "8")
    assert code == 0, err
    assert a != (tmp_path / "plain" / "checkpoint" / "model.safetensors").read_bytes()  # the regulariser acted


def test_variable_windows_cover_the_streams_around_bptt(data_dir):
    import numpy as np

    from seqfit.data.batching import StreamBatches
    from seqfit.data.store import TokenStore

    batches = StreamBatches(TokenStore(data_dir).split("train"), 2, 20)
    windows = batches.random_windows(np.random.default_rng([1111, 0]))
    assert windows == batches.random_windows(np.random.default_rng([1111, 0]))  # (seed, epoch) alone decide
    assert windows != batches.random_windows(np.random.default_rng([1111, 1]))
    positions = [p for p, _ in windows]
    lengths = [t for _, t in windows]
    assert positions == list(np.cumsum([0] + lengths[:-1]))  # consecutive, no gap, no overlap
    assert sum(lengths) == batches.stream_len - 1 and max(lengths) <= 20 and min(lengths[:-1]) >= 5
    assert len(set(lengths)) > 3  # they vary
    x, y = batches.window(*windows[1])
    assert x.shape == (2, lengths[1]) and torch.equal(x[:, 1:], y[:, :-1])


def test_nt_asgd_triggers_on_the_non_monotone_criterion_and_averages():
    from seqfit.engine.averaging import WeightAverage

    model = nn.Linear(2, 1, bias=False)
    avg = WeightAverage(model, enabled=True, nonmono=2)
    triggered = [avg.on_validation(v) for v in (5.0, 4.0, 3.0, 3.5)]
    assert triggered == [False] * 4  # 3.5 is not worse than the best before the last two (4.0)
    with torch.no_grad():
        model.weight.fill_(1.0)
    assert avg.on_validation(3.6)  # worse than 3.0, the best before the last two
    seen = [model.weight.detach().clone()]
    for value in (2.0, 4.0, 7.0):
        with torch.no_grad():
            model.weight.fill_(value)
        avg.step()
        seen.append(model.weight.detach().clone())
    mean = torch.stack(seen).mean(0)
    with avg.swapped():
        torch.testing.assert_close(model.weight, mean)
    torch.testing.assert_close(model.weight, torch.full((1, 2), 7.0))  # the raw weights are back
    assert not WeightAverage(model, enabled=False, nonmono=1).on_validation(9.0)


@pytest.mark.parametrize("power", [0.0, 1.0, 3.0])
def test_polynomial_averaging_weighs_each_step_as_its_closed_form(power):
    import math

    from seqfit.engine.averaging import WeightAverage

    model = nn.Linear(3, 2, bias=False)
    avg = WeightAverage(model, enabled=True, nonmono=1, mode="poly", power=power)
    assert not avg.on_validation(1.0) and not avg.on_validation(9.0)  # no trigger: it runs from the first step
    steps = [torch.randn(2, 3) for _ in range(12)]
    for w in steps:
        with torch.no_grad():
            model.weight.copy_(w)
        avg.step()
    t = len(steps)
    # Unrolled recurrence: step s weighs (p+1) * s(s+1)...(s+p-1) / (t(t+1)...(t+p)) for integer p.
    weights = [(power + 1) * math.prod(range(s, s + int(power))) / math.prod(range(t, t + int(power) + 1))
               for s in range(1, t + 1)]
    assert math.isclose(sum(weights), 1.0)
    expected = sum(w * x for w, x in zip(weights, steps))
    with avg.swapped():
        torch.testing.assert_close(model.weight, expected)
    torch.testing.assert_close(model.weight, steps[-1])
    if power == 0:
        torch.testing.assert_close(expected, torch.stack(steps).mean(0))
    else:
        assert weights[-1] > weights[0] * 10  # the early weights fade


@pytest.mark.parametrize("mode", ["nt", "poly"])
def test_weight_averaging_through_the_engine_evaluates_the_mean_and_resumes_exactly(mode, cli, data_dir, tmp_path,
                                                                                    monkeypatch):
    import json

    from safetensors.torch import load_file

    from seqfit.engine.averaging import WeightAverage

    real = WeightAverage.on_validation
    scripted = [3.0, 2.0, 2.5, 2.6, 2.7, 2.8, 2.9]  # the third epoch's validation is worse: averaging starts there
    monkeypatch.setattr(WeightAverage, "on_validation", lambda self, loss: real(self, scripted[len(self.history)]))

    common = ["--layers", "1", "--hidden", "16", "--embed", "16", "--batch-size", "20", "--bptt", "30", "--lr", "5",
              "--average", mode, "--nonmono", "1", "--log-every", "1", "--checkpoint-every", "100"]
    code, out, err = cli("train", data_dir, "--out", tmp_path / "a", *common, "--max-steps", "40")
    assert code == 0, err
    assert ("averaging the weights" in err) == (mode == "nt")
    state = json.loads((tmp_path / "a" / "checkpoint" / "state.json").read_text())
    assert "raw" in json.dumps(state)  # the raw weights travel in the state, the model file holds the mean
    code, _, err = cli("train", data_dir, "--out", tmp_path / "b", *common, "--max-steps", "25")
    assert code == 0, err
    code, _, err = cli("train", data_dir, "--out", tmp_path / "b", "--resume", "--max-steps", "40")
    assert code == 0, err
    a, b = load_file(str(tmp_path / "a" / "checkpoint" / "model.safetensors")), load_file(
        str(tmp_path / "b" / "checkpoint" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", ["awd-lstm.toml", "awd-lstm-small.toml"])
def test_awd_recipes_load(name):
    from pathlib import Path

    from seqfit.config import from_dict, load_toml

    cfg = from_dict(load_toml(Path(__file__).resolve().parent.parent / "examples" / name))
    assert cfg.model.weight_drop > 0 and cfg.model.locked_dropout and cfg.train.average == "nt"
    assert cfg.train.ar > 0 and cfg.train.tar > 0 and cfg.train.variable_bptt
