"""The one training loop. Methods plug in through callbacks and an optional loss function.

A :class:`Trainer` owns a model, its optimizer and the run directory. Each call of
:meth:`Trainer.fit` trains one *stage* (ordinary training is one stage; anytime learning has
one per megabatch). Every epoch ends with a checkpoint; when a run is started again after a
crash, the trainer restores the last checkpoint, skips the stages already done and continues
the interrupted stage from its last finished epoch, so the final weights equal those of an
uninterrupted run. Saving and resuming are in :mod:`.checkpointing`, the choice of the epoch
a stage ends with in :mod:`.selection`.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import UnderbudgetError
from . import distributed
from .callbacks import Callback
from .checkpointing import Checkpointing
from .evaluate import autocast, evaluate
from .optim import build_optimizer, build_scheduler
from .selection import EpochSelection, fresh_selection
from .stage_parallel import StageParallel

LossFn = Callable[["Trainer", torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class DivergedError(UnderbudgetError):
    """Training produced a non-finite or exploding loss."""


def resolve_device(name: str | torch.device | None) -> torch.device:
    """``auto`` → CUDA when available, else MPS, else CPU."""
    if isinstance(name, torch.device):
        return name
    if name in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


def cross_entropy_loss(label_smoothing: float = 0.0) -> LossFn:
    """Default loss: cross-entropy of the trainer's forward on (x, y)."""

    def loss_fn(trainer: Trainer, x: torch.Tensor, y: torch.Tensor):
        logits = trainer.forward(x)
        return F.cross_entropy(logits, y, label_smoothing=label_smoothing), logits

    return loss_fn


