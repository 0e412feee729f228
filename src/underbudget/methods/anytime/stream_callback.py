"""The callback that runs a strategy across stages and measures every stage."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from ... import sparsity
from ...metrics.anytime import gap_paper
from ...quant.in_training import is_qat, quantized_density
from ...sparsity.cost import training_flops
from ...sparsity.prune import SYNFLOW_ITERATIONS
from ...train.callbacks import Callback

#: forward-pass equivalents per scoring example: a gradient (forward + backward) is 3, as for
#: a training step; GraSP adds a Hessian-gradient product, counted as two more gradients
SCORING_PASSES = {"snip": 3.0, "taylor": 3.0, "grasp": 9.0, "synflow": 3.0,
                  "magnitude": 0.0, "random": 0.0}

COUNTERS = ("train_flops", "train_samples", "prune_flops", "prune_samples",
            "eval_flops", "eval_samples")


class Counted:
    """A loader that reports the size of every batch it yields (evaluation cost)."""

    def __init__(self, loader, on_batch: Callable[[int], None]):
        self.loader, self.on_batch = loader, on_batch

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator:
        for x, y in self.loader:
            self.on_batch(int(y.numel()))
            yield x, y


class StreamCallback(Callback):
    """Calls the strategy before each stage, meters what is spent, adds stage metrics.

    Metrics added to each evaluated stage: megabatch index, scheduled and measured density
    (prunable weights and all parameters), per-layer densities, nonzeros, dense and nonzero
    FLOPs per sample of the deployed network, training examples, the cumulative cost of the
    run (FLOPs and examples of training steps, of scoring passes and of evaluation; wall-clock
    seconds, resume-aware, and its parts), generalization gaps (train − test, train −
    validation, and the APP code's ``gap_paper``) and the seed of the stage's initialisation.
    With QAT: the bit widths and ``density_quantized``, the nonzero fraction of the prunable
    weights as the stage's (fake-quantized) forward pass uses them.

    Every optimizer step counts, also in epochs that best-epoch selection later discards.
    """

    name = "anytime"

    def __init__(self, setup, ctx, input_shape: tuple[int, ...], *, started: float | None = None,
                 init_seeds: list[int | None] | None = None,
                 fresh_init: Callable[[int], dict[str, torch.Tensor]] | None = None):
        self.setup, self.ctx = setup, ctx
        self.input_shape = tuple(input_shape)
        self.per_megabatch = setup.stages_per_megabatch
        self.counts = dict.fromkeys(COUNTERS, 0.0)
        self.prune_time = 0.0
        self.init_seeds = list(init_seeds or [])
        self.fresh_init = fresh_init  # megabatch -> a fresh state dict (warm_start=false)
        self._started = time.perf_counter() if started is None else started
        self._wall_before = 0.0  # seconds spent by earlier processes (from the checkpoint)
        self._epoch: dict[str, float] = {}  # last epoch's running train and val accuracy
        self._profile = None
        self._flops_key: Any = None
        self._flops = (0.0, 0.0)
        ctx.on_scoring = self._scored

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

    def wall_time(self) -> float:
        """Wall-clock seconds of the run so far, over every process that worked on it (up to
        each one's last checkpoint)."""
        return self._wall_before + time.perf_counter() - self._started

    def counted(self, loader) -> Counted:
        """``loader`` with its evaluation passes metered."""
        return Counted(loader, self._evaluated)

    def _evaluated(self, n: int) -> None:
        self.counts["eval_flops"] += self._measure()[1] * n
        self.counts["eval_samples"] += n

    def _scored(self, criterion: str, examples: int) -> None:
        """Cost of one pruning's scoring passes, at the density before that pruning."""
        passes = SCORING_PASSES.get(criterion, 3.0)
        if criterion == "synflow":  # one all-ones input per round, no data
            examples = SYNFLOW_ITERATIONS
        self.counts["prune_flops"] += passes * self._measure()[1] * examples
        self.counts["prune_samples"] += examples if criterion != "synflow" else 0

    def megabatch(self, stage: int) -> tuple[int, int]:
        """(megabatch index, phase within it) of a trainer stage."""
        return stage // self.per_megabatch, stage % self.per_megabatch

    # ----------------------------------------------------------------- hooks
    def before_stage(self, trainer, stage: int) -> None:
        b, phase = self.megabatch(stage)
        t0 = time.perf_counter()
        if self.setup.on_stage is not None:
            self.setup.on_stage(trainer, b, phase)
        self.prune_time += time.perf_counter() - t0
        if self.fresh_init is not None and b > 0 and phase == 0:
            self.setup.model.load_state_dict(self.fresh_init(b))
            if self.setup.masks is not None:
                self.setup.masks.apply(self.setup.model)
            trainer.log("reinit", megabatch=b, seed=self._seed(b))

    def _seed(self, b: int) -> int | None:
        return self.init_seeds[b] if b < len(self.init_seeds) else None

    def after_step(self, trainer, outputs: dict) -> None:
        _, nonzero = self._measure()
        n = int(getattr(trainer, "step_examples", 0) or outputs["labels"].numel())  # global
        self.counts["train_flops"] += training_flops(nonzero, n) * self.setup.train_cost_factor
        self.counts["train_samples"] += n

    def after_epoch(self, trainer, metrics: dict) -> None:
        self._epoch = {k: metrics[k] for k in ("train_acc_running", "val_acc") if k in metrics}

    def after_stage(self, trainer, stage: int, metrics: dict) -> None:
        b, phase = self.megabatch(stage)
        evaluated = phase == self.per_megabatch - 1
        metrics["megabatch"] = b
        metrics["evaluated"] = evaluated
        metrics["init_seed"] = self._seed(b)
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
        precision = self.ctx.cfg.precision
        if is_qat(precision):  # measured on the weights as this stage's forward pass uses them
            names = masks.names() if masks is not None else list(sparsity.prunable_parameters(net))
            metrics["density_quantized"] = quantized_density(net, names)
            metrics["weight_bits"] = precision.weight_bits
            metrics["act_bits"] = precision.act_bits
        metrics["flops_dense"] = dense_f
        metrics["flops_nonzero"] = nonzero_f
        metrics["train_examples"] = int(self.ctx.plan.stage_train[b].numel())
        if "train_acc" in metrics and "test_acc" in metrics:
            metrics["gap_train_test"] = metrics["train_acc"] - metrics["test_acc"]
        if "train_acc" in metrics and "val_acc" in metrics:
            metrics["gap_train_val"] = metrics["train_acc"] - metrics["val_acc"]
        if "train_acc_running" in self._epoch and "val_acc" in self._epoch:
            metrics["last_epoch_train_acc_running"] = self._epoch["train_acc_running"]
            metrics["last_epoch_val_acc"] = self._epoch["val_acc"]
            metrics["gap_paper"] = gap_paper(self._epoch["train_acc_running"],
                                             self._epoch["val_acc"])
        if evaluated and masks is not None and self.ctx.acfg.save_masks \
                and getattr(trainer, "run", None) is not None:
            masks.save(trainer.run.artifact(f"masks_megabatch_{b}.safetensors"))
        metrics.update(self.cost())
        metrics["time_prune"] = self.prune_time
        metrics["time_other"] = metrics["wall_time_cumulative"] - (
            metrics.get("time_train", 0.0) + metrics.get("time_eval", 0.0) + self.prune_time)
        if evaluated:
            trainer.log("anytime_stage", **{k: v for k, v in metrics.items()
                                            if k != "layer_densities"})

    def cost(self) -> dict[str, float]:
        """The cumulative cost counters of the run, as stage metrics."""
        c = self.counts
        return {
            "train_flops_cumulative": c["train_flops"],
            "train_samples_cumulative": int(c["train_samples"]),
            "prune_flops_cumulative": c["prune_flops"],
            "prune_samples_cumulative": int(c["prune_samples"]),
            "eval_flops_cumulative": c["eval_flops"],
            "eval_samples_cumulative": int(c["eval_samples"]),
            "flops_spent_cumulative": c["train_flops"] + c["prune_flops"] + c["eval_flops"],
            "wall_time_cumulative": self.wall_time(),
        }

    # ----------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        return {**self.counts, "wall": self.wall_time(), "prune_time": self.prune_time,
                "epoch": dict(self._epoch)}

    def load_state_dict(self, state: dict) -> None:
        for key in COUNTERS:
            self.counts[key] = float(state.get(key, 0.0))
        self._wall_before = float(state.get("wall", 0.0))  # this process's clock runs on
        self.prune_time = float(state.get("prune_time", 0.0))
        self._epoch = dict(state.get("epoch") or {})
