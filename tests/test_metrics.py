"""MetricsLog writes JSON lines that read_metrics gives back; append mode; torn lines; TensorBoard hint."""

import importlib.util
import json
import math

import numpy as np
import pytest
import torch

from seqfit.errors import SeqfitError
from seqfit.measure.metrics import MetricsLog, read_metrics

RECORDS = [
    {"kind": "train", "step": 10, "loss": 5.25, "ppl": math.exp(5.25), "tokens_per_s": 12000.5, "lr": 20.0, "rss": 812384256},
    {"kind": "valid", "step": 10, "loss": 5.5, "ppl": math.exp(5.5)},
    {"kind": "memory", "step": 10, "rss": 900_000_000, "anon": 600_000_000},
    {"kind": "end", "step": 20, "note": "done"},
]


def test_round_trip(tmp_path):
    path = tmp_path / "run" / "metrics.jsonl"  # parent made on demand
    with MetricsLog(path) as log:
        for record in RECORDS:
            log.write(record)
    back = read_metrics(path)
    assert len(back) == len(RECORDS)
    for wrote, read in zip(RECORDS, back):
        assert {k: read[k] for k in wrote} == wrote
        assert isinstance(read["time"], float)  # stamped when absent
    assert len(path.read_text().splitlines()) == len(RECORDS)  # one line each


def test_lines_are_flushed_before_close(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path)
    log.write({"kind": "train", "step": 1, "loss": 1.0})
    assert read_metrics(path)[0]["loss"] == 1.0  # a crash now would keep it
    log.close()


def test_numpy_and_torch_scalars_and_nan(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with MetricsLog(path) as log:
        log.write({"kind": "train", "step": np.int64(3), "loss": torch.tensor(2.5), "acc": np.float32(0.25),
                   "ppl": float("nan")})
    (record,) = read_metrics(path)
    assert record["step"] == 3 and record["loss"] == 2.5 and record["acc"] == 0.25
    assert math.isnan(record["ppl"])  # a diverged run stays visible


def test_append_keeps_old_records_and_overwrite_drops_them(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with MetricsLog(path) as log:
        log.write(RECORDS[0])
    with MetricsLog(path, append=True) as log:
        log.write(RECORDS[1])
    assert [r["kind"] for r in read_metrics(path)] == ["train", "valid"]
    with MetricsLog(path) as log:
        log.write(RECORDS[2])
    assert [r["kind"] for r in read_metrics(path)] == ["memory"]


def test_torn_last_line_is_skipped_and_append_starts_a_fresh_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps(RECORDS[0]) + "\n" + '{"kind": "train", "step": 11, "lo')  # died mid-write
    assert [r["step"] for r in read_metrics(path)] == [10]
    with MetricsLog(path, append=True) as log:  # the resumed run
        log.write(RECORDS[1])
    assert [(r["kind"], r["step"]) for r in read_metrics(path)] == [("train", 10), ("valid", 10)]


def test_garbage_and_missing_file_are_user_errors(tmp_path):
    with pytest.raises(SeqfitError, match="no metrics file"):
        read_metrics(tmp_path / "nope.jsonl")
    path = tmp_path / "metrics.jsonl"
    path.write_text("not json\n" + json.dumps(RECORDS[0]) + "\n")
    with pytest.raises(SeqfitError, match=":1 "):
        read_metrics(path)


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is not None, reason="tensorboard is installed")
def test_tensorboard_missing_gives_install_hint(tmp_path):
    with pytest.raises(SeqfitError, match="pip install"):
        MetricsLog(tmp_path / "metrics.jsonl", tensorboard_dir=tmp_path / "tb")


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard is not installed")
def test_tensorboard_gets_scalars(tmp_path):
    with MetricsLog(tmp_path / "metrics.jsonl", tensorboard_dir=tmp_path / "tb") as log:
        for record in RECORDS:
            log.write(record)
    assert any((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_memory_timeline_stays_bounded_and_keeps_its_peak(monkeypatch):
    from seqfit.measure import memory

    sampler = memory.MemorySampler(keep_timeline=True)
    sampler.max_points = 100
    readings = iter(memory.MemoryReading(rss=i, anon=(10**9 if i == 4321 else i % 50), file=0)
                    for i in range(10_000))
    monkeypatch.setattr(memory, "read_memory", lambda: next(readings))
    for _ in range(10_000):
        sampler.sample()
    assert len(sampler.timeline) < 100
    assert max(p[2] for p in sampler.timeline) == 10**9  # the spike survives the merging
    times = [p[0] for p in sampler.timeline]
    assert times == sorted(times)
