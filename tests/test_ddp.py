"""Data-parallel training (torchrun + DDP, gloo on CPU, two ranks).

Two ranks with global batch B must follow the same global batches as one process with batch
B: test accuracy equal, losses within 1e-4 relative (the all-reduce sums in another order),
masks equal on every rank, and only rank 0 writes the run directory.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from underbudget.config import load_config
from underbudget.data import Augment, ImageSet, Loader
from underbudget.errors import ConfigError
from underbudget.runs import Run
from underbudget.train import distributed
from underbudget.train.distributed import RankShard, shard_bounds

RTOL = 1e-4
SPARSE = ["sparsity.method=rigl", "sparsity.density=0.3", "sparsity.interval=2",
          "sparsity.t_end=0.9", "train.epochs=3", "data.options.n_train=255",
          "method.eval_train=true"]


def _images(n: int = 37, seed: int = 0) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 6, 6), generator=g, dtype=torch.uint8)
    return ImageSet(images, torch.arange(n) % 3, classes=["a", "b", "c"])


# ----------------------------------------------------------------------------- sharding
def test_shard_bounds_split_a_batch_into_contiguous_parts():
    assert [shard_bounds(8, r, 2) for r in range(2)] == [(0, 4), (4, 8)]
    assert [shard_bounds(7, r, 3) for r in range(3)] == [(0, 3), (3, 5), (5, 7)]
    with pytest.raises(ConfigError, match="rank 2"):
        shard_bounds(8, 2, 2)


def test_rank_slices_reassemble_the_global_batches_augmentation_included():
    loader = Loader(_images(), 8, shuffle=True, seed=3,
                    augment=Augment(crop_padding=1, flip=True))
    loader.set_epoch(5)
    whole = list(loader)
    shards = [list(RankShard(loader, r, 2)) for r in range(2)]
    assert len(whole) == len(shards[0]) == len(shards[1]) == 5
    for b, (x, y) in enumerate(whole):
        (x0, y0, n0), (x1, y1, n1) = shards[0][b], shards[1][b]
        assert n0 == n1 == y.numel()  # the global batch size (5 in the last batch)
        assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)


def test_any_sized_loader_is_sliced_the_same_way():
    batches = [(torch.arange(6.0).view(6, 1), torch.arange(6)),
               (torch.arange(3.0).view(3, 1), torch.arange(3))]
    got = list(RankShard(batches, 1, 2))
    assert [y.tolist() for _, y, _ in got] == [[3, 4, 5], [2]]
    assert [n for _, _, n in got] == [6, 3]


def test_global_batch_not_divisible_by_the_ranks_is_refused():
    with pytest.raises(ConfigError, match=r"data.batch_size=9 .* not divisible by the 2 "
                                          r"processes.*e\.g\. 8 or 10"):
        RankShard(Loader(_images(), 9), 0, 2)
    with pytest.raises(ConfigError, match="last batch of each epoch holds 1 example"):
        RankShard(Loader(_images(), 4), 0, 2)  # 37 = 9 x 4 + 1


def test_ranks_above_zero_write_nothing_in_a_run(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    run = Run(tmp_path / "run")
    run.start(config={"a": 1})
    run.log("epoch", loss=1.0)
    run.save_checkpoint({"step": 1})
    run.write_json("extra.json", {})
    run.write_summary({"status": "ok"})
    assert not run.path.exists()
    assert not distributed.may_write(tmp_path) and not run.writable
    monkeypatch.setenv("RANK", "0")
    assert run.writable


def test_sync_batchnorm_shares_state_and_puts_the_layers_back():
    bn, inner = torch.nn.BatchNorm2d(4), torch.nn.BatchNorm1d(3)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), bn, torch.nn.Sequential(inner))
    restore = distributed.sync_batchnorm(net)
    assert isinstance(net[1], torch.nn.SyncBatchNorm) and isinstance(net[2][0],
                                                                     torch.nn.SyncBatchNorm)
    assert net[1].weight is bn.weight and net[1].running_mean is bn.running_mean
    net[1].running_mean.add_(1.0)  # what training does in place, the original sees
    restore()
    assert net[1] is bn and net[2][0] is inner and float(bn.running_mean.sum()) == 4.0


# ----------------------------------------------------------------------------- ranks
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_rank(rank: int, world: int, port: int) -> None:
    """What torchrun gives each process."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)


def _cli(out: Path, overrides: list[str]) -> Path:
    from underbudget.cli import main

    assert main(["run", "tiny", *overrides, "--out", str(out), "--quiet"]) == 0
    (path,) = out.iterdir()
    return path


def _cli_rank(rank: int, world: int, port: int, out: str, overrides: list[str]) -> None:
    """One rank of ``torchrun -m underbudget run tiny ...``; reports the masks it trained."""
    _as_rank(rank, world, port)
    seen: dict = {"private": None}
    drop = distributed.drop_private_root

    def read_then_drop() -> None:  # rank 1's copy of the run, removed as the command ends
        own = distributed.private_root()
        if own is not None:
            seen.update(private=str(own), masks=load_file(next(own.rglob("masks.*"))))
        drop()

    distributed.drop_private_root = read_then_drop
    path = _cli(Path(out) / "two", overrides)
    if rank == 0:
        seen["masks"] = load_file(path / "artifacts" / "masks.safetensors")
    torch.save(seen, Path(out) / f"rank{rank}.pt")


