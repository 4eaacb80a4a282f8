import numpy as np
import pytest

from seqfit.data.buckets import TokenBudgetSampler, padding_waste


def _lengths(n=1000, seed=0):
    return np.clip(np.random.default_rng(seed).lognormal(3, 0.9, n), 1, 200).astype(np.int64)


@pytest.mark.parametrize("max_tokens,batch_size", [(512, 0), (300, 0), (0, 16), (1024, 8)])
def test_every_sample_once_and_every_batch_within_budget(max_tokens, batch_size):
    lengths = _lengths()
    sampler = TokenBudgetSampler(lengths, max_tokens, batch_size=batch_size, seed=3)
    for epoch in range(2):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        seen = np.concatenate(batches)
        assert np.array_equal(np.sort(seen), np.arange(len(lengths)))  # each sample exactly once
        for b in batches:
            if max_tokens:
                assert len(b) * lengths[b].max() <= max_tokens or len(b) == 1  # padded B x T under the budget
            if batch_size:
                assert len(b) <= batch_size
        assert len(sampler) == len(batches)


def test_overlong_sequence_gets_a_batch_of_its_own():
    lengths = np.array([5, 5, 500, 5])
    batches = list(TokenBudgetSampler(lengths, 100, seed=0))
    assert [2] in batches and sorted(np.concatenate(batches).tolist()) == [0, 1, 2, 3]


def test_epochs_differ_and_are_reproducible():
    lengths = _lengths(300)
    a, b = TokenBudgetSampler(lengths, 256, seed=1), TokenBudgetSampler(lengths, 256, seed=1)
    first = list(a)
    assert first == list(b)
    assert list(a) == first  # same epoch, same batches
    a.set_epoch(1)
    second = list(a)
    assert second != first
    c = TokenBudgetSampler(lengths, 256, seed=1)
    c.set_epoch(1)
    assert list(c) == second


def test_resume_mid_epoch_yields_the_rest():
    lengths = _lengths(400)
    sampler = TokenBudgetSampler(lengths, 256, seed=5)
    it = iter(sampler)
    head = [next(it) for _ in range(7)]
    state = sampler.state_dict()
    fresh = TokenBudgetSampler(lengths, 256, seed=0)
    fresh.load_state_dict(state)
    rest = list(fresh)
    full = [b.tolist() for b in TokenBudgetSampler(lengths, 256, seed=5).batches()]
    assert head + rest == full


def test_bucketing_cuts_padding_against_random_batches():
    lengths = _lengths(2000)
    sampler = TokenBudgetSampler(lengths, 32 * int(lengths.mean()), seed=0)
    perm = np.random.default_rng(0).permutation(len(lengths))
    random_batches = [perm[i:i + 32] for i in range(0, len(perm), 32)]
    waste = sampler.padding_waste()
    assert waste < padding_waste(lengths, random_batches) / 3
    # the reported waste is 1 - real / padded, recomputed here independently
    batches = sampler.batches()
    padded = sum(len(b) * lengths[b].max() for b in batches)
    assert waste == pytest.approx(1 - lengths.sum() / padded)


def test_no_shuffle_is_sorted_by_length():
    lengths = _lengths(100)
    order = np.concatenate(list(TokenBudgetSampler(lengths, batch_size=10, shuffle=False)))
    assert np.all(np.diff(lengths[order]) >= 0)
