"""Data-parallel training of one run across processes (``torchrun`` + DDP).

Started by ``torchrun --nproc-per-node N``, every process reads ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` and joins one process group (gloo on CPU, NCCL on CUDA, one GPU per process).

The data order: a loader's seeded global order (:meth:`BatchPipeline.order`, a function of
the seed and the epoch only) is cut into global batches of ``data.batch_size`` exactly as in
one process, and rank r trains on the contiguous slice :func:`shard_bounds` of each global
batch. So N ranks follow the same sequence of global batches as one process, and the
all-reduced gradient of the per-rank mean losses, weighted by slice size, is the gradient of
the global batch's mean loss (:meth:`RankShard.loss_scale`). ``DistributedSampler`` would
instead interleave examples across ranks and change which examples share a step.

Everything else is kept identical on every rank rather than sent around: masks are computed
from the all-reduced gradients and identical weights (SET draws from seeded generators), so
every rank makes the same update; they are broadcast from rank 0 once per stage and checked
(:func:`assert_in_sync`) after the first step and at every epoch end. Every rank evaluates
the full evaluation sets; only rank 0 writes the run directory.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..config import TrackConfig, run_name
from ..data.loader import BatchPipeline, shard_bounds
from ..errors import ConfigError, UnderbudgetError

__all__ = [
    "init_from_env", "is_distributed", "rank", "world_size", "local_rank", "is_main_process",
    "barrier", "may_write", "private_root", "drop_private_root", "launch_root",
    "rank_device", "shard_bounds", "RankShard", "check_global_batch", "wrap_model",
    "sync_batchnorm", "all_reduce_", "all_reduce_grads", "broadcast_buffers",
    "broadcast_masks", "fingerprint", "assert_in_sync",
]


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    try:
        return int(raw) if raw.strip() else default
    except ValueError:
        raise ConfigError(f"${name}={raw!r} is not an integer; torchrun sets it") from None


def is_distributed() -> bool:
    """Whether this process belongs to an initialised process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Processes training this run (1 without torchrun)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return max(1, _env_int("WORLD_SIZE", 1))


def rank() -> int:
    """This process's rank (0 without torchrun)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return _env_int("RANK", 0)


def local_rank() -> int:
    """This process's rank on its machine (its GPU index on CUDA)."""
    return _env_int("LOCAL_RANK", 0)


def is_main_process() -> bool:
    """True on rank 0, the only process that writes the run directory."""
    return rank() == 0


def init_from_env(device: str | torch.device | None = None, timeout_s: float = 1800.0) -> bool:
    """Join the process group torchrun describes (idempotent); True when distributed.

    Backend NCCL when ``device`` is CUDA (``cuda`` or ``auto`` with a GPU present; each
    process then uses GPU ``LOCAL_RANK``), else gloo. Without ``WORLD_SIZE > 1`` nothing
    happens and training is the ordinary single-process loop.
    """
    if dist.is_available() and dist.is_initialized():
        return is_distributed()
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return False
    if not dist.is_available():
        raise UnderbudgetError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    r = _env_int("RANK", 0)
    cuda = _wants_cuda(device)
    if cuda:
        if local_rank() >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK={local_rank()} but only {torch.cuda.device_count()} GPUs are "
                "visible; start at most one process per GPU (torchrun --nproc-per-node)")
        torch.cuda.set_device(local_rank())
    dist.init_process_group("nccl" if cuda else "gloo", rank=r, world_size=world,
                            timeout=timedelta(seconds=timeout_s))
    atexit.register(_leave)
    return True


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _wants_cuda(device: str | torch.device | None) -> bool:
    if device is None or str(device) == "auto":
        return torch.cuda.is_available()
    return torch.device(device).type == "cuda"


def rank_device(device: torch.device) -> torch.device:
    """The device this rank trains on: CUDA without an index becomes ``cuda:LOCAL_RANK``."""
    if is_distributed() and device.type == "cuda" and device.index is None:
        return torch.device("cuda", local_rank())
    return device


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if is_distributed():
        dist.barrier()


