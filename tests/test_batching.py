import numpy as np
import pytest
import torch

from seqfit.data.batching import StreamBatches
from seqfit.data.store import TokenArray


def reference_batches(data: torch.Tensor, bsz: int, bptt: int):
    """The classic word_language_model layout: batchify to (L, B), then slice rows (independent of seqfit)."""
    nbatch = data.size(0) // bsz
    columns = data[: nbatch * bsz].view(bsz, -1).t().contiguous()  # (L, B)
    for i in range(0, columns.size(0) - 1, bptt):
        seq_len = min(bptt, len(columns) - 1 - i)
        yield columns[i:i + seq_len].t(), columns[i + 1:i + 1 + seq_len].t()  # as (B, t)


@pytest.mark.parametrize("n,bsz,bptt", [(1000, 4, 7), (1001, 5, 35), (97, 3, 10), (60, 2, 29)])
def test_layout_equals_reference(n, bsz, bptt):
    data = np.random.default_rng(0).integers(0, 500, n).astype(np.uint16)
    ours = StreamBatches(TokenArray([data]), bsz, bptt)
    theirs = list(reference_batches(torch.from_numpy(data.astype(np.int64)), bsz, bptt))
    assert len(ours) == len(theirs)
    for (x, y), (rx, ry) in zip(ours, theirs):
        assert torch.equal(x, rx) and torch.equal(y, ry)
        assert x.dtype == torch.int64


def test_layout_across_shards_equals_single_array():
    data = np.arange(500, dtype=np.uint16)
    whole = StreamBatches(TokenArray([data]), 4, 9)
    split = StreamBatches(TokenArray([data[:123], data[123:300], data[300:]]), 4, 9)
    for (x, y), (sx, sy) in zip(whole, split):
        assert torch.equal(x, sx) and torch.equal(y, sy)
