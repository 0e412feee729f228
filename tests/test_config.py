"""Typed configs: YAML round trip, overrides, unknown keys, wrong types, run names."""

from __future__ import annotations

import pytest
import yaml

from underbudget.config import (
    ExperimentConfig,
    apply_overrides,
    config_hash,
    from_dict,
    load_config,
    non_defaults,
    parse_override,
    run_name,
    to_dict,
    to_yaml,
)
from underbudget.errors import ConfigError


def test_defaults_round_trip_through_yaml():
    cfg = from_dict({"name": "x", "optim": {"lr": 0.05}, "data": {"batch_size": 32}})
    again = from_dict(yaml.safe_load(to_yaml(cfg)))
    assert to_dict(again) == to_dict(cfg)
    assert again.optim.lr == 0.05 and again.data.batch_size == 32


def test_overrides_parse_yaml_values():
    assert parse_override("optim.lr=0.01") == ("optim.lr", 0.01)
    assert parse_override("optim.milestones=[10, 20]") == ("optim.milestones", [10, 20])
    assert parse_override("data.root=null") == ("data.root", None)
    assert parse_override("train.amp=true") == ("train.amp", True)
    values = apply_overrides({"optim": {"lr": 0.1}}, ["optim.lr=0.2", "seed=3"])
    assert values == {"optim": {"lr": 0.2}, "seed": 3}


def test_unknown_key_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"optim\.lrr.*did you mean 'lr'"):
        from_dict({"optim": {"lrr": 0.1}})
    with pytest.raises(ConfigError, match="did you mean 'optim'"):
        from_dict({"optimm": {}})


def test_wrong_types_are_rejected_with_the_key():
    with pytest.raises(ConfigError, match="data.batch_size: expected an integer"):
        from_dict({"data": {"batch_size": "big"}})
    with pytest.raises(ConfigError, match="train.amp: expected true or false"):
        from_dict({"train": {"amp": "yes"}})
    with pytest.raises(ConfigError, match="optim.milestones"):
        from_dict({"optim": {"milestones": 5}})


def test_ints_become_floats_but_not_the_reverse():
    cfg = from_dict({"optim": {"lr": 1}})
    assert isinstance(cfg.optim.lr, float)
    with pytest.raises(ConfigError):
        from_dict({"train": {"epochs": 1.5}})


def test_cross_field_validation():
    with pytest.raises(ConfigError, match="density must be in \\(0, 1\\]"):
        from_dict({"sparsity": {"density": 1.5}})
    with pytest.raises(ConfigError, match="data.fraction"):
        from_dict({"data": {"fraction": 0}})
    with pytest.raises(ConfigError, match="unknown optimizer.*did you mean 'sgd'"):
        from_dict({"optim": {"name": "sdg"}})
    with pytest.raises(ConfigError, match="not both"):
        from_dict({"data": {"fraction": 0.5, "kshot": 3}})


def test_unknown_method_and_preset():
    with pytest.raises(ConfigError, match="unknown method"):
        from_dict({"method": {"name": "no-such-method"}})
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config("no-such-preset")


def test_run_name_hashes_only_non_default_settings():
    a = from_dict({"name": "exp"})
    b = from_dict({"name": "exp", "optim": {"lr": 0.1}})  # the default value
    c = from_dict({"name": "exp", "optim": {"lr": 0.2}})
    assert non_defaults(a) == {} and run_name(a) == run_name(b)
    assert run_name(a) != run_name(c) and run_name(c).startswith("exp-")
    assert non_defaults(c) == {"optim.lr": 0.2}
    assert len(config_hash(c)) == 8


def test_yaml_file_with_overrides(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("seed: 4\noptim:\n  lr: 0.3\n")
    cfg = load_config(str(path), ["optim.lr=0.4"])
    assert cfg.name == "exp" and cfg.seed == 4 and cfg.optim.lr == 0.4
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(bad))


def test_default_config_is_valid():
    assert isinstance(from_dict({}), ExperimentConfig)


def test_exponent_notation_without_a_dot_is_a_number():
    cfg = from_dict({"optim": {"weight_decay": "5e-4", "lr": "1e-2"}})
    assert cfg.optim.weight_decay == 5e-4 and cfg.optim.lr == 0.01
    with pytest.raises(ConfigError, match="expected a number"):
        from_dict({"optim": {"lr": "fast"}})


def test_platform_settings_do_not_change_the_run_name():
    from underbudget.config import PLATFORM_KEYS, is_platform_key

    base = from_dict({"name": "exp", "optim": {"lr": 0.2}})
    same = [{"train": {"device": "cpu"}}, {"train": {"device": "cuda:1", "progress": False}},
            {"track": {"backends": ["tensorboard"], "project": "p"},
             "train": {"checkpoint": False}},
            {"train": {"channels_last": True, "deterministic": True}},
            {"data": {"root": "/elsewhere", "download": True}}]
    for extra in same:
        values = {"name": "exp", "optim": {"lr": 0.2}, **extra}
        assert run_name(from_dict(values)) == run_name(base), extra
    for numerics in ({"train": {"amp": True}}, {"train": {"compile": True}}):
        values = {"name": "exp", "optim": {"lr": 0.2}, **numerics}
        assert run_name(from_dict(values)) != run_name(base), numerics
    npz = [from_dict({"data": {"name": "npz", "root": root}}) for root in ("/a.npz", "/b.npz")]
    assert run_name(npz[0]) != run_name(npz[1])  # there the root names the data itself
    assert is_platform_key("track.project") and is_platform_key("executor.name")
    assert not is_platform_key("trainer") and not is_platform_key("train.amp")
    assert "train.device" in PLATFORM_KEYS


def test_yaml_keys_given_twice_are_refused(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("optim:\n  lr: 0.1\n  lr: 0.2\n")
    with pytest.raises(ConfigError, match=r"key 'lr' is given twice \(lines 2 and 3\)"):
        load_config(str(path))
    merged = tmp_path / "merged.yaml"  # a merge key may be overridden: that is YAML's intent
    merged.write_text("base: &b {lr: 0.1, momentum: 0.5}\noptim:\n  <<: *b\n  lr: 0.3\n")
    from underbudget.config import load_yaml

    assert load_yaml(merged)["optim"] == {"lr": 0.3, "momentum": 0.5}
    with pytest.raises(ConfigError, match="given twice"):
        parse_override("model.kwargs={a: 1, a: 2}")


def test_overrides_given_twice_are_refused():
    with pytest.raises(ConfigError, match="seed is given twice"):
        apply_overrides({}, ["seed=1", "seed=2"])
    with pytest.raises(ConfigError, match="optim.lr overlaps optim"):
        apply_overrides({}, ["optim={lr: 1}", "optim.lr=2"])


def test_unusable_config_files(tmp_path):
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        load_config(str(tmp_path / "empty.yaml"))
    (tmp_path / "defaults.yaml").write_text("{}\n")  # all defaults, said explicitly
    assert load_config(str(tmp_path / "defaults.yaml")).name == "defaults"
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("seed: 1\n")
    with pytest.raises(ConfigError, match=r"is a directory.*run/config.yaml"):
        load_config(str(tmp_path / "run"))


def test_non_finite_numbers_and_long_names_are_refused():
    for lr in (float("nan"), float("inf"), "nan", 0.0):
        with pytest.raises(ConfigError, match="optim.lr"):
            from_dict({"optim": {"lr": lr}})
    with pytest.raises(ConfigError, match="optim.weight_decay"):
        from_dict({"optim": {"weight_decay": float("nan")}})
    with pytest.raises(ConfigError, match="name is 300 characters"):
        from_dict({"name": "x" * 300})