# ----------------------------------------------------------------------------- files
_PRIVATE: list[Path] = []


def may_write(path: str | os.PathLike) -> bool:
    """Whether this process may write at ``path``: rank 0 anywhere, other ranks only inside
    their private launch root (:func:`launch_root`)."""
    if is_main_process():
        return True
    here = Path(path).resolve()
    return any(here == root or root in here.parents for root in _PRIVATE)


def private_root() -> Path | None:
    """This rank's private launch root (ranks > 0 under the command line), else None."""
    return _PRIVATE[-1] if _PRIVATE else None


def drop_private_root() -> None:
    """Remove this rank's private launch root (also done at exit)."""
    while _PRIVATE:
        shutil.rmtree(_PRIVATE.pop(), ignore_errors=True)


def launch_root(cfg: Any, out: str | None, planned: Path) -> tuple[str | None, Any]:
    """The runs root and config this rank launches ``cfg`` with under torchrun.

    Rank 0 launches as one process would, in ``out``. Every other rank launches in a private
    temporary root (removed at exit) holding a copy of the planned run directory as it is
    before anything starts, without trackers: so every rank takes the same decisions (skip
    a finished run, resume from the same checkpoint, retry a failure) from the same files,
    never waits on rank 0's run lock, and writes nothing in the run directory.
    """
    if getattr(getattr(cfg, "executor", None), "name", "serial") != "serial":
        raise ConfigError(
            f"executor.name={cfg.executor.name} under torchrun: a data-parallel run trains in "
            "the processes torchrun started; use executor.name=serial")
    check_global_batch(cfg.data.batch_size, world_size())
    if is_main_process():
        barrier()  # the other ranks have copied the run directory
        return out, cfg
    if cfg.track.backends:
        cfg = dataclasses.replace(cfg, track=TrackConfig())
    root = Path(tempfile.mkdtemp(prefix=f"underbudget-rank{rank()}-")).resolve()
    _PRIVATE.append(root)
    atexit.register(drop_private_root)
    try:
        if planned.is_dir():
            shutil.copytree(planned, root / run_name(cfg), symlinks=True,
                            ignore=shutil.ignore_patterns(".lock", ".*.tmp"))
    finally:
        barrier()
    return str(root), cfg


# ----------------------------------------------------------------------------- data
def check_global_batch(size: int, world: int) -> None:
    """Refuse a global batch that ``world`` processes cannot split evenly."""
    if size % world:
        lower = size - size % world
        hint = f"{lower} or {lower + world}" if lower else f"{world}"
        raise ConfigError(
            f"data.batch_size={size} (the global batch) is not divisible by the {world} "
            f"processes training this run; use a multiple of {world}, e.g. {hint}")


class RankShard:
    """This rank's slice of every global batch of ``loader``; yields ``(x, y, n_global)``.

    A :class:`BatchPipeline` cuts only the slice (augmented as the whole batch would be); any
    other sized iterable of ``(x, y)`` batches is read whole on every rank and sliced, which is
    correct when its order is the same on every rank (seeded).
    """

    def __init__(self, loader: Iterable, rank: int, world: int):
        self.loader, self.rank, self.world = loader, int(rank), int(world)
        size = getattr(loader, "batch_size", None)
        if isinstance(size, int):
            check_global_batch(size, self.world)
        if isinstance(loader, BatchPipeline) and not loader.drop_last:
            tail = loader.num_examples % loader.batch_size
            if 0 < tail < self.world:
                raise ConfigError(
                    f"the last batch of each epoch holds {tail} example(s), fewer than the "
                    f"{self.world} processes, so a rank would get none; change "
                    f"data.batch_size (now {loader.batch_size}) or the number of processes")

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, int]]:
        if isinstance(self.loader, BatchPipeline):
            size, total = self.loader.batch_size, self.loader.num_examples
            for b, (x, y) in enumerate(self.loader.batches(shard=(self.rank, self.world))):
                yield x, y, min(size, total - b * size)
            return
        for x, y in self.loader:
            n = int(y.shape[0])
            if n < self.world:
                raise UnderbudgetError(
                    f"a training batch of {n} example(s) cannot be split among {self.world} "
                    "processes; change the batch size or the number of processes")
            lo, hi = shard_bounds(n, self.rank, self.world)
            yield x[lo:hi], y[lo:hi], n

    def loss_scale(self, n_local: int, n_global: int) -> float:
        """Factor on the rank's mean loss so that DDP's gradient average (a plain mean over
        ranks) equals the gradient of the global batch's mean loss: ``n_local * W / N``."""
        return n_local * self.world / n_global


