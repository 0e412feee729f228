"""Which epoch a training stage ends with: the best validation epoch among those that meet
every callback's constraints, early-stopping patience, and the record of the choice (a mixin
of :class:`~underbudget.train.trainer.Trainer`)."""

from __future__ import annotations

import copy
import math


def fresh_selection() -> dict:
    """Best-epoch and early-stopping bookkeeping of a stage."""
    return {"best": -math.inf, "bad": 0, "best_epoch": -1, "excluded": 0, "candidates": 0}


class EpochSelection:
    """Best-epoch tracking and restoring for a :class:`~underbudget.train.trainer.Trainer`."""

    def meets_constraints(self) -> bool:
        """Whether the current model satisfies every callback's end-of-stage constraint."""
        return all(cb.meets_constraints(self) for cb in self.callbacks)

    def _track_best(self, metrics: dict, epoch: int, select: str, patience: int | None) -> bool:
        """Track the best validation epoch among those that meet the constraints.

        An epoch whose model does not yet meet them (e.g. a pruning schedule still running)
        is neither a candidate nor counted against early-stopping patience.
        """
        met = self.meets_constraints()
        metrics["meets_constraints"] = met
        if not met:
            self._es["excluded"] += 1
            return False
        self._es["candidates"] += 1
        val = metrics.get("val_acc", -math.inf)
        if val > self._es["best"] + self.cfg.min_delta or self._es["best_epoch"] < 0:
            self._es.update(best=val, bad=0, best_epoch=epoch)
            if select == "best":
                self._best = {
                    "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
                    "weight_state": copy.deepcopy(
                        {cb.key: cb.weight_state() for cb in self.callbacks}),
                    "epoch": epoch,
                }
        else:
            self._es["bad"] += 1
        return patience is not None and self._es["bad"] >= patience

    def _restore_best(self) -> None:
        """Load the best epoch's weights and what belongs to them; counters stay as they are."""
        self.model.load_state_dict(self._best["model"])
        saved = self._best.get("weight_state") or {}
        for cb in self.callbacks:
            if saved.get(cb.key):
                cb.load_weight_state(saved[cb.key])

    def _selection(self, select: str) -> dict:
        """Which epoch's weights the stage ends with, in the numbering progress lines print."""
        es = self._es
        chosen = select == "best" and self._best is not None
        return {
            "selection": "best" if chosen else "last",
            "selected_epoch": self._best["epoch"] + 1 if chosen else self.epoch,
            "selection_constrained": es["excluded"] > 0,
            "candidate_epochs": es["candidates"],
            "selection_fallback": select == "best" and not chosen,
        }
