"""The public Python API: drop-in recurrent modules against torch.nn's, seqfit.plan against `seqfit plan --json`,
and the README's example run as written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import seqfit
from seqfit.errors import SeqfitError

README = Path(__file__).resolve().parent.parent / "README.md"
TORCH = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
OURS = {"lstm": seqfit.nn.LSTM, "gru": seqfit.nn.GRU, "rnn": seqfit.nn.RNN}
LENGTHS = torch.tensor([13, 9, 1, 13, 4])


def pair(cell: str, *, checkpoint_time: int = 0, **kwargs):
    torch.manual_seed(0)
    ref = TORCH[cell](6, 7, **kwargs)
    ours = OURS[cell](6, 7, checkpoint_time=checkpoint_time, **kwargs)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def run(module, x, hx, lengths=None, packed=False):
    """Outputs (zero at padding), final state, and gradients of a fixed function of both."""
    x = x.clone().requires_grad_(True)
    batch_first = module.batch_first
    if packed:
        seq = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
        out, state = module(seq, hx)
        out, _ = pad_packed_sequence(out, batch_first=batch_first, total_length=x.shape[1 if batch_first else 0])
    elif lengths is not None:
        out, state = module(x, hx, lengths=lengths)
    else:
        out, state = module(x, hx)
    states = state if isinstance(state, tuple) else (state,)
    weights = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
    loss = (out * weights).sum() + sum((s * (i + 2)).sum() for i, s in enumerate(states))
    module.zero_grad()
    loss.backward()
    grads = {name: p.grad.clone() for name, p in module.named_parameters()}
    return out.detach(), [s.detach() for s in states], x.grad, grads


def assert_same(a, b):
    out_a, states_a, gx_a, grads_a = a
    out_b, states_b, gx_b, grads_b = b
    torch.testing.assert_close(out_b, out_a, rtol=1e-5, atol=1e-6)
    for s, t in zip(states_a, states_b):
        torch.testing.assert_close(t, s, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gx_b, gx_a, rtol=1e-4, atol=1e-5)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
def test_drop_in_equals_torch_with_checkpointing_and_with_lengths(cell, bidirectional, batch_first):
    ref, ours = pair(cell, num_layers=2, bidirectional=bidirectional, batch_first=batch_first, checkpoint_time=4)
    assert list(ours.state_dict()) == list(ref.state_dict())
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 13, 6, generator=g) if batch_first else torch.randn(13, 5, 6, generator=g)
    d = 4 if bidirectional else 2
    h0 = torch.randn(d, 5, 7, generator=g)
    hx = (h0, torch.randn(d, 5, 7, generator=g)) if cell == "lstm" else h0
    # exact time-chunked checkpointing: the full sequence
    assert_same(run(ref, x, hx), run(ours, x, hx))
    # variable lengths against torch's packed sequences, with and without checkpointing
    assert_same(run(ref, x, hx, LENGTHS, packed=True), run(ours, x, hx, LENGTHS))
    ours.checkpoint_time = 0
    assert_same(run(ref, x, hx, LENGTHS, packed=True), run(ours, x, hx, LENGTHS))


def test_drop_in_without_extras_is_torchs_own_call_and_takes_packed_input():
    ref, ours = pair("lstm", num_layers=2, dropout=0.0)
    x = torch.randn(9, 3, 6)
    assert_same(run(ref, x, None), run(ours, x, None))
    assert_same(run(ref, x, None, torch.tensor([9, 5, 2]), packed=True),
                run(ours, x, None, torch.tensor([9, 5, 2]), packed=True))


def test_drop_in_unbatched_input_and_bad_lengths():
    ref, ours = pair("gru", checkpoint_time=2)
    x = torch.randn(7, 6)  # (T, I), no batch
    assert_same(run(ref, x, None), run(ours, x, None))
    with pytest.raises(ValueError, match="lengths must hold one value"):
        ours(torch.randn(7, 3, 6), lengths=torch.tensor([8, 1, 1]))
    with pytest.raises(ValueError, match="checkpoint_time"):
        seqfit.nn.LSTM(3, 3, checkpoint_time=-2)


def test_chunked_cross_entropy_module_equals_full_logits():
    torch.manual_seed(0)
    head = nn.Linear(8, 50)
    h, y = torch.randn(2, 11, 8), torch.randint(0, 50, (2, 11))
    y[0, :3] = -100  # padding
    full = nn.functional.cross_entropy(head(h).reshape(-1, 50), y.reshape(-1))
    chunked = seqfit.nn.ChunkedCrossEntropy(chunk_tokens=4)(h, head.weight, head.bias, y)
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-6)


def test_plan_equals_the_plan_command(cli, data_dir):
    args = {"layers": 1, "hidden": 64, "embed": 32, "batch_size": 16, "bptt": 20, "budget": "700MB"}
    flags = [x for k, v in args.items() for x in (f"--{k.replace('_', '-')}", v)]
    code, out, err = cli("plan", data_dir, *flags, "--no-calibrate", "--json")
    assert code == 0, err
    assert seqfit.plan(data_dir, calibrate=False, **args) == json.loads(out)
    estimate = seqfit.estimate(data_dir, calibrate=False, **{k: v for k, v in args.items() if k != "budget"})
    assert estimate["predicted_peak_bytes"] > 0 and not estimate["alternatives"]


def test_api_options_are_checked_like_flags(data_dir, tmp_path):
    with pytest.raises(SeqfitError, match="unknown option 'hiden'"):
        seqfit.plan(data_dir, hiden=3)
    with pytest.raises(SeqfitError, match="hidden must be >= 1"):
        seqfit.train(data_dir, tmp_path / "run", hidden=-3)
    assert not (tmp_path / "run").exists()
    with pytest.raises(SeqfitError, match="unknown prepare option"):
        seqfit.prepare("x.txt", out=tmp_path / "d", levle="char")


def test_readme_example_runs_as_written(tmp_path, monkeypatch):
    text = README.read_text()
    section = text[text.index("## Python API"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SEQFIT_CACHE_DIR", str(tmp_path / "cache"))
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["summary"]["step"] == 20 and namespace["summary"]["valid_ppl"] is not None
    assert namespace["out"].shape == (8, 200, 64)
    assert namespace["report"]["predicted_peak_bytes"] <= 1e9
