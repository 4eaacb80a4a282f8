"""A signal stops training after the step in flight, with a checkpoint of that step, and --resume goes on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from safetensors.torch import load_file

from conftest import write_corpus


def test_sigterm_stops_after_the_step_with_a_checkpoint(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-m", "seqfit", "prepare", "--train", str(write_corpus(tmp_path / "t.txt", 800, 1)),
                    "--out", str(tmp_path / "data")], check=True, capture_output=True, env=env)
    run = tmp_path / "run"
    args = [sys.executable, "-m", "seqfit", "train", str(tmp_path / "data"), "--out", str(run), "--layers", "1",
            "--hidden", "32", "--embed", "16", "--batch-size", "4", "--bptt", "8", "--log-every", "1",
            "--checkpoint-every", "0"]
    proc = subprocess.Popen([*args, "--max-steps", "1000000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (run / "metrics.jsonl").exists():
        time.sleep(0.1)
    time.sleep(1.0)  # some steps in
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert "stopping after this step" in err and "interrupted at step" in err
    stopped = json.loads((run / "checkpoint" / "state.json").read_text())
    step = dict(stopped["state"]["__dict__"])["step"]
    logged = [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert step > 0 and logged[-1] == step  # the checkpoint is of the last step that ran, and it was logged
    load_file(str(run / "checkpoint" / "model.safetensors"))
    resumed = subprocess.run([sys.executable, "-m", "seqfit", "train", str(tmp_path / "data"), "--out", str(run),
                              "--resume", "--max-steps", str(step + 3), "--json"], capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["step"] == step + 3