class Trainer(Checkpointing, EpochSelection):
    """Trains ``model`` stage by stage with callbacks, evaluation, checkpoints and resume.

    Args:
        model: any ``nn.Module`` mapping a batch of inputs to logits.
        optim: an :class:`~underbudget.config.OptimConfig` (optimizer and LR schedule).
        train: a :class:`~underbudget.config.TrainConfig` (loop settings).
        run: a :class:`~underbudget.runs.Run` for logs and checkpoints (None: in memory).
        callbacks: hooks on the fixed lifecycle (see :mod:`underbudget.train.callbacks`).
        loss_fn: ``(trainer, x, y) -> (loss, logits)``; cross-entropy by default.
        eval_forward: the function evaluated on test/validation data (default: the model).
        params: parameters to optimize (default: all that require grad).
    """

    def __init__(self, model: torch.nn.Module, optim, train, *, run=None,
                 callbacks: Sequence[Callback] = (), loss_fn: LossFn | None = None,
                 eval_forward: Callable | None = None,
                 params: Iterable[torch.nn.Parameter] | None = None):
        self.optim_cfg, self.cfg, self.run = optim, train, run
        self.distributed = distributed.init_from_env(train.device)  # under torchrun
        self.device = distributed.rank_device(resolve_device(train.device))
        self.model = model.to(self.device)
        if train.channels_last and self.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.forward = torch.compile(self.model) if train.compile else self.model
        self._plain_forward = self.forward
        self._parallel: StageParallel | None = None
        self.step_examples = 0  # examples of the current step's (global) batch
        self.eval_forward = eval_forward
        self.callbacks = list(callbacks)
        self.loss_fn = loss_fn or cross_entropy_loss(train.label_smoothing)
        self._params = list(params) if params is not None else None
        self.optimizer = self._build_optimizer()
        self.scheduler = None
        self.step = 0
        self.epoch = 0
        self.stage = -1
        self.steps_per_epoch = 0
        self.total_steps = 0
        self.stage_start_step = 0
        self.loader = None
        self.history: list[dict] = []
        self.events: list[dict] = []
        self.resumed = False
        self._started = False
        self._resume: dict | None = None
        self._best: dict | None = None
        self._es = fresh_selection()
        self._last: dict = {}
        self.timers = {"train": 0.0, "eval": 0.0}  # cumulative seconds (wall clock)

    # ----------------------------------------------------------------- plumbing
    def _build_optimizer(self) -> torch.optim.Optimizer:
        params = self._params if self._params is not None else self.model.parameters()
        return build_optimizer(params, self.optim_cfg)

    def add_callback(self, callback: Callback) -> None:
        """Register one more callback (before the first stage)."""
        self.callbacks.append(callback)

    def log(self, event: str, **values: Any) -> None:
        """Append an event (with stage/epoch/step) to the run's metrics.jsonl."""
        record = {"stage": self.stage, "epoch": self.epoch, "step": self.step, **values}
        if self.run is not None:
            self.run.log(event, **record)
        else:
            self.events.append({"event": event, **record})

    def _call(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    def _eval_layout(self) -> bool | None:
        """Channels-last for evaluation: as configured on CUDA; on a CPU wherever it helps
        (None: conv weights switch layout for the pass only, see ``channels_last_plan``)."""
        if self.device.type == "cuda":
            return self.cfg.channels_last
        return None if self.device.type == "cpu" else False

    def evaluate(self, loader, return_logits: bool = False) -> dict:
        """Evaluate the deployed network on ``loader`` (whole set)."""
        t0 = time.perf_counter()
        if self.distributed:  # every rank evaluates everything, with rank 0's BN statistics
            distributed.broadcast_buffers(self.model)
        out = evaluate(self.model, loader, device=self.device, amp=self.cfg.amp,
                       return_logits=return_logits,
                       forward=self.eval_forward if self.eval_forward is not None
                       else self._plain_forward if self.distributed else self.forward,
                       channels_last=self._eval_layout())
        self.timers["eval"] += time.perf_counter() - t0
        return out

    # ----------------------------------------------------------------- training
    def fit(self, loader, epochs: int, *, val_loader=None, eval_loaders: dict | None = None,
            stage: int | None = None, select: str | None = None,
            patience: int | None = None, reset_optimizer: bool = False,
            epoch_evals: tuple[str, ...] | None = None) -> dict:
        """Train one stage for ``epochs`` epochs and return the stage's metrics.

        Args:
            loader: training loader (``set_epoch`` seeds order and augmentation).
            val_loader: validation data for selection and early stopping.
            eval_loaders: further named loaders evaluated at the end of the stage (e.g.
                ``{"test": ..., "train": ...}``).
            epoch_evals: names in ``eval_loaders`` also evaluated every ``train.eval_every``
                epochs, for learning curves (default ``train.curves``: none; validation data
                always is, for selection and early stopping).
            stage: stage index (default: the next one).
            select: ``best`` (best validation epoch) or ``last``; default from config.
            patience: early stopping patience in evaluations; default from config.
            reset_optimizer: start this stage with fresh optimizer state.
        """
        stage = self.stage + 1 if stage is None else stage
        if not self._started:
            self._start()
        r = self._resume
        if r is not None and (stage < r["stage"] or (stage == r["stage"] and r["stage_done"])):
            return self.history[stage]
        select = select or self.cfg.select
        patience = self.cfg.patience if patience is None else patience
        if select == "best" and val_loader is None:
            raise UnderbudgetError(
                "train.select=best needs validation data: set data.val_fraction > 0"
            )
        self.stage, self.loader = stage, loader
        self.steps_per_epoch = _length(loader)
        self.total_steps = epochs * self.steps_per_epoch
        start_epoch = 0
        t0 = time.perf_counter()
        if r is not None and stage == r["stage"]:
            start_epoch = int(r["epoch"])
            self.stage_start_step = int(r.get("stage_start_step", self.step))
            self.scheduler = build_scheduler(self.optimizer, self.optim_cfg,
                                             self.steps_per_epoch, epochs)
            if r["scheduler"] is not None:
                self.scheduler.load_state_dict(r["scheduler"])
                for group, lr in zip(self.optimizer.param_groups, self.scheduler.get_last_lr()):
                    group["lr"] = lr
            self._best, self._es = r["best"], {**fresh_selection(), **r["es"]}
            self._last = dict(r.get("last") or {})
            self._resume = None
        else:
            self._resume = None
            if reset_optimizer and stage > 0:
                self.optimizer = self._build_optimizer()
            self.scheduler = build_scheduler(self.optimizer, self.optim_cfg,
                                             self.steps_per_epoch, epochs)
            self._best, self._es = None, fresh_selection()
            self.epoch = 0
            self.stage_start_step = self.step
            self._call("before_stage", stage)
        if self.distributed:  # this rank's slice of each global batch, DDP, same masks
            self._parallel = StageParallel(self, loader)
        eval_loaders = dict(eval_loaders or {})
        if epoch_evals is None:
            epoch_evals = tuple(self.cfg.curves)
        stopped_early = False
        last: dict = self._last if start_epoch > 0 else {}
        for epoch in range(start_epoch, epochs):
            self.epoch = epoch
            last = self._train_epoch(loader, epochs)
            if self._due(epoch, epochs):
                # validation every eval_every epochs only where it chooses something (best
                # epoch, early stopping) or is asked for as a curve; else once, at the end
                validate = val_loader is not None and (
                    epoch == epochs - 1 or select == "best" or patience is not None
                    or "val" in self.cfg.curves)
                if validate:
                    last.update(_prefixed("val", self.evaluate(val_loader)))
                if self.cfg.eval_every > 0:
                    for name in epoch_evals:
                        if name in eval_loaders:
                            last.update(_prefixed(name, self.evaluate(eval_loaders[name])))
                if validate:
                    stopped_early = self._track_best(last, epoch, select, patience)
            self.log("epoch", **last)
            self._print_epoch(last, epochs)
            self._call("after_epoch", last)
            self.epoch = epoch + 1
            self._last = last
            if stopped_early:
                self.log("early_stop", selected_epoch=self._es["best_epoch"] + 1)
                break
            self._checkpoint(stage_done=False)
        if self._parallel is not None:
            self._parallel, parallel = None, self._parallel
            parallel.end(self._plain_forward)
        restored = (select == "best" and self._best is not None
                    and self._best["epoch"] != self.epoch - 1)
        if restored:
            self._restore_best()
        metrics = self._stage_metrics(last, epochs, val_loader, eval_loaders, stopped_early, t0,
                                      reuse=not restored, select=select)
        self._call("after_stage", stage, metrics)
        self.log("stage_end", **metrics)
        self.history.append(metrics)
        self._best = None
        self._checkpoint(stage_done=True)
        return metrics

    def finish(self) -> None:
        """End of the run: call ``after_run`` hooks."""
        if not self._started:
            self._start()
        self._call("after_run")

    def _due(self, epoch: int, epochs: int) -> bool:
        every = self.cfg.eval_every
        return epoch == epochs - 1 or (every > 0 and (epoch + 1) % every == 0)

    @property
    def stage_end_step(self) -> int:
        """The global step count at which the current stage is planned to end."""
        return self.stage_start_step + self.total_steps

    def _train_epoch(self, loader, epochs: int) -> dict:
        self.model.train()
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(self.stage * 100_003 + self.epoch)
        self._call("before_epoch")
        dev = self.device
        loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
        correct = torch.zeros((), dtype=torch.int64, device=dev)
        seen = 0
        t0 = time.perf_counter()
        par = self._parallel
        bar = self._progress(loader if par is None else par.shard, epochs)
        for i, batch in enumerate(bar):
            x, y = batch[0].to(dev, non_blocking=True), batch[1].to(dev, non_blocking=True)
            self.step_examples = int(y.shape[0]) if par is None else int(batch[2])
            if self.cfg.channels_last and dev.type == "cuda" and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            self._call("before_step", (x, y))
            with autocast(dev, self.cfg.amp):
                loss, logits = self.loss_fn(self, x, y)
            self.optimizer.zero_grad(set_to_none=True)
            if par is None:
                loss.backward()
            else:  # gradients all-reduced by DDP
                par.backward(loss, int(y.shape[0]), self.step_examples)
            self._call("before_optimizer_step")  # masks gradients: clip what will be applied
            if self.cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            self.step += 1
            self._call("after_optimizer_step")
            loss = loss.detach()
            self._call("after_step", {"loss": loss, "logits": logits.detach(), "labels": y})
            loss_sum += loss.double() * y.numel()
            correct += (logits.detach().argmax(1) == y).sum()
            seen += y.numel()
            if par is not None and i == 0:
                par.check()
            if (i + 1) % 25 == 0 or i + 1 == len(loader):
                if par is None:
                    self._guard(float(loss_sum.item()) / max(1, seen))
                else:  # the same decision on every rank
                    total, _, n = par.totals(loss_sum, correct, seen)
                    self._guard(total / max(1, n))
            if hasattr(bar, "set_postfix") and (i + 1) % 10 == 0:
                bar.set_postfix(loss=f"{float(loss):.3f}", refresh=False)
        self.timers["train"] += time.perf_counter() - t0
        if par is None:
            loss_total, right, seen = float(loss_sum.item()), int(correct.item()), seen
        else:
            par.check()
            loss_total, right, seen = par.totals(loss_sum, correct, seen)
        return {
            "train_loss": loss_total / max(1, seen),
            "train_acc_running": right / max(1, seen),
            "lr": self.optimizer.param_groups[0]["lr"],
            "epoch_time": time.perf_counter() - t0,
        }

    def _guard(self, mean_loss: float) -> None:
        if not math.isfinite(mean_loss) or mean_loss > self.cfg.max_loss:
            self.log("diverged", loss=mean_loss if math.isfinite(mean_loss) else str(mean_loss))
            raise DivergedError(
                f"training diverged at stage {self.stage}, epoch {self.epoch}, step {self.step}: "
                f"mean loss {mean_loss}; lower optim.lr, set train.grad_clip, or raise "
                f"train.max_loss"
            )

    def _stage_metrics(self, last: dict, epochs: int, val_loader, eval_loaders: dict,
                       stopped_early: bool, t0: float, reuse: bool, select: str) -> dict:
        """Evaluate the stage's final (or restored best) weights; reuse the last epoch's
        evaluation when the weights are those it saw."""
        metrics = {"stage": self.stage, "epochs_run": self.epoch, "planned_epochs": epochs,
                   "stopped_early": stopped_early, **self._selection(select),
                   "train_loss": last.get("train_loss"), "steps": self.step}
        named = dict(eval_loaders)
        if val_loader is not None:
            named = {"val": val_loader, **named}
        for name, ev in named.items():
            if reuse and f"{name}_acc" in last:
                metrics.update({k: v for k, v in last.items() if k.startswith(f"{name}_")})
            else:
                metrics.update(_prefixed(name, self.evaluate(ev)))
        metrics["stage_time"] = time.perf_counter() - t0
        metrics["time_train"] = self.timers["train"]
        metrics["time_eval"] = self.timers["eval"]
        return metrics

    # ----------------------------------------------------------------- progress
    def _progress(self, loader, epochs: int):
        if not self.cfg.progress or not sys.stderr.isatty() or not distributed.is_main_process():
            return loader
        from tqdm.auto import tqdm

        return tqdm(loader, total=len(loader), leave=False, dynamic_ncols=True,
                    desc=f"stage {self.stage} epoch {self.epoch + 1}/{epochs}")

    def _print_epoch(self, m: dict, epochs: int) -> None:
        if not self.cfg.progress or not distributed.is_main_process():
            return
        parts = [f"stage {self.stage} epoch {self.epoch + 1}/{epochs}",
                 f"loss {m['train_loss']:.4f}", f"train {100 * m['train_acc_running']:.2f}%"]
        for key in sorted(k for k in m if k.endswith("_acc") and k != "train_acc_running"):
            parts.append(f"{key[:-4]} {100 * m[key]:.2f}%")
        parts.append(f"{m['epoch_time']:.1f}s")
        print("  ".join(parts), file=sys.stderr, flush=True)


def _length(loader) -> int:
    """Batches per epoch of a loader (any sized iterable of ``(inputs, targets)`` batches)."""
    try:
        return len(loader)
    except TypeError:
        raise UnderbudgetError(
            f"the training loader ({type(loader).__name__}) has no length; pass a sized "
            "iterable of (inputs, targets) batches, e.g. a torch DataLoader over a map-style "
            "Dataset, so the LR schedule and sparsity schedules know the steps per epoch"
        ) from None


def _prefixed(prefix: str, result: dict) -> dict:
    return {f"{prefix}_{k}": v for k, v in result.items() if k in ("loss", "acc", "errors", "n")}
