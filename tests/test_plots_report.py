"""Plots are real PNGs; a report builds from a synthetic run directory, with or without the optional files."""

import base64
import json
import math
import random
import re

import matplotlib.image
import pytest

from seqfit.errors import SeqfitError
from seqfit.measure.metrics import MetricsLog
from seqfit.measure.plots import plot_loss, plot_memory_timeline, plot_throughput
from seqfit.measure.report import build_report

GiB = 2**30
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PREDICTED = int(1.5 * GiB)
MEASURED = int(1.35 * GiB)


def _records(steps: int = 60) -> list[dict]:
    rng = random.Random(0)
    out = []
    for step in range(1, steps + 1):
        loss = 7.0 * math.exp(-step / 25) + 4.0 + rng.uniform(-0.1, 0.1)
        out.append({"kind": "train", "step": step, "loss": loss, "ppl": math.exp(loss),
                    "tokens_per_s": 11000 + rng.uniform(-800, 800), "lr": 20.0, "time": 1000.0 + step})
        if step % 15 == 0:
            out.append({"kind": "valid", "step": step, "loss": loss + 0.2, "ppl": math.exp(loss + 0.2)})
    return out


def _run_dir(path, *, optional: bool = True):
    path.mkdir()
    with MetricsLog(path / "metrics.jsonl") as log:
        for record in _records():
            log.write(record)
    if not optional:
        return path
    (path / "config.toml").write_text(
        '[model]\ncell = "lstm"\nlayers = 2\nhidden = 650\n\n[train]\nbatch_size = 20\nbptt = 35\nlr = 20.0\n\n'
        '[memory]\nbudget = "2GB"\nprecision = "fp32"\n')
    parts = {"params": 80 * 2**20, "grads": 80 * 2**20, "activations": 700 * 2**20, "logits": 600 * 2**20}
    (path / "plan.json").write_text(json.dumps(
        {"predicted_peak_bytes": PREDICTED, "parts": parts, "plan": {"micro_batch": 20, "bptt": 35, "loss_chunks": 4}}))
    timeline = [[0.01 * i, int(0.3 * GiB + 1.0 * GiB * min(1, i / 50)), int(0.2 * GiB + 1.0 * GiB * min(1, i / 50)) - (i % 7) * 2**20, 0]
                for i in range(200)]
    (path / "memory_timeline.json").write_text(json.dumps(timeline))
    (path / "summary.json").write_text(json.dumps(
        {"peak_rss": int(1.5 * GiB), "peak_anon": MEASURED, "measured_peak_bytes": MEASURED, "tokens_per_s": 11000.0,
         "valid_ppl": 70.1}))
    return path


def _check_png(path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert len(data) > 1000, path
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 400
    assert image.std() > 0.01  # something is drawn, not a blank canvas


def test_markdown_report_from_a_full_run_dir(tmp_path):
    run = _run_dir(tmp_path / "run")
    report = build_report(run)
    assert report == run / "report.md"
    text = report.read_text()
    pngs = sorted(p.name for p in (run / "plots").glob("*.png"))
    assert pngs == ["loss.png", "memory.png", "throughput.png"]
    for name in pngs:
        _check_png(run / "plots" / name)
        assert f"(plots/{name})" in text  # linked from the report
    assert f"| **predicted peak** | {PREDICTED / GiB:.2f} GiB | 100% |" in text
    assert f"| **measured peak** (summary.json measured_peak_bytes) | {MEASURED / GiB:.2f} GiB | {100 * MEASURED / PREDICTED:.1f}% |" in text
    assert f"| activations | 700.0 MiB | {100 * 700 * 2**20 / PREDICTED:.1f}% |" in text
    assert f"{MEASURED / PREDICTED:.2f}x the predicted peak" in text
    assert "[model] hidden | 650" in text and "[memory] budget | 2GB" in text
    assert "| loss_chunks | 4 |" in text
    assert "fits the budget | yes" in text  # 1.35 GiB measured against a 2 GiB budget
    assert "## Throughput" in text and "## Final metrics" in text


def test_html_report_is_self_contained(tmp_path):
    run = _run_dir(tmp_path / "run")
    report = build_report(run, fmt="html")
    assert report == run / "report.html"
    text = report.read_text()
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", text)
    assert len(images) == 3
    for data in images:
        assert base64.b64decode(data)[:8] == PNG_SIGNATURE
    assert "plots/" not in text  # nothing points outside the file
    assert "<table>" in text and "**" not in text


def test_report_without_optional_files(tmp_path):
    run = _run_dir(tmp_path / "bare", optional=False)
    text = build_report(run).read_text()
    assert sorted(p.name for p in (run / "plots").glob("*.png")) == ["loss.png", "throughput.png"]
    assert "## Summary" in text and "final train loss" in text
    assert "## Config" not in text and "predicted" not in text


def test_report_needs_metrics(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SeqfitError, match="metrics.jsonl"):
        build_report(tmp_path / "empty")
    with pytest.raises(SeqfitError, match="no run directory"):
        build_report(tmp_path / "missing")
    with pytest.raises(SeqfitError, match="md or html"):
        build_report(_run_dir(tmp_path / "run"), fmt="pdf")


def test_plot_functions_accept_tuples_and_dicts(tmp_path):
    dicts = [{"t": i * 0.1, "rss": (1 + i) * 2**20, "anon": i * 2**20, "cuda_allocated": 3 * i * 2**20} for i in range(30)]
    _check_png(plot_memory_timeline(dicts, tmp_path / "dicts.png", budget_bytes=100 * 2**20, title="dicts"))
    tuples = [(i * 0.1, (1 + i) * 2**20, i * 2**20) for i in range(30)]
    spans = [("forward", 0.0, 1.0), ("backward", 1.0, 2.5), ("forward", 2.5, 2.9)]
    _check_png(plot_memory_timeline(tuples, tmp_path / "tuples.png", predicted_peak_bytes=40 * 2**20, spans=spans))
    _check_png(plot_loss(_records(), tmp_path / "loss.png"))
    _check_png(plot_throughput(_records(), tmp_path / "tput.png"))
    with pytest.raises(SeqfitError):
        plot_memory_timeline([], tmp_path / "none.png")
    with pytest.raises(SeqfitError):
        plot_throughput([{"kind": "valid", "step": 1, "ppl": 3.0}], tmp_path / "none.png")
