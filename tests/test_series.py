import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch

from seqfit.data.prepare import PrepareOptions, prepare
from seqfit.data.series import SeriesStore, SeriesWindows
from seqfit.data.stats import RunningStats


def test_streaming_stats_equal_numpy_on_the_whole_array():
    rng = np.random.default_rng(0)
    x = rng.normal(5, 3, size=(5000, 3)) * [1, 100, 1e-3] + [0, 1e4, -2]
    stats = RunningStats(3)
    pos = 0
    for size in [1, 2, 997, 3, 1500, 1, 2496]:  # uneven batches, size 1 included
        stats.update(x[pos:pos + size])
        pos += size
    assert pos == len(x)
    assert stats.count == len(x)
    np.testing.assert_allclose(stats.mean, x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats.std, x.std(axis=0), rtol=1e-10)
    assert np.array_equal(stats.min, x.min(axis=0)) and np.array_equal(stats.max, x.max(axis=0))


def _table(n=3000, seed=1):
    rng = np.random.default_rng(seed)
    return {"t": np.arange(n, dtype=np.float64), "load": rng.normal(50, 10, n), "temp": rng.normal(-3, 0.5, n)}


@pytest.mark.parametrize("kind", ["csv", "parquet", "jsonl"])
def test_series_round_trip_and_stats(tmp_path, kind):
    cols = _table()
    src = tmp_path / f"s.{kind}"
    if kind == "csv":
        pacsv.write_csv(pa.table(cols), src)
    elif kind == "parquet":
        pq.write_table(pa.table(cols), src, row_group_size=256)
    else:
        import json
        src.write_text("".join(json.dumps({k: float(v[i]) for k, v in cols.items()}) + "\n" for i in range(3000)))
    out = tmp_path / "out"
    meta = prepare(PrepareOptions(out=out, inputs=(str(src),), task="series", columns=("load", "temp"),
                                  valid_fraction=0.1, shard_bytes=4096))
    x = np.column_stack([cols["load"], cols["temp"]])
    store = SeriesStore(out)
    train, valid = store.split("train"), store.split("valid")
    assert (len(train), len(valid)) == (2700, 300)  # the held-out tail, in time order
    assert len(meta["splits"]["train"]["shards"]) > 1
    raw = np.concatenate([train.read(0, 2700, normalize=False), valid.read(0, 300, normalize=False)])
    assert np.array_equal(raw, x.astype(np.float32))
    for i, name in enumerate(("load", "temp")):  # statistics of the train rows only
        s = meta["stats"][name]
        assert s["count"] == 2700
        assert s["mean"] == pytest.approx(x[:2700, i].mean(), rel=1e-12)
        assert s["std"] == pytest.approx(x[:2700, i].std(), rel=1e-10)
        assert (s["min"], s["max"]) == (x[:2700, i].min(), x[:2700, i].max())
    norm = train.read(100, 50)
    ref = (x[100:150].astype(np.float32) - x[:2700].mean(0)) / x[:2700].std(0)
    np.testing.assert_allclose(norm, ref, rtol=1e-5, atol=1e-5)
    assert norm.dtype == np.float32


def test_float16_storage_and_windows_dataset(tmp_path):
    cols = _table(500)
    src = tmp_path / "s.parquet"
    pq.write_table(pa.table(cols), src)
    out = tmp_path / "out"
    prepare(PrepareOptions(out=out, inputs=(str(src),), task="series", columns=("load", "temp"), dtype="float16",
                           valid_fraction=0.0))
    assert (out / "train.bin").stat().st_size == 500 * 2 * 2
    train = SeriesStore(out).split("train")
    x = np.column_stack([cols["load"], cols["temp"]])
    assert np.array_equal(train.read(0, 500, normalize=False), x.astype(np.float16).astype(np.float32))
    ds = SeriesWindows(out, "train", 20, stride=5, horizon=2)
    assert len(ds) == (500 - 22) // 5 + 1
    xw, yw = ds[3]
    assert xw.shape == (20, 2) and yw.shape == (2, 2) and xw.dtype == torch.float32
    assert torch.allclose(xw, torch.from_numpy(train.read(15, 20)))
    batches = list(torch.utils.data.DataLoader(ds, batch_size=16, num_workers=2))
    assert sum(len(b[0]) for b in batches) == len(ds)
