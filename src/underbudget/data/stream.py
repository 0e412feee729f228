"""Megabatch streams for anytime learning: partition, per-megabatch validation, replay.

The training set is cut into T disjoint, near-equal megabatches by a seeded permutation. At
stage b (0-based) the learner trains on a replay choice of what has arrived so far.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from underbudget.data.budget import as_labels, split_validation
from underbudget.errors import ConfigError, DataError, closest
from underbudget.utils.seeding import generator


def partition(
    labels: Any, T: int, seed: int = 0, class_balanced: bool = False
) -> list[torch.Tensor]:
    """Split indices 0..N-1 into ``T`` disjoint megabatches covering all, each sorted.

    Sizes differ by at most one. With ``class_balanced``, every class's count also differs by
    at most one between megabatches.
    """
    lab = as_labels(labels)
    n = lab.numel()
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ConfigError(f"the number of megabatches T must be an integer >= 1, got {T!r}")
    if T > n:
        raise DataError(f"cannot cut {n} examples into T={T} megabatches; use T <= {n}")
    gen = generator(seed, "partition", T)
    perm = torch.randperm(n, generator=gen)
    if class_balanced:
        # group by class (in a random class order), keep the random order within each class,
        # then deal the whole sequence round-robin: each class lands on consecutive residues
        class_rank = torch.randperm(int(lab.max()) + 1 if n else 1, generator=gen)
        perm = perm[torch.sort(class_rank[lab[perm]], stable=True).indices]
        slot = torch.randperm(T, generator=gen)[torch.arange(n) % T]
        return [torch.sort(perm[slot == t]).values for t in range(T)]
    return [torch.sort(part).values for part in torch.tensor_split(perm, T)]


def split_megabatch(
    indices: Any, labels: Any, val_fraction: float, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified (train_idx, val_idx) of one megabatch, as indices into the full dataset."""
    idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if float(val_fraction) == 0.0:
        return torch.sort(idx).values, torch.empty(0, dtype=torch.long)
    lab = as_labels(labels)[idx]
    train, val = split_validation(lab, fraction=float(val_fraction), seed=seed)
    return torch.sort(idx[train]).values, torch.sort(idx[val]).values


@dataclass(frozen=True)
class Replay:
    """What a stage trains on: ``full``, ``none``, ``window:k`` (last k) or ``buffer:n``."""

    mode: str
    size: int | None = None

    def __post_init__(self) -> None:
        sized = self.mode in ("window", "buffer")
        if self.mode not in ("full", "none", "window", "buffer"):
            raise ConfigError(f"unknown replay mode {self.mode!r}; use full, none, window, buffer")
        if sized and (
            isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1
        ):
            raise ConfigError(f"replay {self.mode} needs a size >= 1, got {self.size!r}")
        if not sized and self.size is not None:
            raise ConfigError(f"replay {self.mode} takes no size, got {self.size!r}")

    @classmethod
    def parse(cls, spec: str | Replay) -> Replay:
        """Parse ``full | none | window:k | buffer:n`` (k, n >= 1)."""
        if isinstance(spec, Replay):
            return spec
        text = str(spec).strip().lower()
        usage = "use one of: full, none, window:K (K >= 1), buffer:N (N >= 1)"
        mode, sep, arg = text.partition(":")
        if mode in ("full", "none") and not sep:
            return cls(mode)
        if mode in ("window", "buffer") and arg.strip().isdigit() and int(arg) >= 1:
            return cls(mode, int(arg))
        hint = closest(mode, ["full", "none", "window", "buffer"])
        raise ConfigError(f"invalid replay {spec!r}{hint}; {usage}")

    def __str__(self) -> str:
        return self.mode if self.size is None else f"{self.mode}:{self.size}"


