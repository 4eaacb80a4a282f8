"""End-to-end runs of the command line on tiny data the tests write themselves."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file


TINY = ["--layers", "1", "--hidden", "32", "--embed", "32", "--batch-size", "4", "--bptt", "8",
        "--lr", "0.01", "--optimizer", "adam", "--log-every", "1", "--device", "cpu"]


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_train_lowers_loss_then_evaluate_and_generate(cli, data_dir, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = cli("train", data_dir, "--out", out, *TINY, "--epochs", "3", "--dropout", "0", "--json",
                            "--batch-size", "8", "--bptt", "12", "--lr", "0.02")
    assert code == 0, err
    summary = json.loads(stdout)
    losses = [r["loss"] for r in metrics(out) if r["kind"] == "train"]
    assert losses[-1] < 0.6 * losses[0]
    assert summary["valid_ppl"] < 15  # ~25 word types; the grammar allows far fewer continuations
    code, stdout, _ = cli("evaluate", out, "--json")
    assert code == 0 and json.loads(stdout)["ppl"] == pytest.approx(summary["valid_ppl"], rel=0.2)
    code, stdout, _ = cli("generate", out, "--prompt", "the cat", "--tokens", "12", "--seed", "3")
    assert code == 0 and stdout.startswith("the cat") and len(stdout.split()) >= 8
    for name in ("config.toml", "plan.json", "summary.json", "checkpoint/model.safetensors"):
        assert (out / name).is_file()


@pytest.mark.parametrize("stop_at", [5, 13])
def test_stop_and_resume_gives_bit_identical_weights(cli, data_dir, tmp_path, stop_at):
    """Dropout on, plateau schedule across epoch ends: data position, RNG, optimizer, lr and state all resume."""
    common = [*TINY, "--dropout", "0.3", "--optimizer", "sgd", "--lr", "1", "--schedule", "plateau"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert cli("train", data_dir, "--out", whole, *common, "--max-steps", 20)[0] == 0
    assert cli("train", data_dir, "--out", parts, *common, "--max-steps", stop_at)[0] == 0
    code, _, err = cli("train", data_dir, "--out", parts, "--resume", "--max-steps", 20)
    assert code == 0, err
    a = load_file(whole / "checkpoint" / "model.safetensors")
    b = load_file(parts / "checkpoint" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].equal(b[key]), key
    steps = [r["step"] for r in metrics(parts) if r["kind"] == "train"]
    assert steps == list(range(1, 21))


def test_existing_run_is_not_overwritten(cli, data_dir, tmp_path):
    out = tmp_path / "run"
    assert cli("train", data_dir, "--out", out, *TINY, "--max-steps", 2)[0] == 0
    before = (out / "checkpoint" / "model.safetensors").read_bytes()
    code, _, err = cli("train", data_dir, "--out", out, *TINY, "--max-steps", 2)
    assert code == 2 and "already holds a run" in err
    assert (out / "checkpoint" / "model.safetensors").read_bytes() == before


def test_resume_with_other_model_options_is_refused(cli, data_dir, tmp_path):
    out = tmp_path / "run"
    assert cli("train", data_dir, "--out", out, *TINY, "--max-steps", 2)[0] == 0
    code, _, err = cli("train", data_dir, "--out", out, "--resume", "--hidden", "48")
    assert code == 2 and "does not match the model options" in err
    assert err.count("\n") == 1


def one_line_error(cli, *args) -> str:
    code, _, err = cli(*args)
    assert code == 2, err
    assert err.startswith("seqfit: error: ") and err.count("\n") == 1, err
    return err


def test_prepare_errors(cli, tmp_path, corpus):
    assert "input not found" in one_line_error(cli, "prepare", tmp_path / "nope.txt", "--out", tmp_path / "a")
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    assert "empty" in one_line_error(cli, "prepare", empty, "--out", tmp_path / "b")
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"good line\ncaf\xe9\n")
    err = one_line_error(cli, "prepare", latin, "--out", tmp_path / "c")
    assert "latin.txt" in err and "byte offset 13" in err and "--encoding-errors replace" in err
    assert cli("prepare", latin, "--out", tmp_path / "c", "--encoding-errors", "replace")[0] == 0
    binary = tmp_path / "blob.bin"
    binary.write_bytes(b"abc\0\x01\x02")
    assert "looks binary" in one_line_error(cli, "prepare", binary, "--out", tmp_path / "d")
    for name in ("a", "b", "d"):
        assert not (tmp_path / name).exists()  # nothing half-written
    assert not list(tmp_path.glob(".*tmp*"))


def test_prepare_does_not_overwrite_without_asking(cli, tmp_path, corpus):
    out = tmp_path / "data"
    assert cli("prepare", corpus, "--out", out)[0] == 0
    meta = (out / "meta.json").read_text()
    assert "--overwrite" in one_line_error(cli, "prepare", corpus, "--out", out, "--level", "char")
    assert (out / "meta.json").read_text() == meta
    assert cli("prepare", corpus, "--out", out, "--level", "char", "--overwrite")[0] == 0
    assert json.loads((out / "meta.json").read_text())["level"] == "char"


def test_train_errors(cli, tmp_path, data_dir):
    (tmp_path / "nometa").mkdir()
    assert "no meta.json" in one_line_error(cli, "train", tmp_path / "nometa", "--out", tmp_path / "r1")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert "cannot write" in one_line_error(cli, "train", data_dir, "--out", blocker / "run")
    assert "tie-weights" in one_line_error(cli, "train", data_dir, "--out", tmp_path / "r3", "--tie-weights",
                                           "--embed", "16", "--hidden", "32")
    vocab = json.loads((data_dir / "vocab.json").read_text())
    vocab["tokens"][3], vocab["tokens"][4] = vocab["tokens"][4], vocab["tokens"][3]
    (data_dir / "vocab.json").write_text(json.dumps(vocab))
    assert "does not match" in one_line_error(cli, "train", data_dir, "--out", tmp_path / "r2")
    assert not (tmp_path / "r2").exists()  # refused before anything was written


def test_help_has_examples(cli):
    for command in ("prepare", "train", "evaluate", "generate"):
        code, out, _ = cli(command, "--help")
        assert code == 0 and "Examples:" in out
