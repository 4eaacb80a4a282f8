"""--time-field values spill to disk at prepare: the saved array equals what the whole list would give."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from seqfit.data import time_column
from seqfit.data.time_column import TimeSpill


def reference(values: list) -> np.ndarray:
    """The whole list at once (what prepare did before it streamed)."""
    def text(v) -> str:
        return v.isoformat() if hasattr(v, "isoformat") else ("" if v is None else str(v))

    try:
        nums = np.array([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        return np.array([text(v) for v in values], dtype=str)
    if len(nums) and np.isfinite(nums).all() and (nums == np.round(nums)).all() and np.abs(nums).max() < 2 ** 53:
        return nums.astype(np.int64)
    return nums


CASES = {
    "ints": [list(range(0, 50, 2)), [7, 9]],
    "floats": [[0.5, 1.0], [1.25, float("nan")]],
    "big ints": [[1, 2], [2 ** 60]],  # beyond float64's exact integers: float64, as before
    "numbers then text": [[1, 2, 3], ["2024-01-01", "2024-01-02"]],
    "dates": [[dt.date(2024, 1, 1), dt.datetime(2024, 1, 1, 12, 30)], [None, "x\ny"]],
    "numeric strings": [["1", "2"], ["3.5"]],
    "empty batches": [[], [5], []],
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_spill_saves_what_the_whole_list_gives(tmp_path, monkeypatch, name):
    monkeypatch.setattr(time_column, "_BATCH", 3)  # several read-back batches even for short lists
    batches = CASES[name]
    spill = TimeSpill(tmp_path, "train")
    for b in batches:
        spill.extend(b)
    spill.save(tmp_path / "train.time.npy")
    got = np.load(tmp_path / "train.time.npy", allow_pickle=False)
    want = reference([v for b in batches for v in b])
    if want.dtype.kind == "U":
        want = np.array([s.replace("\n", " ") for s in want], dtype=str)  # one line per value on disk
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.time.npy"]  # the spill files are gone
