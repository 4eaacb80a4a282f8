"""Kill it, fill its disk: a checkpoint or data directory is always the old one or the new one, never lost.

The torture tests SIGKILL real `seqfit train` / `seqfit prepare` processes at seeded random moments,
then resume; the quick variants run in the default suite, the 10-kill ones with `-m slow`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import seqfit.engine.checkpoint as ckpt
from conftest import write_corpus
from seqfit.atomic import staged_directory
from seqfit.data.prepare import PrepareOptions, prepare_text
from seqfit.data.store import TokenStore
from seqfit.engine.checkpoint import has_checkpoint, load_checkpoint, save_checkpoint
from seqfit.errors import SeqfitError

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "SEQFIT_NO_CALIBRATE": "1"}
STEPS = 300
TRAIN = ["--layers", "1", "--hidden", "16", "--embed", "8", "--batch-size", "4", "--bptt", "10", "--eval-every", "0",
         "--checkpoint-every", "1", "--max-steps", str(STEPS), "--seed", "7"]


def seqfit_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "seqfit", *[str(a) for a in args]]


def checkpoint_loads(run: Path) -> bool:
    """True if RUN holds a whole checkpoint, False if none; raises if one is there but broken."""
    if not has_checkpoint(run):  # renames a cut-short swap's `.checkpoint.old-*` back first
        assert not (run / "checkpoint").exists(), "a checkpoint directory without state.json"
        return False
    d = run / "checkpoint"
    doc = json.loads((d / "state.json").read_text())
    assert doc["format"] == "seqfit-checkpoint"
    load_file(d / "model.safetensors")
    load_file(d / "state.safetensors")
    return True


def run_and_kill(argv: list[str], delay: float, ready: str | None) -> bool:
    """Start argv; ``delay`` s after a line containing ``ready`` (or after start), SIGKILL it. True if it was killed."""
    proc = subprocess.Popen(argv, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = threading.Event()

    def watch():
        for line in proc.stdout:
            if ready is None or ready in line:
                seen.set()
        seen.set()
    threading.Thread(target=watch, daemon=True).start()
    if ready is None:
        seen.set()
    seen.wait(timeout=120)
    time.sleep(delay)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True
    proc.wait()
    return False


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A small store and the bytes of an uninterrupted run's final weights."""
    root = tmp_path_factory.mktemp("torture")
    data = root / "data"
    prepare_text(PrepareOptions(out=data, inputs=(str(write_corpus(root / "c.txt", lines=300)),)))
    ref = root / "ref"
    subprocess.run(seqfit_cmd("train", data, "--out", ref, *TRAIN), env=ENV, check=True, capture_output=True)
    return data, (ref / "checkpoint" / "model.safetensors").read_bytes()


def torture(data: Path, run: Path, kills: int, seed: int, max_delay: float = 1.2) -> dict:
    rng = random.Random(seed)
    stats = {"kills": 0, "with_checkpoint": 0, "stray_stages": 0}
    while stats["kills"] < kills:
        resume = checkpoint_loads(run)
        if not resume:
            shutil.rmtree(run, ignore_errors=True)  # killed before its first checkpoint: start again
        argv = seqfit_cmd("train", data, "--out", run, *TRAIN, *(["--resume"] if resume else []))
        if not run_and_kill(argv, rng.uniform(0.0, max_delay), ready="plan:"):
            break  # it finished before the kill
        stats["kills"] += 1
        stats["stray_stages"] += len(list(run.glob(".checkpoint.*")))  # killed mid-write or mid-swap
        stats["with_checkpoint"] += checkpoint_loads(run)
    resume = checkpoint_loads(run)
    if not resume:
        shutil.rmtree(run, ignore_errors=True)
    subprocess.run(seqfit_cmd("train", data, "--out", run, *TRAIN, *(["--resume"] if resume else [])),
                   env=ENV, check=True, capture_output=True)
    return stats


def test_kill_and_resume_gives_the_same_weights(tiny, tmp_path):
    data, reference = tiny
    stats = torture(data, tmp_path / "run", kills=3, seed=1)
    assert stats["kills"] >= 1, stats
    assert (tmp_path / "run" / "checkpoint" / "model.safetensors").read_bytes() == reference
    print(f"kills survived: {stats}")


@pytest.mark.slow
@pytest.mark.parametrize("seed", [2, 3])
def test_ten_kills_and_resume_give_the_same_weights(tiny, tmp_path, seed):
    data, reference = tiny
    stats = torture(data, tmp_path / "run", kills=10, seed=seed, max_delay=0.2)  # ~1.5 s of training in all
    assert stats["kills"] == 10, stats
    assert (tmp_path / "run" / "checkpoint" / "model.safetensors").read_bytes() == reference
    print(f"kills survived: {stats}")


# --- prepare killed mid-way ------------------------------------------------------------------
def tree_hash(d: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(d.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(d)).encode() + p.read_bytes())
    return h.hexdigest()


def prepare_torture(tmp_path: Path, kills: int, seed: int) -> int:
    rng = random.Random(seed)
    big = write_corpus(tmp_path / "big.txt", lines=300_000, seed=5)  # ~8 MB: a second or so to prepare
    out = tmp_path / "data"
    prepare_text(PrepareOptions(out=out, inputs=(str(write_corpus(tmp_path / "small.txt", lines=50)),)))
    old = tree_hash(out)
    killed = 0
    for _ in range(kills):
        if run_and_kill(seqfit_cmd("prepare", big, "--out", out, "--overwrite"), rng.uniform(0.05, 1.0), ready=None):
            killed += 1
        TokenStore(out)  # opens (recovering a cut-short swap): either store is whole
        if tree_hash(out) != old:  # the new one made it: whole, and it becomes the old one for the next kill
            assert TokenStore(out).split("train").read(0, 10) is not None
            old = tree_hash(out)
        assert not list(tmp_path.glob(".data.old-*")), "a swap left the old store behind"
    return killed


