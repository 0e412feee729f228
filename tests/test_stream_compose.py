"""The top-level ``stream`` section as a component: the anytime method reads its stream from
it (one source of truth), the train method runs over it, and disagreements are one error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from underbudget.config import load_config
from underbudget.errors import ConfigError
from underbudget.experiment.launch import run_experiment

SYNTH = {"name": "synthetic", "image_size": 8, "channels": 1, "batch_size": 32,
         "options": {"num_classes": 4, "n_train": 480, "n_test": 128}}
BASE = {
    "name": "stream", "seed": 3, "data": {**SYNTH, "eval_batch_size": 64},
    "model": {"name": "mlp", "kwargs": {"hidden": [32]}},
    "optim": {"name": "sgd", "lr": 0.05, "schedule": "none"},
    "train": {"epochs": 2, "device": "cpu", "progress": False, "select": "best"},
}
#: keys of a summary that measure the clock, not the computation
CLOCK = ("wall_time", "time_", "costs", "name")


def _values(method: dict, **sections) -> dict:
    return json.loads(json.dumps({**BASE, "method": method, **sections}))


def _summary(values: dict, root: Path) -> dict:
    path = run_experiment(load_config(values), root, quiet=True)
    summary = json.loads((path / "summary.json").read_text())
    return {k: v for k, v in summary.items() if not k.startswith(CLOCK)}


def test_stream_section_gives_the_same_run_as_the_method_fields(tmp_path):
    method = {"name": "anytime", "strategy": "app", "tau": 3.0, "criterion": "snip"}
    old = _values({**method, "megabatches": 3, "replay": "window:2", "class_balanced": True,
                   "val_fraction": 0.2})
    new = _values(method, stream={"megabatches": 3, "replay": "window:2",
                                  "class_balanced": True, "val_fraction": 0.2})
    a, b = _summary(old, tmp_path / "old"), _summary(new, tmp_path / "new")
    assert a == b
    assert a["megabatches"] == 3 and len(a["test_acc_per_stage"]) == 3


def test_method_field_at_its_default_yields_to_the_stream(tmp_path):
    values = _values({"name": "anytime", "strategy": "dense"},
                     stream={"megabatches": 4, "warm_start": False})
    cfg = load_config(values)
    s = _summary(values, tmp_path)
    assert cfg.method.megabatches == 8  # the config itself is left as written
    assert s["megabatches"] == 4 and len(s["init_seeds"]) == 4
    assert all(seed is not None for seed in s["init_seeds"])  # a fresh init every stage


@pytest.mark.parametrize("method, stream, field", [
    ({"megabatches": 4}, {"megabatches": 3}, "megabatches"),
    ({"replay": "none"}, {"megabatches": 3, "replay": "window:2"}, "replay"),
    ({"val_fraction": 0.3}, {"megabatches": 3, "val_fraction": 0.2}, "val_fraction"),
])
def test_disagreeing_stream_settings_are_one_error(method, stream, field):
    values = _values({"name": "anytime", **method}, stream=stream)
    with pytest.raises(ConfigError) as err:
        load_config(values)
    text = str(err.value)
    assert f"method.{field}" in text and f"stream.{field}" in text and "disagree" in text


def test_equal_values_on_both_sides_are_accepted():
    cfg = load_config(_values({"name": "anytime", "megabatches": 3, "replay": "none"},
                              stream={"megabatches": 3, "replay": "none"}))
    assert cfg.stream.megabatches == 3


def test_train_method_over_a_stream_is_the_anytime_run_of_its_sparsity(tmp_path):
    sparsity = {"method": "gradual", "density": 0.3, "end": 0.75, "interval": 5}
    train = _values({"name": "train", "eval_train": True}, sparsity=sparsity,
                    stream={"megabatches": 3})
    anytime = _values({"name": "anytime", "strategy": "gmp", "megabatches": 3,
                       "d_final": 0.3, "gmp_end": 0.75, "interval": 5})
    a = _summary(train, tmp_path / "train")
    b = _summary(anytime, tmp_path / "anytime")
    a.pop("method")
    b.pop("method")
    assert a == b
    assert a["strategy"] == "gmp" and a["megabatches"] == 3
    assert abs(a["final_density_measured"] - 0.3) < 0.01


@pytest.mark.parametrize("sparsity, stream, message", [
    ({"method": "gradual", "density": 0.5, "start": 0.2}, {"megabatches": 3}, "sparsity.start=0"),
    ({"method": "rigl", "density": 0.5, "init": "er"}, {"megabatches": 3}, "sparsity.init=erk"),
    ({"method": "static", "density": 0.5, "include": ["fc.*"]}, {"megabatches": 3},
     "sparsity.include/exclude"),
])
def test_train_over_a_stream_refuses_what_the_stream_cannot_do(sparsity, stream, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(_values({"name": "train"}, sparsity=sparsity, stream=stream))


def test_stream_validation_split_replaces_the_data_one():
    values = _values({"name": "train"}, stream={"megabatches": 3})
    values["data"]["val_fraction"] = 0.1
    with pytest.raises(ConfigError, match="stream.val_fraction"):
        load_config(values)
