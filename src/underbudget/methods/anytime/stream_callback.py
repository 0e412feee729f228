"""The callback that runs a strategy across stages and measures every stage."""

from __future__ import annotations

import time
from typing import Any

import torch

from ... import sparsity
from ...train.callbacks import Callback


class StreamCallback(Callback):
    """Calls the strategy before each stage, counts training FLOPs, adds stage metrics.

    Metrics added to each evaluated stage: megabatch index, scheduled and measured density
    (prunable weights and all parameters), per-layer densities, nonzeros, dense and nonzero
    FLOPs per sample of the deployed network, training examples, cumulative training FLOPs
    (3 × forward nonzero FLOPs per example seen, × networks trained), generalization gaps
    (train − test, train − validation) and cumulative wall time.
    """

    name = "anytime"

    def __init__(self, setup, ctx, input_shape: tuple[int, ...]):
        self.setup, self.ctx = setup, ctx
        self.input_shape = tuple(input_shape)
        self.per_megabatch = setup.stages_per_megabatch
        self.train_flops = 0.0
        self.wall = 0.0
        self.prune_time = 0.0
        self.init_state: dict[str, torch.Tensor] | None = None
        self._profile = None
        self._flops_key: Any = None
        self._flops = (0.0, 0.0)
        self._t0 = None

    # ----------------------------------------------------------------- bookkeeping
    def _measure(self) -> tuple[float, float]:
        """(dense, nonzero) forward FLOPs per sample of the deployed network (cached)."""
        net = self.setup.deployed_model()
        masks = self.setup.masks
        key = None if masks is None else masks.version
        if self._profile is None:
            self._profile = sparsity.profile_flops(net, self.input_shape)
        if key != self._flops_key or self._flops == (0.0, 0.0):
            counts = self._profile.count(net, masks)
            self._flops = (float(counts["flops_dense"]), float(counts["flops_nonzero"]))
            self._flops_key = key
        return self._flops

    def megabatch(self, stage: int) -> tuple[int, int]:
        """(megabatch index, phase within it) of a trainer stage."""
        return stage // self.per_megabatch, stage % self.per_megabatch

    # ----------------------------------------------------------------- hooks
    def before_run(self, trainer) -> None:
        if not self.ctx.acfg.warm_start:
            self.init_state = {k: v.detach().clone()
                               for k, v in self.setup.model.state_dict().items()}

    def before_stage(self, trainer, stage: int) -> None:
        b, phase = self.megabatch(stage)
        t0 = time.perf_counter()
        if self.setup.on_stage is not None:
            self.setup.on_stage(trainer, b, phase)
        self.prune_time += time.perf_counter() - t0
        if self.init_state is not None and b > 0 and phase == 0:
            self.setup.model.load_state_dict(self.init_state)
            if self.setup.masks is not None:
                self.setup.masks.apply(self.setup.model)
            trainer.log("reinit", megabatch=b)

    def before_epoch(self, trainer) -> None:
        self._t0 = time.perf_counter()

    def after_step(self, trainer, outputs: dict) -> None:
        _, nonzero = self._measure()
        n = outputs["labels"].numel()
        self.train_flops += 3.0 * nonzero * n * self.setup.train_cost_factor

    def after_epoch(self, trainer, metrics: dict) -> None:
        if self._t0 is not None:
            self.wall += time.perf_counter() - self._t0

    def after_stage(self, trainer, stage: int, metrics: dict) -> None:
        b, phase = self.megabatch(stage)
        metrics["megabatch"] = b
        metrics["evaluated"] = phase == self.per_megabatch - 1
        dense_f, nonzero_f = self._measure()
        masks = self.setup.masks
        net = self.setup.deployed_model()
        metrics["density_scheduled"] = self.ctx.scheduled[b]
        if masks is not None:
            report = sparsity.mask_report(masks, net)
            metrics["density"] = report["density"]
            metrics["density_all"] = report["density_all"]
            metrics["nonzeros"] = report["nonzeros"]
            metrics["layer_densities"] = report["layer_densities"]
        else:
            total = sum(p.numel() for p in net.parameters())
            nnz = sum(int((p != 0).sum()) for p in net.parameters())
            metrics["density"] = 1.0
            metrics["density_all"] = nnz / max(1, total)
            metrics["nonzeros"] = nnz
        metrics["flops_dense"] = dense_f
        metrics["flops_nonzero"] = nonzero_f
        metrics["train_examples"] = int(self.ctx.plan.stage_train[b].numel())
        metrics["train_flops_cumulative"] = self.train_flops
        metrics["wall_time_cumulative"] = self.wall
        metrics["time_prune"] = self.prune_time
        if "train_acc" in metrics and "test_acc" in metrics:
            metrics["gap_train_test"] = metrics["train_acc"] - metrics["test_acc"]
        if "train_acc" in metrics and "val_acc" in metrics:
            metrics["gap_train_val"] = metrics["train_acc"] - metrics["val_acc"]
        if metrics["evaluated"] and masks is not None and self.ctx.acfg.save_masks \
                and getattr(trainer, "run", None) is not None:
            masks.save(trainer.run.artifact(f"masks_megabatch_{b}.safetensors"))
        if metrics["evaluated"]:
            trainer.log("anytime_stage", **{k: v for k, v in metrics.items()
                                            if k != "layer_densities"})

    # ----------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        return {"train_flops": self.train_flops, "wall": self.wall,
                "prune_time": self.prune_time}

    def load_state_dict(self, state: dict) -> None:
        self.train_flops = float(state.get("train_flops", 0.0))
        self.wall = float(state.get("wall", 0.0))
        self.prune_time = float(state.get("prune_time", 0.0))