class ReservoirBuffer:
    """Reservoir sample (algorithm R) of at most ``capacity`` indices, uniform over all seen."""

    def __init__(self, capacity: int, seed: int = 0):
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ConfigError(f"buffer capacity must be an integer >= 1, got {capacity!r}")
        self.capacity = capacity
        self.seed = int(seed)
        self.seen = 0
        self._slots = torch.empty(0, dtype=torch.long)
        self._gen = generator(self.seed, "reservoir")

    def __len__(self) -> int:
        return int(self._slots.numel())

    def add(self, indices: Any) -> None:
        """Offer ``indices`` in order; each item ends up kept with probability capacity/seen."""
        items = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        if items.numel() == 0:
            return
        free = max(0, self.capacity - self._slots.numel())
        head, tail = items[:free], items[free:]
        if head.numel():
            self._slots = torch.cat([self._slots, head])
        self.seen += head.numel()
        if tail.numel():
            # item number t (0-based over everything seen) replaces slot j ~ U{0..t} if j < capacity
            t = torch.arange(self.seen, self.seen + tail.numel(), dtype=torch.float64)
            u = torch.rand(tail.numel(), dtype=torch.float64, generator=self._gen)
            j = torch.floor(u * (t + 1)).long()
            keep = (j < self.capacity).nonzero().reshape(-1)
            slots = self._slots
            for pos, slot in zip(keep.tolist(), j[keep].tolist()):
                slots[slot] = tail[pos]
            self.seen += tail.numel()

    def indices(self) -> torch.Tensor:
        """The buffered indices, sorted (a copy)."""
        return torch.sort(self._slots).values

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly after a restart."""
        return {
            "capacity": self.capacity,
            "seed": self.seed,
            "seen": self.seen,
            "slots": self._slots.clone(),
            "rng": self._gen.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if int(state["capacity"]) != self.capacity:
            raise ConfigError(
                f"buffer state has capacity {state['capacity']}, this buffer {self.capacity}"
            )
        self.seed = int(state["seed"])
        self.seen = int(state["seen"])
        self._slots = torch.as_tensor(state["slots"], dtype=torch.long).clone()
        self._gen.set_state(torch.as_tensor(state["rng"], dtype=torch.uint8))


def replay_indices(
    megabatches_train: list[torch.Tensor],
    stage: int,
    replay: Replay | str,
    buffer: ReservoirBuffer | None = None,
) -> torch.Tensor:
    """Training indices for stage ``stage`` (0-based) under ``replay``.

    For ``buffer:n`` the buffer is first brought up to date with megabatches 0..stage-1 (those
    it has not seen yet), so calling this again for the same stage changes nothing. The result is
    the current megabatch followed by the buffered past examples.
    """
    replay = Replay.parse(replay)
    if not 0 <= stage < len(megabatches_train):
        raise ConfigError(f"stage {stage} out of range for {len(megabatches_train)} megabatches")
    parts = [torch.as_tensor(m, dtype=torch.long).reshape(-1) for m in megabatches_train]
    if replay.mode == "full":
        return torch.cat(parts[: stage + 1])
    if replay.mode == "none":
        return parts[stage].clone()
    if replay.mode == "window":
        return torch.cat(parts[max(0, stage - replay.size + 1) : stage + 1])
    if buffer is None:
        raise ConfigError(f"replay {replay} needs a ReservoirBuffer(capacity={replay.size}, seed)")
    if buffer.capacity != replay.size:
        raise ConfigError(f"replay {replay} got a buffer of capacity {buffer.capacity}")
    sizes = [0]
    for part in parts[:stage]:
        sizes.append(sizes[-1] + part.numel())
    if buffer.seen not in sizes:
        raise DataError(
            f"the replay buffer has seen {buffer.seen} examples, which is not the size of any "
            f"prefix of the megabatches before stage {stage}; it belongs to another stream"
        )
    for part in parts[sizes.index(buffer.seen) : stage]:
        buffer.add(part)
    return torch.cat([parts[stage], buffer.indices()])
