"""A new constraint is one dataclass and one registration, valid in every config.

The constraint registered here, ``weight_clip``, bounds every weight to [-max_abs, max_abs]
after each optimizer step (a hardware range). The test checks that the section is built with
the config's unknown-key checks, validated, part of a run's identity, saved with the run,
swept like any key, applied by the methods that train through ``make_trainer`` (one training
and a stream) and refused by a method that does not apply it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from underbudget import sections
from underbudget.config import config_hash, load_config, to_dict
from underbudget.errors import ConfigError
from underbudget.experiment.launch import run_experiment
from underbudget.experiment.sweep import expand_sweep
from underbudget.models import read_state_dict
from underbudget.train.callbacks import Callback


class Clip(Callback):
    name = "weight_clip"

    def __init__(self, bound: float):
        self.bound = bound

    def after_optimizer_step(self, trainer) -> None:
        with torch.no_grad():
            for p in trainer.model.parameters():
                p.clamp_(-self.bound, self.bound)


@dataclass
class WeightClip:
    max_abs: float = 1.0

    def validate(self, cfg) -> None:
        if not self.max_abs > 0:
            raise ConfigError(f"weight_clip.max_abs must be > 0, got {self.max_abs}")

    def training_callbacks(self, cfg, trainer) -> list:
        return [Clip(self.max_abs)]


@pytest.fixture(autouse=True)
def registered():
    sections.register_section("weight_clip", WeightClip)
    yield
    sections._SECTIONS.pop("weight_clip", None)


BASE = {"name": "clip", "data": {"name": "digits", "batch_size": 64},
        "model": {"name": "mlp", "kwargs": {"hidden": [32]}},
        "optim": {"name": "sgd", "lr": 0.5}, "train": {"epochs": 2, "progress": False}}


def _max_weight(run: Path) -> float:
    state = read_state_dict(next(run.rglob("model.safetensors")))
    return max(float(v.abs().max()) for v in state.values())


def test_the_section_is_checked_like_any_other():
    cfg = load_config({**BASE, "weight_clip": {"max_abs": 0.05}})
    assert cfg.sections["weight_clip"] == WeightClip(0.05)
    assert to_dict(cfg)["weight_clip"] == {"max_abs": 0.05}
    assert load_config(to_dict(cfg)).sections == cfg.sections  # the saved config reads back
    assert config_hash(cfg) != config_hash(load_config(BASE))
    with pytest.raises(ConfigError, match="did you mean 'max_abs'"):
        load_config({**BASE, "weight_clip": {"max_ab": 0.05}})
    with pytest.raises(ConfigError, match="must be > 0"):
        load_config({**BASE, "weight_clip": {"max_abs": 0}})
    with pytest.raises(ConfigError, match="does not apply registered constraint sections"):
        load_config({**BASE, "weight_clip": {}, "method": {
            "name": "compress_transfer", "target": {"name": "digits"}}})
    kids = expand_sweep(load_config({**BASE, "weight_clip": {},
                                     "sweep": {"weight_clip.max_abs": [0.1, 0.2]}}))
    assert [c.sections["weight_clip"].max_abs for _, c in kids] == [0.1, 0.2]


def test_one_training_and_a_stream_apply_it(tmp_path):
    free = run_experiment(load_config(BASE), tmp_path / "free", quiet=True)
    assert _max_weight(free) > 0.05  # without the constraint the weights leave the range
    clipped = run_experiment(load_config({**BASE, "weight_clip": {"max_abs": 0.05}}),
                             tmp_path / "clip", quiet=True)
    assert _max_weight(clipped) <= 0.05 + 1e-7
    assert "weight_clip:" in next(clipped.rglob("config.yaml")).read_text()
    streamed = run_experiment(load_config({**BASE, "weight_clip": {"max_abs": 0.05},
                                           "stream": {"megabatches": 2},
                                           "train": {"epochs": 1, "progress": False}}),
                              tmp_path / "stream", quiet=True)
    assert _max_weight(streamed) <= 0.05 + 1e-7
