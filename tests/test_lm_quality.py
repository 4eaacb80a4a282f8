"""A language model's reported quality is a property of the model and the split, not of how it was trained."""

from __future__ import annotations

import json

import pytest

from seqfit.engine.evaluate import EVAL_STREAMS


def test_valid_perplexity_does_not_depend_on_the_micro_batch(cli, data_dir, tmp_path):
    """The same recipe as one batch of 8 streams or as 2 accumulated micro-batches of 4 (same gradients):
    validation runs EVAL_STREAMS streams either way, so the perplexities agree (not 8 vs 4 streams)."""
    common = ["--layers", "1", "--hidden", "32", "--embed", "16", "--dropout", "0", "--bptt", "10", "--lr", "0.01",
              "--optimizer", "adam", "--max-steps", "12", "--json"]
    code, out, err = cli("train", data_dir, "--out", tmp_path / "one", "--batch-size", "8", *common)
    assert code == 0, err
    one = json.loads(out)
    code, out, err = cli("train", data_dir, "--out", tmp_path / "two", "--batch-size", "4", "--accumulate", "2", *common)
    assert code == 0, err
    two = json.loads(out)
    assert (one["plan"]["micro_batch"], two["plan"]["micro_batch"]) == (8, 4)
    assert two["valid_ppl"] == pytest.approx(one["valid_ppl"], rel=1e-4)
    records = [json.loads(l) for l in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["streams"] == EVAL_STREAMS for r in records if r["kind"] == "valid")


def test_stream_resets_are_drawn_from_seed_and_step_alone():
    import torch

    from seqfit.nn.state import reset_streams

    state = [(torch.ones(1, 400, 3), torch.ones(1, 400, 3)), (torch.ones(1, 400, 3), torch.ones(1, 400, 3))]
    before = torch.get_rng_state()
    a = reset_streams(state, 0.1, seed=7, step=3)
    assert torch.equal(torch.get_rng_state(), before)  # dropout's RNG untouched
    b = reset_streams(state, 0.1, seed=7, step=3)
    c = reset_streams(state, 0.1, seed=7, step=4)
    zeroed = (a[0][0][0, :, 0] == 0)
    assert torch.equal(zeroed, b[0][0][0, :, 0] == 0) and not torch.equal(zeroed, c[0][0][0, :, 0] == 0)
    assert 20 <= int(zeroed.sum()) <= 60  # about 10% of 400 streams
    for layer in a:  # a stream restarts in every layer and both of an LSTM's tensors at once
        for t in layer:
            assert torch.equal(t[0, :, 0] == 0, zeroed)
    assert reset_streams(state, 0.0, seed=7, step=3) is state


def test_output_bias_starts_at_the_unigram():
    import torch

    from seqfit.models.heads import make_output_head

    counts = [0, 5, 100, 1000, 10]
    head = make_output_head("chunked", 4, 5, counts=counts)
    probs = torch.softmax(head.bias.detach(), 0)
    expected = torch.tensor([c + 1.0 for c in counts]) / sum(c + 1.0 for c in counts)
    torch.testing.assert_close(probs, expected)
    assert torch.equal(make_output_head("full", 4, 5).bias.detach(), torch.zeros(5))


def unigram_entropy(counts: list[int]) -> float:
    import math

    total = sum(counts)
    return -sum(c / total * math.log(c / total) for c in counts if c)


def test_demo_recipe_scaled_down_learns_from_a_zero_state_and_samples_common_symbols(cli, tmp_path):
    """The `make run` recipe (examples/demo.toml) on the json package's source, smaller and shorter: validation,
    from zero states, beats the unigram, and a sample is made of the corpus's common symbols."""
    import json as json_module
    from pathlib import Path

    source = Path(json_module.__file__).parent
    code, _, err = cli("prepare", source, "--pattern", "*.py", "--level", "char", "--valid-fraction", "0.1",
                       "--out", tmp_path / "data")
    assert code == 0, err
    demo = Path(__file__).resolve().parent.parent / "examples" / "demo.toml"
    code, out, err = cli("train", tmp_path / "data", "--out", tmp_path / "run", "--config", demo, "--hidden", "96",
                         "--embed", "32", "--batch-size", "16", "--bptt", "64", "--max-steps", "200",
                         "--eval-every", "0", "--json")
    assert code == 0, err
    counts = json.loads((tmp_path / "data" / "vocab.json").read_text())["counts"]
    entropy = unigram_entropy(counts)
    assert json.loads(out)["valid_loss"] < entropy - 0.2, (json.loads(out)["valid_loss"], entropy)
    code, out, err = cli("evaluate", tmp_path / "run", "--batch-size", "1", "--json")  # one stream, one zero start
    assert code == 0, err
    assert json.loads(out)["loss"] < entropy - 0.2

    code, out, err = cli("generate", tmp_path / "run", "--prompt", "def ", "--tokens", "400", "--temperature", "0.7",
                         "--seed", "1", "--json")
    assert code == 0, err
    sample = json.loads(out)["text"][len("def "):]
    assert "<pad>" not in sample and "<unk>" not in sample
    vocab = json.loads((tmp_path / "data" / "vocab.json").read_text())
    share = {tok: c / sum(counts) for tok, c in zip(vocab["tokens"], counts)}
    common = sum(share.get(ch, 0.0) >= 0.002 or ch == "\n" for ch in sample) / len(sample)
    assert common >= 0.95, sample


def test_stream_resets_of_a_rank_are_its_block_of_one_process_draws():
    import torch

    from seqfit.nn.state import reset_streams

    whole = reset_streams([torch.ones(1, 400, 2)], 0.2, seed=3, step=9)[0]
    parts = [reset_streams([torch.ones(1, 100, 2)], 0.2, seed=3, step=9, shard=(r, 4))[0] for r in range(4)]
    assert torch.equal(torch.cat(parts, 1), whole)
