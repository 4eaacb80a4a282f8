import pytest

from seqfit.cli.flags import resolve_config
from seqfit.config import RunCfg, dump_toml, from_dict, load_toml, merge
from seqfit.errors import SeqfitError


def test_precedence_defaults_then_toml_then_flags(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[model]\nhidden = 64\ncell = "gru"\n[train]\nlr = 1\n')
    cfg = resolve_config(path, {"model": {"hidden": 32}, "train": {}, "memory": {}})
    assert cfg.model.hidden == 32 and cfg.model.cell == "gru"
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.train.bptt == RunCfg().train.bptt == 0


def test_dump_and_load_round_trip(tmp_path):
    cfg = merge(RunCfg(), {"model": {"tie_weights": True}, "memory": {"budget": "4GB"}})
    path = tmp_path / "c.toml"
    path.write_text(dump_toml(cfg))
    assert from_dict(load_toml(path)) == cfg


@pytest.mark.parametrize("text,match", [
    ('[model]\nhiden = 3\n', "unknown config key"),
    ('[model]\nhidden = "big"\n', "must be int"),
    ('[model]\ncell = "transformer"\n', "must be one of"),
    ('[modle]\n', "unknown config section"),
    ('[model\n', "not valid TOML"),
])
def test_bad_config_fails_loudly(tmp_path, text, match):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(SeqfitError, match=match):
        from_dict(load_toml(path))


def test_bptt_zero_means_the_tasks_default(tmp_path):
    from seqfit.config import lm_bptt

    assert RunCfg().train.bptt == 0 and lm_bptt(RunCfg().train) == 35
    none = {"model": {}, "train": {}, "memory": {}}
    classify = resolve_config(None, {**none, "model": {"task": "classify"}})
    assert classify.train.bptt == 0  # a classifier truncates only when asked
    assert merge(RunCfg(), {"model": {"task": "classify"}}).train.bptt == 0
    explicit = resolve_config(None, {**none, "model": {"task": "classify"}, "train": {"bptt": 35}})
    assert explicit.train.bptt == 35 and lm_bptt(merge(RunCfg(), {"train": {"bptt": 70}}).train) == 70


def test_a_forecaster_classifier_or_seq2seq_defaults_to_adam_unless_the_optimizer_is_set(tmp_path):
    from seqfit.config import from_options

    assert from_options({"task": "forecast"}).train.optimizer == "adam"
    assert from_options({"task": "classify"}).train.optimizer == "adam"
    assert from_options({"task": "seq2seq"}).train.optimizer == "adam"
    assert from_options({"task": "lm"}).train.optimizer == "sgd"  # the language model's classic recipe
    assert from_options({"task": "forecast", "optimizer": "sgd"}).train.optimizer == "sgd"  # asked for
    toml = tmp_path / "c.toml"
    toml.write_text('[model]\ntask = "forecast"\n[train]\noptimizer = "sgd"\n')
    assert from_options({}, config_path=toml).train.optimizer == "sgd"
    toml.write_text('[model]\ntask = "forecast"\n')
    assert from_options({}, config_path=toml).train.optimizer == "adam"
    resumed = from_options({"task": "forecast", "optimizer": "sgd"})
    assert from_options({}, base=resumed).train.optimizer == "sgd"  # a resumed run keeps what it started with
