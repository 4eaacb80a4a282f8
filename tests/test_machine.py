"""machine_info: the block every benchmark result carries (CPU, flags, torch, GEMM ceilings)."""

from __future__ import annotations

import torch

from seqfit.measure.machine import FLAGS, describe_machine, machine_info


def test_machine_info_keys_and_sanity():
    info = machine_info(size=128, seconds=0.02)
    assert isinstance(info["cpu"], str) and info["cpu"]
    assert info["cores"] >= 1
    assert set(info["flags"]) == set(FLAGS) and all(v in (True, False, None) for v in info["flags"].values())
    assert info["torch"] == torch.__version__ and info["threads"] == torch.get_num_threads()
    assert isinstance(info["bf16_rnn_kernels"], bool)
    g = info["gemm"]
    assert g["size"] == 128 and g["fp32_gflops"] > 0 and g["bf16_gflops"] > 0
    assert g["bf16_over_fp32"] > 0
    line = describe_machine(info)
    assert info["cpu"] in line and "GEMM" in line and "\n" not in line


def test_machine_info_is_cached_and_can_skip_ceilings():
    first = machine_info(size=128, seconds=0.02)
    assert machine_info(size=128, seconds=0.02)["gemm"] == first["gemm"]  # measured once per process
    assert "gemm" not in machine_info(measure_ceilings=False)
    assert "GEMM" not in describe_machine(machine_info(measure_ceilings=False))


def test_every_benchmark_writes_the_machine_block(tmp_path, monkeypatch):
    import importlib.util
    import json
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parent.parent / "benchmarks"
    monkeypatch.syspath_prepend(str(bench))
    import common

    monkeypatch.setattr(common, "machine", lambda: machine_info(size=128, seconds=0.02))
    path = common.write_result({"name": "x", "rows": [{"a": 1}]}, tmp_path / "x.json")
    assert json.loads(path.read_text())["machine"]["gemm"]["size"] == 128
    for file in sorted(bench.glob("bench_*.py")):  # each imports, and writes through common (no copy per file)
        spec = importlib.util.spec_from_file_location(file.stem, file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        text = file.read_text()
        assert "write_result(" in text and '/ "results"' not in text, file.name
    sys.modules.pop("common", None)
