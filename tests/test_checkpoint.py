import torch
import pytest

from seqfit.errors import SeqfitError
from seqfit.engine.checkpoint import flatten_tensors, load_checkpoint, save_checkpoint, unflatten_tensors


def test_flatten_round_trip_keeps_types():
    state = {"step": 3, "opt": {"state": {0: {"exp_avg": torch.ones(2)}}, "param_groups": [{"lr": 0.1, "params": [0]}]},
             "hidden": [(torch.zeros(1, 2, 3), torch.ones(1, 2, 3)), torch.arange(4)], "name": None}
    tensors = {}
    tree = flatten_tensors(state, tensors)
    back = unflatten_tensors(tree, tensors)
    assert back["step"] == 3 and back["name"] is None
    assert list(back["opt"]["state"]) == [0]  # int keys survive JSON
    assert torch.equal(back["opt"]["state"][0]["exp_avg"], torch.ones(2))
    assert isinstance(back["hidden"][0], tuple) and torch.equal(back["hidden"][1], torch.arange(4))


def test_save_load_and_mismatch(tmp_path):
    model = torch.nn.Linear(3, 2)
    save_checkpoint(tmp_path, model, {"step": 7})
    other = torch.nn.Linear(3, 2)
    assert load_checkpoint(tmp_path, other)["step"] == 7
    assert torch.equal(other.weight, model.weight)
    with pytest.raises(SeqfitError, match="does not match the model options"):
        load_checkpoint(tmp_path, torch.nn.Linear(4, 2))


def test_corrupt_and_foreign_checkpoints_are_refused(tmp_path):
    model = torch.nn.Linear(3, 2)
    save_checkpoint(tmp_path, model, {"step": 1})
    (tmp_path / "checkpoint" / "model.safetensors").write_bytes(b"\x80\x04pickle-bytes")
    with pytest.raises(SeqfitError, match="corrupt or foreign"):
        load_checkpoint(tmp_path, model)
    (tmp_path / "checkpoint" / "state.json").write_text('{"format": "other"}')
    with pytest.raises(SeqfitError, match="not a seqfit checkpoint"):
        load_checkpoint(tmp_path, model)


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path):
    model = torch.nn.Linear(3, 2)
    save_checkpoint(tmp_path, model, {"step": 1})
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path, model, {"step": 2, "bad": object()})
    assert load_checkpoint(tmp_path, model)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
