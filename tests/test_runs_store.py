"""Run store: checkpoint trees round-trip exactly; metrics truncate on resume; atomic files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from underbudget.errors import CheckpointError
from underbudget.runs import Run, load_tree, save_tree
from underbudget.utils.atomic import atomic_path, write_json


def test_tree_round_trip_keeps_types(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    tree = {"model": model.state_dict(), "optim": opt.state_dict(), "t": (1, 2.5, "x"),
            "arr": np.arange(5), "none": None, "flag": True, "dtype": torch.float16}
    save_tree(tmp_path / "ck", tree)
    back = load_tree(tmp_path / "ck")
    assert back["t"] == (1, 2.5, "x") and back["none"] is None and back["flag"] is True
    assert back["dtype"] is torch.float16
    np.testing.assert_array_equal(back["arr"], np.arange(5))
    assert set(back["optim"]["state"]) == {0, 1}  # integer keys survive
    opt2 = torch.optim.Adam(torch.nn.Linear(3, 2).parameters())
    opt2.load_state_dict(back["optim"])
    for k, v in model.state_dict().items():
        assert torch.equal(back["model"][k], v)


def test_tree_is_one_file_and_refuses_corruption(tmp_path):
    save_tree(tmp_path / "ck", {"a": torch.ones(3), "step": 7})
    assert [p.name for p in tmp_path.iterdir()] == ["ck.safetensors"]
    data = (tmp_path / "ck.safetensors").read_bytes()
    (tmp_path / "ck.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_tree(tmp_path / "ck")


def test_metrics_truncate_to_checkpoint(tmp_path):
    run = Run(tmp_path / "r")
    run.log("epoch", loss=1.0)
    run.save_checkpoint({"x": torch.zeros(1)})
    run.log("epoch", loss=0.5)  # written after the checkpoint: lost on resume
    assert len(run.events("epoch")) == 2
    assert run.load_checkpoint()["x"].shape == (1,)
    assert [e["loss"] for e in run.events("epoch")] == [1.0]
    run.write_summary({"status": "ok"})
    assert run.is_finished() and run.load_checkpoint() is None


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    path = tmp_path / "f.json"
    write_json(path, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]
