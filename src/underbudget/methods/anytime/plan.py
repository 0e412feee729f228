"""The stream: megabatches, their train/validation parts, and what each stage trains on.

Everything here is a pure function of the labels, the settings and the seed, so a resumed
run recomputes the same plan and the indices saved with the run describe it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...data.stream import Replay, ReservoirBuffer, partition, replay_indices, split_megabatch
from ...errors import ConfigError
from ...utils.seeding import derive_seed


@dataclass
class StreamPlan:
    """Per-stage index sets into the (limited) training set."""

    megabatches: list[torch.Tensor]  # B_1 .. B_T (train and validation parts together)
    train_parts: list[torch.Tensor]
    val_parts: list[torch.Tensor]
    stage_train: list[torch.Tensor]  # what stage b trains on (after replay)
    stage_val: list[torch.Tensor]  # validation data of stage b

    @property
    def T(self) -> int:
        return len(self.megabatches)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Flat name → indices mapping, for saving with the run."""
        out = {}
        for b in range(self.T):
            out[f"megabatch_{b}"] = self.megabatches[b]
            out[f"megabatch_{b}_train"] = self.train_parts[b]
            out[f"megabatch_{b}_val"] = self.val_parts[b]
            out[f"stage_{b}_train"] = self.stage_train[b]
            out[f"stage_{b}_val"] = self.stage_val[b]
        return out


def plan_stream(labels: torch.Tensor, acfg, seed: int) -> StreamPlan:
    """Partition, split and replay as configured."""
    T = acfg.megabatches
    if T > labels.numel():
        raise ConfigError(
            f"the number of megabatches ({T}: stream.megabatches or method.megabatches) is "
            f"larger than the {labels.numel()} training examples; use fewer megabatches or "
            "more data (data.limit)")
    megabatches = partition(labels, T, seed=derive_seed(seed, "partition"),
                            class_balanced=acfg.class_balanced)
    train_parts, val_parts = [], []
    for b, mb in enumerate(megabatches):
        if acfg.val_fraction > 0:
            tr, va = split_megabatch(mb, labels, acfg.val_fraction,
                                     seed=derive_seed(seed, "megabatch-val", b))
        else:
            tr, va = mb, torch.empty(0, dtype=torch.long)
        if tr.numel() == 0:
            raise ConfigError(
                f"megabatch {b} has no training examples left after its validation split; "
                "lower the stream's val_fraction or megabatches (stream.* or method.*)")
        train_parts.append(tr)
        val_parts.append(va)
    replay = Replay.parse(acfg.replay)
    buffer = (ReservoirBuffer(replay.size, seed=derive_seed(seed, "reservoir"))
              if replay.mode == "buffer" else None)
    stage_train, stage_val = [], []
    for b in range(T):
        stage_train.append(replay_indices(train_parts, b, replay, buffer))
        if replay.mode == "full":
            window = range(0, b + 1)
        elif replay.mode == "window":
            window = range(max(0, b - replay.size + 1), b + 1)
        else:  # none, buffer: validate on the newest megabatch
            window = range(b, b + 1)
        stage_val.append(torch.cat([val_parts[i] for i in window]))
    return StreamPlan(megabatches, train_parts, val_parts, stage_train, stage_val)
