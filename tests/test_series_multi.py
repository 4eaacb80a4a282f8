"""Many series in one store (--group-field): per-series holdout, offsets and names, windows that never span two
series (checked against a NumPy copy, at every boundary), the on-demand epoch order, and one-line refusals."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from seqfit.config import from_options
from seqfit.data.prepare import PrepareOptions, prepare
from seqfit.data.series import SeriesStore, SeriesWindows
from seqfit.data.shuffle import LazyPermutation
from seqfit.data.window_index import WindowIndex
from seqfit.data.window_sampler import EpochWindows
from seqfit.engine.forecast import ForecastTask

LENGTHS = {"s0": 60, "s1": 25, "s2": 41, "s3": 90, "s4": 26}  # s1 and s4 are barely longer than the window


def long_table(lengths=LENGTHS, seed=0) -> dict[str, np.ndarray]:
    """Long format: rows of each series consecutive; each series on its own level, and x a per-series ramp."""
    rng = np.random.default_rng(seed)
    ids, t, y, x = [], [], [], []
    for k, (name, n) in enumerate(lengths.items()):
        ids += [name] * n
        t.append(100 * k + np.arange(n))
        y.append(10.0 * k + rng.normal(0, 1, n))
        x.append(np.arange(n) / n + k)
    return {"id": np.array(ids), "t": np.concatenate(t), "y": np.concatenate(y), "x": np.concatenate(x)}


@pytest.fixture
def store(tmp_path):
    cols = long_table()
    src = tmp_path / "long.parquet"
    pq.write_table(pa.table(cols), src, row_group_size=17)  # series cross reader batches
    out = tmp_path / "data"
    prepare(PrepareOptions(out=out, inputs=(str(src),), task="series", columns=("x", "y"), group_field="id",
                           time_field="t", valid_fraction=0.2, shard_bytes=1024))  # rows cross shards too
    return out, cols


def per_series(cols, names=LENGTHS):
    ends = np.cumsum([0] + list(names.values()))
    return {name: (int(a), int(b)) for name, a, b in zip(names, ends[:-1], ends[1:])}


def test_store_holds_each_series_with_its_tail_held_out(store):
    out, cols = store
    s = SeriesStore(out)
    assert s.series_field == "id"
    raw = np.column_stack([cols["x"], cols["y"]]).astype(np.float32)
    train, valid = s.split("train"), s.split("valid")
    assert train.names == valid.names == list(LENGTHS)
    spans = per_series(cols)
    for i, name in enumerate(LENGTHS):
        a, b = spans[name]
        n_valid = int(round((b - a) * 0.2))
        got_train = train.read(int(train.offsets[i]), int(np.diff(train.offsets)[i]), normalize=False)
        got_valid = valid.read(int(valid.offsets[i]), int(np.diff(valid.offsets)[i]), normalize=False)
        assert np.array_equal(got_train, raw[a:b - n_valid]) and np.array_equal(got_valid, raw[b - n_valid:b])
        assert np.array_equal(s.times("valid")[valid.offsets[i]:valid.offsets[i + 1]], cols["t"][b - n_valid:b])
    train_y = np.concatenate([cols["y"][a:b - int(round((b - a) * 0.2))] for a, b in spans.values()])
    assert s.meta["stats"]["y"]["mean"] == pytest.approx(train_y.mean(), rel=1e-12)  # over every series' train rows
    assert s.meta["report"]["series"] == {"train": 5, "valid": 5, "test": 0}
    assert train.offsets.dtype == np.int64 and (out / "train.offsets.bin").stat().st_size == 8 * 6


def test_windows_never_span_two_series(store):
    """Every window the task draws is the NumPy cut of one series; the drawn starts are exactly the valid ones:
    none within lookback + horizon - 1 rows of a series' end, and each series' last valid window among them."""
    out, cols = store
    L, h = 14, 4  # s1 keeps 20 train rows: 3 windows
    cfg = from_options({"task": "forecast", "target": "y", "covariates": "x", "lookback": L, "horizon": h,
                        "batch_size": 8, "accumulate": 2})
    task = ForecastTask(cfg, out, torch.device("cpu"))
    task.check_data(print)
    train = task.train_split
    raw = np.concatenate([train.read(0, len(train), normalize=False)])  # the store's train rows, a NumPy copy
    ends = train.offsets[1:]
    want = {int(s) for a, b in zip(train.offsets[:-1], ends) for s in range(a, b - L - h + 1)}
    drawn = np.concatenate([b for g in task.epoch_groups(0) for b in g])
    assert len(drawn) == len(want) and set(drawn.tolist()) == want  # every valid start once
    for a, b in zip(train.offsets[:-1], ends):
        assert b - L - h in want and b - L - h + 1 not in want  # the series' last window, and not one row more
    series_of_first = np.searchsorted(ends, drawn, side="right")
    series_of_last = np.searchsorted(ends, drawn + L + h - 1, side="right")
    assert np.array_equal(series_of_first, series_of_last)  # first and last row of each window in one series

    mean, std = train.mean, train.scale
    for group in task.epoch_groups(1)[:3]:
        for starts in group:
            x, _, y = task._batch(train, starts)
            norm = [(raw[s:s + L + h] - mean) * std for s in starts]
            np.testing.assert_allclose(x.numpy(), np.stack([w[:L][:, [1, 0]] for w in norm]), rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(y.numpy(), np.stack([w[L:][:, [1]] for w in norm]), rtol=1e-5, atol=1e-5)

    # every series equally often: draws still valid starts only, and each series about equally
    equal = EpochWindows(task.index, seed=1, epoch=0, micro=8, accumulate=2, weight="equal")
    drawn = np.concatenate([b for g in equal for b in g])
    assert set(drawn.tolist()) <= want and len(drawn) == len(want)
    counts = np.bincount(np.searchsorted(ends, drawn, side="right"), minlength=5)
    assert counts.min() > 0.4 * counts.mean()

    # the Dataset face: stride windows, per series
    ds = SeriesWindows(out, "train", L, stride=3, horizon=h)
    assert len(ds) == sum((b - a - L - h) // 3 + 1 for a, b in zip(train.offsets[:-1], ends))
    k = ds.index.first[3]  # the first window of series 3
    xw, _ = ds[int(k)]
    assert torch.allclose(xw, torch.from_numpy(train.read(int(train.offsets[3]), L)))


def test_window_index_arithmetic():
    idx = WindowIndex([0, 10, 12, 20, 20 + 7], span=5, stride=2)  # series of 10, 2 (none), 8, 7 rows
    assert idx.counts.tolist() == [3, 0, 2, 2] and idx.count == 7
    assert idx.all_starts().tolist() == [0, 2, 4, 12, 14, 20, 22]
    assert idx.series_of([0, 2, 3, 6]).tolist() == [0, 0, 2, 3]
    with pytest.raises(IndexError):
        idx.starts([7])


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 1000, 4097])
def test_lazy_permutation_is_a_permutation(n):
    p = LazyPermutation(n, [5, 1])
    order = p[np.arange(n)]
    assert sorted(order.tolist()) == list(range(n))
    assert np.array_equal(order, LazyPermutation(n, [5, 1])[np.arange(n)])  # (seed, epoch) alone
    if n >= 64:
        assert not np.array_equal(order, LazyPermutation(n, [5, 2])[np.arange(n)])
        assert abs(np.corrcoef(np.arange(n), order)[0, 1]) < 4 / np.sqrt(n)  # 4 sigma of a random order's


def test_epoch_order_memory_is_per_series_not_per_window():
    """2,000 series x 50,000 rows, lookback 512: 10^8 windows, and an epoch's order costs a few KB."""
    offsets = np.arange(2001, dtype=np.int64) * 50_000
    tracemalloc.start()
    index = WindowIndex(offsets, 512 + 24)
    epoch = EpochWindows(index, seed=0, epoch=3, micro=32, accumulate=2)
    groups = [epoch[g] for g in (0, 1, len(epoch) - 1)]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert index.count == 2000 * (50_000 - 536 + 1) and len(epoch) == -(-index.count // 64)
    assert peak < 50 * 2001 * 8, peak  # a few arrays of one int64 per series; a permutation would be 800 MB
    starts = np.concatenate([b for g in groups for b in g])
    assert ((starts % 50_000) <= 50_000 - 536).all()


def _csv(path, text):
    path.write_text(text)
    return path


def test_a_series_split_in_two_places_is_one_line(tmp_path, cli):
    src = _csv(tmp_path / "d.csv", "id,y\na,1\na,2\nb,3\na,4\n")
    code, _, err = cli("prepare", src, "--task", "series", "--columns", "y", "--group-field", "id", "--out", tmp_path / "o")
    assert code == 2 and err.strip().count("\n") == 0, err
    assert "series 'a' appears again after other series" in err and "sort the input by id" in err
    assert not (tmp_path / "o").exists()


def test_ffill_never_carries_a_value_into_the_next_series(tmp_path, cli):
    src = _csv(tmp_path / "d.csv", "id,y\na,1\na,2\nb,nan\nb,3\n")
    code, _, err = cli("prepare", src, "--task", "series", "--columns", "y", "--group-field", "id", "--nan", "ffill",
                       "--valid-fraction", "0", "--out", tmp_path / "o")
    assert code == 2 and "starts with NaN/inf: nothing to carry forward" in err, err
    src = _csv(tmp_path / "e.csv", "id,y\na,1\na,nan\nb,5\nb,nan\n")
    code, _, err = cli("prepare", src, "--task", "series", "--columns", "y", "--group-field", "id", "--nan", "ffill",
                       "--valid-fraction", "0", "--out", tmp_path / "p")
    assert code == 0, err
    assert SeriesStore(tmp_path / "p").split("train").read(0, 4, normalize=False)[:, 0].tolist() == [1, 1, 5, 5]


def test_a_series_shorter_than_the_window_is_one_line(store, cli, tmp_path):
    out, _ = store
    run = tmp_path / "run"
    code, _, err = cli("train", out, "--out", run, "--task", "forecast", "--target", "y", "--lookback", 30,
                       "--horizon", 5, "--max-steps", 1)
    assert code == 2 and err.strip().count("\n") == 0, err
    assert "series 's1' (and 2 more of 5) has 20 train rows, fewer than --lookback 30 + --horizon 5 = 35" in err
    assert not run.exists()


def test_corrupt_offsets_or_names_are_refused_in_one_line(store):
    from seqfit.errors import SeqfitError

    out, _ = store
    offsets = out / "train.offsets.bin"
    good = offsets.read_bytes()
    bad = np.frombuffer(good, dtype=np.int64).copy()
    bad[2] = bad[1]  # an empty series: not increasing
    for data, message in ((bad.tobytes(), "not a list of increasing row offsets"), (good[:-8], "has 40 bytes")):
        offsets.write_bytes(data)
        with pytest.raises(SeqfitError, match=message):
            SeriesStore(out).split("train")
    offsets.write_bytes(good)
    (out / "train.series.json").write_text('["s0"]')
    with pytest.raises(SeqfitError, match="does not hold 5 series names"):
        _ = SeriesStore(out).split("train").names


def test_positioned_reads_cross_shards_and_leave_no_file_pages_resident(tmp_path):
    from seqfit.data.pread import ShardReader

    def file_rss() -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssFile"))

    values = np.random.default_rng(0).normal(size=4_000_000).astype(np.float32)  # 16 MB in three shards
    cuts = [0, 1_000_003, 2_500_000, len(values)]
    paths = []
    for k, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
        paths.append(tmp_path / f"s{k}.bin")
        values[a:b].tofile(paths[-1])
    reader = ShardReader(paths, np.diff(cuts).tolist(), np.float32)
    assert np.array_equal(reader.read(1_000_000, 10), values[1_000_000:1_000_010])  # across a shard boundary
    starts = np.random.default_rng(1).integers(0, len(values) - 1024, 3000)
    before = file_rss()
    for s in starts:
        assert reader.read(int(s), 1024)[7] == values[s + 7]
    assert file_rss() - before < 1 << 20  # through a memory map: ~3000 x 64 KB of fault-around
    with pytest.raises(IndexError):
        reader.read(len(values) - 5, 10)


def test_positions_in_matches_series_by_name_and_one_series_stores_to_each_other():
    from types import SimpleNamespace

    from seqfit.data.series import SeriesSplit

    def split(names, named=True):
        return SimpleNamespace(names=names, named=named, num_series=len(names))

    where = SeriesSplit.positions_in
    a, b = split(["x", "y", "z"]), split(["z", "x"])
    assert where(a, b).tolist() == [1, -1, 0]
    assert where(a, a).tolist() == [0, 1, 2]
    assert where(split(["valid"], False), split(["train"], False)).tolist() == [0]  # one series in every split
    assert where(split(["train"], False), split(["train", "y"])).tolist() == [-1]  # a name that is a split's name