def _files(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()}


def _events(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def _check_matches_one_process(one: Path, two: Path) -> None:
    a, b = (json.loads((p / "summary.json").read_text()) for p in (one, two))
    assert a["test_acc"] == b["test_acc"] and a["train_acc"] == b["train_acc"]
    for key in ("test_loss", "train_loss"):
        assert b[key] == pytest.approx(a[key], rel=RTOL)
    assert a["density"] == b["density"] == pytest.approx(0.3, abs=1e-3)
    assert a["train_flops"] == b["train_flops"]  # every rank counts the global batch
    events, ref = _events(two), _events(one)
    assert [e["event"] for e in events] == ["data_parallel"] + [e["event"] for e in ref]
    assert events[0]["world_size"] == 2 and events[0]["backend"] == "gloo"
    assert sum(e["event"] == "mask_update" for e in events) >= 5  # RigL did update
    assert _files(two) == _files(one)  # rank 1 added no file and no line
    m1, m2 = (load_file(p / "artifacts" / "masks.safetensors") for p in (one, two))
    same = sum(int((m1[k] == m2[k]).sum()) for k in m1) / sum(v.numel() for v in m1.values())
    assert same > 0.99  # RigL grows where gradients equal up to float rounding are largest


def test_two_ranks_match_one_process_and_only_rank0_writes(tmp_path):
    import torch.multiprocessing as mp

    one = _cli(tmp_path / "one", SPARSE)
    # fork: the ranks start with this process's imports (seconds saved per rank)
    mp.start_processes(_cli_rank, args=(2, _free_port(), str(tmp_path), SPARSE), nprocs=2,
                       start_method="fork")
    (two,) = (tmp_path / "two").iterdir()
    _check_matches_one_process(one, two)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert r0["private"] is None and r1["private"] is not None
    assert not Path(r1["private"]).exists()
    assert r0["masks"].keys() == r1["masks"].keys()
    for key in r0["masks"]:
        assert torch.equal(r0["masks"][key], r1["masks"][key])


@pytest.mark.slow
def test_torchrun_command_line(tmp_path):
    """The real launcher: ``python -m torch.distributed.run --nproc-per-node 2``."""
    one = _cli(tmp_path / "one", SPARSE)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(scratch)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc-per-node", "2", "-m", "underbudget", "run", "tiny", *SPARSE,
           "--out", str(tmp_path / "two"), "--quiet"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (two,) = (tmp_path / "two").iterdir()
    _check_matches_one_process(one, two)
    assert not [p for p in scratch.iterdir() if p.name.startswith("underbudget-rank")]


def _api_rank(rank: int, world: int, port: int, out: str) -> None:
    """One rank of the Python API: Trainer + RigL on the tiny preset's data."""
    if world > 1:
        _as_rank(rank, world, port)
    from underbudget.methods.common import build_model, eval_loader, prepare_data, train_loader
    from underbudget.sparsity import RigL
    from underbudget.train import Trainer

    cfg = load_config("tiny", ["data.options.n_train=200", "train.epochs=2"])
    data = prepare_data(cfg)
    rigl = RigL(density=0.3, update_interval=2, t_end=0.9, seed=0)
    run = Run(Path(out) / "run")
    trainer = Trainer(build_model(cfg, data), cfg.optim, cfg.train, run=run, callbacks=[rigl])
    result = trainer.fit(train_loader(cfg, data.train, data.splits, trainer.device),
                         cfg.train.epochs,
                         eval_loaders={"test": eval_loader(cfg, data.test, data.splits, "cpu")})
    torch.save({"masks": rigl.masks.state_dict(), "result": result,
                "weights": trainer.model.state_dict(), "distributed": trainer.distributed},
               Path(out) / f"rank{rank}.pt")


@pytest.mark.slow
def test_trainer_api_ranks_hold_identical_masks_and_weights(tmp_path):
    import torch.multiprocessing as mp

    one = tmp_path / "one"
    one.mkdir()
    _api_rank(0, 1, 0, str(one))
    mp.spawn(_api_rank, args=(2, _free_port(), str(tmp_path)), nprocs=2)
    ref, r0, r1 = (torch.load(p, weights_only=False) for p in
                   (one / "rank0.pt", tmp_path / "rank0.pt", tmp_path / "rank1.pt"))
    assert not ref["distributed"] and r0["distributed"] and r1["distributed"]
    for key in r0["masks"]:
        assert torch.equal(r0["masks"][key], r1["masks"][key])
    for key in r0["weights"]:
        assert torch.equal(r0["weights"][key], r1["weights"][key])
    assert r0["result"]["test_acc"] == r1["result"]["test_acc"] == ref["result"]["test_acc"]
    assert r0["result"]["train_loss"] == pytest.approx(ref["result"]["train_loss"], rel=RTOL)
    # one run directory, written once: rank 1's log lines and checkpoints were skipped
    assert [e["event"] for e in _events(tmp_path / "run")] == (
        ["data_parallel"] + [e["event"] for e in _events(one / "run")])