def test_prepare_killed_leaves_the_old_store_or_the_new(tmp_path):
    assert prepare_torture(tmp_path, kills=2, seed=1) >= 1


@pytest.mark.slow
def test_prepare_killed_ten_times(tmp_path):
    assert prepare_torture(tmp_path, kills=10, seed=2) >= 5


# --- crashes inside save_checkpoint, simulated ----------------------------------------------
def test_a_crash_after_the_model_file_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model = torch.nn.Linear(3, 2)
    save_checkpoint(tmp_path, model, {"step": 1})
    real = ckpt.save_file
    calls = []

    def crash_after_model(tensors, path, *a, **k):
        calls.append(Path(path).name)
        if len(calls) == 2:
            raise KeyboardInterrupt  # a signal arriving mid-write, after model.safetensors
        return real(tensors, path, *a, **k)
    monkeypatch.setattr(ckpt, "save_file", crash_after_model)
    with torch.no_grad():
        model.weight.add_(1)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, model, {"step": 2})
    assert calls == ["model.safetensors", "state.safetensors"]
    fresh = torch.nn.Linear(3, 2)
    assert load_checkpoint(tmp_path, fresh)["step"] == 1
    assert not torch.equal(fresh.weight, model.weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_a_swap_cut_between_its_renames_is_recovered(tmp_path):
    """The two-rename fallback: killed after final -> .old and before stage -> final."""
    model = torch.nn.Linear(3, 2)
    save_checkpoint(tmp_path, model, {"step": 5})
    os.replace(tmp_path / "checkpoint", tmp_path / ".checkpoint.old-99999999")
    (tmp_path / ".checkpoint.tmp-99999999").mkdir()  # the half-written stage of the killed process
    assert has_checkpoint(tmp_path)
    assert load_checkpoint(tmp_path, torch.nn.Linear(3, 2))["step"] == 5
    save_checkpoint(tmp_path, model, {"step": 6})  # and the leftovers of the dead process are swept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_a_store_swap_cut_between_its_renames_is_recovered(tmp_path, corpus):
    out = tmp_path / "data"
    prepare_text(PrepareOptions(out=out, inputs=(str(corpus),)))
    os.replace(out, tmp_path / ".data.old-99999999")
    assert len(TokenStore(out).split("train")) > 0


def test_the_swap_falls_back_to_two_renames(tmp_path, monkeypatch):
    import seqfit.atomic as atomic
    monkeypatch.setattr(atomic, "_renameat2", None)
    final = tmp_path / "d"
    for content in ("one", "two"):
        with staged_directory(final) as stage:
            (stage / "f").write_text(content)
    assert (final / "f").read_text() == "two" and sorted(p.name for p in tmp_path.iterdir()) == ["d"]


# --- disk full -------------------------------------------------------------------------------
def test_enospc_during_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model = torch.nn.Linear(3, 2)
    save_checkpoint(tmp_path, model, {"step": 1})
    before = (tmp_path / "checkpoint" / "model.safetensors").read_bytes()

    def full(tensors, path, *a, **k):
        Path(path).write_bytes(b"\0" * 10)  # a partial write, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    monkeypatch.setattr(ckpt, "save_file", full)
    with pytest.raises(SeqfitError, match="No space left on device; free some space") as info:
        save_checkpoint(tmp_path, model, {"step": 2})
    assert "\n" not in str(info.value)
    assert (tmp_path / "checkpoint" / "model.safetensors").read_bytes() == before
    assert load_checkpoint(tmp_path, torch.nn.Linear(3, 2))["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


@pytest.fixture
def small_tmpfs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                                            capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)


def test_a_real_full_disk_keeps_the_previous_checkpoint(small_tmpfs):
    small = torch.nn.Linear(10, 10)
    save_checkpoint(small_tmpfs, small, {"step": 1})
    before = (small_tmpfs / "checkpoint" / "model.safetensors").read_bytes()
    big = torch.nn.Linear(10, 10)
    big.register_buffer("ballast", torch.zeros(700_000))  # 2.8 MB: cannot fit in 1 MB
    with pytest.raises(SeqfitError, match="cannot write a checkpoint") as info:
        save_checkpoint(small_tmpfs, big, {"step": 2})
    assert "\n" not in str(info.value)
    assert (small_tmpfs / "checkpoint" / "model.safetensors").read_bytes() == before
    assert load_checkpoint(small_tmpfs, torch.nn.Linear(10, 10))["step"] == 1
    assert sorted(p.name for p in small_tmpfs.iterdir()) == ["checkpoint"]


def test_cli_full_disk_is_one_line(cli, small_tmpfs, tmp_path, corpus):
    """A store that does not fit: exit 2, one line, no half-written directory."""
    big = write_corpus(tmp_path / "big.txt", lines=200_000)
    code, out, err = cli("prepare", big, "--out", small_tmpfs / "data", "--level", "char")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("seqfit: error:") and "Traceback" not in err, err
    assert list(small_tmpfs.iterdir()) == []
