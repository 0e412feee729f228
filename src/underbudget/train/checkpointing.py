"""The trainer's checkpoints: everything needed to continue exactly, saved at each epoch
end, and the resume from them when a run starts again (a mixin of
:class:`~underbudget.train.trainer.Trainer`)."""

from __future__ import annotations

import sys

from ..errors import UnderbudgetError
from ..utils.seeding import rng_state, set_rng_state
from . import distributed


class Checkpointing:
    """Saving and resuming a :class:`~underbudget.train.trainer.Trainer`'s state."""

    def state_dict(self) -> dict:
        """Everything needed to continue exactly (model, optimizer, RNG, callbacks...)."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "rng": rng_state(),
            "stage": self.stage,
            "epoch": self.epoch,
            "step": self.step,
            "stage_start_step": self.stage_start_step,
            "stage_done": False,
            "history": self.history,
            "callbacks": {cb.key: cb.state_dict() for cb in self.callbacks},
            "best": self._best,
            "es": dict(self._es),
            "last": self._last,
            "timers": dict(self.timers),
        }

    def _checkpoint(self, stage_done: bool) -> None:
        if self.run is None or not self.cfg.checkpoint or not distributed.is_main_process():
            return
        state = self.state_dict()
        state["stage_done"] = stage_done
        self.run.save_checkpoint(state)

    def _start(self) -> None:
        keys = [cb.key for cb in self.callbacks]
        clash = sorted({k for k in keys if keys.count(k) > 1})
        if clash:
            raise UnderbudgetError(
                f"two callbacks share the checkpoint key {clash[0]!r}; give each its own "
                "`name` so their states are saved apart")
        self._started = True
        if self.run is not None and self.cfg.checkpoint:
            self._resume = self.run.load_checkpoint()
        self.resumed = self._resume is not None
        self._call("before_run")
        if self._resume is None:
            return
        r = self._resume
        self.model.load_state_dict(r["model"])
        self.optimizer.load_state_dict(r["optimizer"])
        self.step = int(r["step"])
        self.history = list(r["history"])
        self.timers.update(r.get("timers") or {})
        for cb in self.callbacks:
            if cb.key in r["callbacks"]:
                cb.load_state_dict(r["callbacks"][cb.key])
        set_rng_state(r["rng"])
        self.stage = int(r["stage"])
        self.log("resume", from_stage=int(r["stage"]), from_epoch=int(r["epoch"]))
        where = (f"after stage {int(r['stage'])}" if r["stage_done"] else
                 f"from stage {int(r['stage'])}, epoch {int(r['epoch']) + 1} "
                 f"({int(r['epoch'])} done)")
        if distributed.is_main_process():
            print(f"resuming {where}: {self.run.path}", file=sys.stderr, flush=True)
