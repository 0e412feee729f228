"""How the masks evolve: one ``mask_evolution`` event per mask update of either network.

Logged for each network X (``fast``/``slow``): the global and per-layer density, the IoU with
X's initial mask, the fraction of weights ever active (in-time over-parameterisation), the
survival of regrown weights (of the weights X grew at its previous update, the fraction still
alive after this one) and the fraction of all weights X ever regrew that are alive now; and,
with two networks, the IoU of F's and S's masks (global and per layer). Layers are named
without the network prefix, so F's and S's layers line up.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ...train.callbacks import Callback


def _count(masks: dict[str, Tensor]) -> int:
    return sum(int(m.count_nonzero()) for m in masks.values())


def iou(a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    """Intersection over union of two mask dicts with the same names."""
    inter = sum(int((a[n] & b[n].to(a[n].device)).count_nonzero()) for n in a)
    union = sum(int((a[n] | b[n].to(a[n].device)).count_nonzero()) for n in a)
    return inter / union if union else 1.0


class MaskEvolution(Callback):
    """Measures the masks of ``sources`` (``{which: obj}`` with ``.masks``, ``.steps`` and
    ``.last_update``, e.g. the dynamic callbacks) after every update they make."""

    name = "d2_evolution"

    def __init__(self, sources: dict[str, Any], prefixes: dict[str, str], total_steps: int):
        self.sources = sources
        self.prefixes = prefixes
        self.total_steps = max(1, int(total_steps))
        self.state: dict[str, dict[str, Any]] = {}
        self.last: dict[str, Any] = {}

    def _plain(self, which: str) -> dict[str, Tensor]:
        cut = len(self.prefixes[which])
        return {n[cut:]: m.detach().clone() for n, m in self.sources[which].masks.items()}

    def _start(self) -> None:
        for which in self.sources:
            cur = self._plain(which)
            self.state[which] = {
                "initial": cur,
                "ever": {n: m.clone() for n, m in cur.items()},
                "previous": {n: m.clone() for n, m in cur.items()},
                "regrown": {n: torch.zeros_like(m) for n, m in cur.items()},
                "last_grown": {n: torch.zeros_like(m) for n, m in cur.items()},
                "updates": 0,
                "survival": None,
            }

    def before_stage(self, trainer: Any, stage: int) -> None:
        if not self.state:
            self._start()
            self._log(trainer, [])

    def before_optimizer_step(self, trainer: Any) -> None:
        if not self.state:
            self._start()
        updated = [
            w
            for w, src in self.sources.items()
            if src.last_update.get("update_step") == src.steps
            and self.state[w].get("seen") != src.steps
        ]
        for which in updated:
            self._record(which, self.sources[which].steps)
        if updated:
            self._log(trainer, updated)

    def after_stage(self, trainer: Any, stage: int, metrics: dict) -> None:
        """Close the curves at the end of training (no update, just the measures)."""
        if self.state and self.last.get("_step") != int(getattr(trainer, "step", 0)):
            self._log(trainer, [])

    def _record(self, which: str, step: int) -> None:
        st = self.state[which]
        cur = self._plain(which)
        grown = {n: cur[n] & ~st["previous"][n] for n in cur}
        before = _count(st["last_grown"])
        if before:
            kept = sum(int((st["last_grown"][n] & cur[n]).count_nonzero()) for n in cur)
            st["survival"] = kept / before
        st["regrown"] = {n: st["regrown"][n] | grown[n] for n in cur}
        st["last_grown"] = grown
        st["ever"] = {n: st["ever"][n] | cur[n] for n in cur}
        st["previous"] = cur
        st["updates"] += 1
        st["seen"] = step

    def measures(self) -> dict[str, Any]:
        """The current measures (what the next event would log, without step fields)."""
        out: dict[str, Any] = {}
        for which, st in self.state.items():
            cur = self._plain(which)
            total = sum(m.numel() for m in cur.values())
            regrown = _count(st["regrown"])
            out[f"{which}_density"] = _count(cur) / max(total, 1)
            out[f"{which}_layer_density"] = {
                n: int(m.count_nonzero()) / max(m.numel(), 1) for n, m in cur.items()
            }
            out[f"{which}_iou_initial"] = iou(cur, st["initial"])
            out[f"{which}_ever_active"] = _count(st["ever"]) / max(total, 1)
            out[f"{which}_survival"] = st["survival"]
            out[f"{which}_regrown_alive"] = (
                sum(int((st["regrown"][n] & cur[n]).count_nonzero()) for n in cur) / regrown
                if regrown
                else None
            )
            out[f"{which}_updates"] = st["updates"]
        if "fast" in self.state and "slow" in self.state:
            f, s = self._plain("fast"), self._plain("slow")
            out["iou_fast_slow"] = iou(f, s)
            out["layer_iou_fast_slow"] = {n: iou({n: f[n]}, {n: s[n]}) for n in f}
        return out

    def _log(self, trainer: Any, updated: list[str]) -> None:
        values = self.measures()
        step = int(getattr(trainer, "step", 0))
        self.last = {**values, "_step": step}
        log = getattr(trainer, "log", None)
        if log is not None:
            log(
                "mask_evolution", step=step, frac=step / self.total_steps, updated=updated, **values
            )

    def state_dict(self) -> dict:
        out = {}
        for which, st in self.state.items():
            out[which] = {k: v for k, v in st.items() if k not in ("survival", "seen")}
            out[which]["survival"] = -1.0 if st["survival"] is None else st["survival"]
            out[which]["seen"] = int(st.get("seen", -1))
        return out

    def load_state_dict(self, state: dict) -> None:
        self.state = {}
        for which, st in state.items():
            st = dict(st)
            st["survival"] = None if st["survival"] < 0 else float(st["survival"])
            st["updates"] = int(st["updates"])
            self.state[which] = st