# ----------------------------------------------------------------------------- model
def wrap_model(model: nn.Module, device: torch.device) -> nn.Module | None:
    """``model`` in DistributedDataParallel (None when no parameter requires a gradient).

    DDP broadcasts rank 0's parameters and buffers when it wraps, so every rank starts the
    stage from the same state.
    """
    if not any(p.requires_grad for p in model.parameters()):
        return None
    if device.type == "cuda":
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index])
    return nn.parallel.DistributedDataParallel(model)


def sync_batchnorm(model: nn.Module) -> Callable[[], None]:
    """Swap the batch-norm layers inside ``model`` for SyncBatchNorm layers (statistics of
    the global batch, as in one process; CUDA only) sharing their parameters and buffers;
    return the function that puts the original layers back."""
    swaps = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, _BatchNorm) and not isinstance(child, nn.SyncBatchNorm):
                setattr(parent, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
                swaps.append((parent, name, child))

    def restore() -> None:
        for parent, name, child in swaps:
            child.train(getattr(parent, name).training)
            setattr(parent, name, child)

    return restore


def all_reduce_(tensor: Tensor) -> Tensor:
    """Sum ``tensor`` over ranks in place (no-op when not distributed); returns it."""
    if is_distributed():
        dist.all_reduce(tensor)
    return tensor


def all_reduce_grads(params: Iterable[nn.Parameter]) -> None:
    """Average the gradients of parameters DDP does not own (optimized outside the model)."""
    world = world_size()
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(world)


def broadcast_buffers(model: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (batch-norm statistics) to every rank."""
    if not is_distributed():
        return
    for buf in model.buffers():
        dist.broadcast(buf.data, src)


def broadcast_masks(masks: Any, src: int = 0) -> int:
    """Make every rank hold rank ``src``'s masks (a MaskSet: ``items`` and ``update``); returns
    how many masks changed on this rank."""
    if not is_distributed() or masks is None:
        return 0
    changed = {}
    for name, mask in masks.items():
        sent = mask.to(torch.uint8).contiguous()
        if _backend_device().type == "cuda":
            sent = sent.to(_backend_device())
        dist.broadcast(sent, src)
        got = sent.to(device=mask.device, dtype=torch.bool)
        if not torch.equal(got, mask):
            changed[name] = got
    if changed:
        masks.update(changed)  # a version bump: the enforcer resets optimizer state
    return len(changed)


def _backend_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def fingerprint(tensors: Mapping[str, Tensor]) -> Tensor:
    """Two float64 numbers per tensor (plain and position-weighted sums); a rank holding
    different values gets a different fingerprint."""
    out = []
    for t in tensors.values():
        v = t.detach().reshape(-1).to(torch.float64)
        w = torch.arange(1, v.numel() + 1, dtype=torch.float64, device=v.device)
        out.append(torch.stack([v.sum(), (v * w.reciprocal()).sum()]).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def assert_in_sync(tensors: Mapping[str, Tensor], what: str) -> None:
    """Raise on every rank when some rank's ``tensors`` differ from the others'."""
    if not is_distributed() or not tensors:
        return
    local = fingerprint(tensors).to(_backend_device())
    low, high = local.clone(), local.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    bad = (low != high).reshape(-1, 2).any(1).nonzero().reshape(-1).tolist()
    if bad:
        names = list(tensors)
        raise UnderbudgetError(
            f"{what} differ across ranks ({len(bad)} tensors, first {names[bad[0]]!r}); every "
            "rank must compute the same update (use the trainer's forward so DDP all-reduces "
            "the gradients, and seeded generators for random choices)")
