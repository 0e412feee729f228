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


def test_weights_and_masks_files_are_byte_reproducible(tmp_path):
    from underbudget.models import save_weights
    from underbudget.sparsity import prune

    model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    masks = prune(model, density=0.5, criterion="magnitude")
    weights, mask_files = set(), set()
    for i in range(12):  # the metadata order of plain safetensors.save changes between calls
        save_weights(model, tmp_path / f"w{i}.safetensors")
        masks.save(tmp_path / f"m{i}.safetensors", {"level": "1"})
        weights.add((tmp_path / f"w{i}.safetensors").read_bytes())
        mask_files.add((tmp_path / f"m{i}.safetensors").read_bytes())
    assert len(weights) == 1 and len(mask_files) == 1


def test_reproducible_writer_matches_safetensors(tmp_path):
    from safetensors.torch import load, save

    from underbudget.utils.tensorfile import safetensors_bytes

    tensors = {"b": torch.randn(3, 4), "a": torch.arange(5, dtype=torch.int8),
               "flag": torch.tensor(True), "h": torch.randn(2, dtype=torch.bfloat16)}
    assert safetensors_bytes(tensors) == save(tensors)  # same layout, byte for byte
    back = load(safetensors_bytes(tensors, {"z": "1", "a": "2"}))
    assert all(torch.equal(back[k], v) for k, v in tensors.items())


def test_atomic_files_get_ordinary_permissions(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "new.json", {"v": 1})
        mode = stat.S_IMODE((tmp_path / "new.json").stat().st_mode)
        assert mode == 0o644  # not mkstemp's owner-only 0o600
        os.chmod(tmp_path / "new.json", 0o640)
        write_json(tmp_path / "new.json", {"v": 2})  # a rewrite keeps the file's mode
        assert stat.S_IMODE((tmp_path / "new.json").stat().st_mode) == 0o640
    finally:
        os.umask(old)


def test_stale_temp_files_are_removed_live_ones_kept(tmp_path):
    import os
    import time

    from underbudget.utils.atomic import clean_stale_temps

    (tmp_path / "report").mkdir()
    stale = tmp_path / "report" / ".summary.csv.ab12cd_9.tmp"
    live = tmp_path / ".summary.json.zz99yy00.tmp"
    other = tmp_path / "notes.tmp"
    for path in (stale, live, other):
        path.write_text("x")
    hour_ago = time.time() - 3600
    os.utime(stale, (hour_ago, hour_ago))
    os.utime(other, (hour_ago, hour_ago))
    assert clean_stale_temps(tmp_path) == [stale]
    assert live.exists() and other.exists() and not stale.exists()


def test_last_checkpoint_reads_the_position_from_the_header(tmp_path):
    from underbudget.runs.store import last_checkpoint

    assert last_checkpoint(tmp_path) is None
    run = Run(tmp_path / "r" / "level-01")
    run.log("epoch", loss=1.0)
    run.save_checkpoint({"stage": 0, "epoch": 3, "stage_done": False, "w": torch.zeros(2)})
    folder, pos = last_checkpoint(tmp_path)
    assert folder == run.path and pos == {"stage": 0, "epoch": 3, "stage_done": False}
