"""Label mapping: read a source model's logits as target-class logits (visual prompting).

A mapping is a LongTensor ``m`` of length ``num_target`` with ``m[t] = s``: target class
``t`` is read from source logit ``s``; it is always injective (one-to-one), which requires
``num_target <= num_source``.

- RLM: a seeded random injective map, never updated.
- FLM: from the count matrix ``D[s, t]`` (un-augmented training images of target class ``t``
  that the prompted source model predicts as ``s``), computed once before training.
- ILM: the FLM map recomputed at the start of every epoch with the current prompt.

Assignment from ``D``: ``"greedy"`` (repeat ``num_target`` times: take the largest remaining
entry, assign that pair, blank its row and column; ties go to the smallest source index, then
the smallest target index, i.e. the first maximum in row-major order) or ``"hungarian"``
(an optimal one-to-one map maximising the total count; among several optima the
lexicographically smallest map: ``m[0]`` as small as possible, then ``m[1]``, and so on).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from underbudget.errors import ConfigError, DataError, unknown
from underbudget.utils.seeding import generator

MODES = ("rlm", "flm", "ilm")
ASSIGNMENTS = ("greedy", "hungarian")


def check_class_counts(num_target: int, num_source: int) -> None:
    """Raise one clear ConfigError unless ``1 <= num_target <= num_source``."""
    if num_target < 1 or num_source < 1:
        raise ConfigError(
            f"label mapping needs at least one class, got num_target={num_target}, "
            f"num_source={num_source}"
        )
    if num_target > num_source:
        raise ConfigError(
            f"the target task has {num_target} classes but the source model outputs only "
            f"{num_source}; a one-to-one label mapping needs num_target <= num_source: use a "
            "source model with more classes, or transfer by linear probing or fine-tuning"
        )


def random_mapping(num_target: int, num_source: int, seed: int) -> Tensor:
    """A seeded random injective map: the first ``num_target`` entries of a permutation."""
    check_class_counts(num_target, num_source)
    return torch.randperm(num_source, generator=generator(seed, "rlm"))[:num_target].clone()


def count_matrix(
    source_preds: Tensor, target_labels: Tensor, num_source: int, num_target: int
) -> Tensor:
    """``D[s, t]`` = number of samples with target label ``t`` predicted as source class ``s``."""
    preds = torch.as_tensor(source_preds).reshape(-1).long()
    labels = torch.as_tensor(target_labels).reshape(-1).long().to(preds.device)
    if preds.numel() != labels.numel():
        raise DataError(f"{preds.numel()} predictions but {labels.numel()} labels")
    if preds.numel() and (preds.min() < 0 or preds.max() >= num_source):
        raise DataError(f"source predictions must lie in [0, {num_source})")
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_target):
        raise DataError(
            f"target labels must lie in [0, {num_target}); found {int(labels.min())}.."
            f"{int(labels.max())}: check num_target"
        )
    flat = preds * num_target + labels
    counts = torch.bincount(flat, minlength=num_source * num_target)
    return counts.reshape(num_source, num_target)


def _check_matrix(D: Tensor) -> Tensor:
    D = torch.as_tensor(D)
    if D.dim() != 2:
        raise ConfigError(f"a count matrix must be 2-D (source × target), got {tuple(D.shape)}")
    check_class_counts(D.shape[1], D.shape[0])
    return D


def greedy_mapping(D: Tensor) -> Tensor:
    """FLM's greedy one-to-one map from ``D[s, t]``; ties: smallest ``s``, then smallest ``t``."""
    work = _check_matrix(D).detach().to("cpu", torch.float64).clone()
    num_source, num_target = work.shape
    mapping = torch.empty(num_target, dtype=torch.long)
    for _ in range(num_target):
        flat = int(torch.argmax(work))
        s, t = divmod(flat, num_target)
        mapping[t] = s
        work[s, :] = float("-inf")
        work[:, t] = float("-inf")
    return mapping


def _min_cost_assignment(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Assign each row to a distinct column minimising total cost (rows <= columns).

    Shortest augmenting paths with row/column potentials (Kuhn-Munkres in the O(n^2 m) form),
    with the scan over columns vectorised. Returns the column of each row and the final
    potentials ``u`` (rows) and ``v`` (columns): an optimal dual, ``u_i + v_j <= cost_ij``
    with equality on the assignment and ``v_j = 0`` on every column left unassigned.
    """
    n, m = cost.shape
    u = np.zeros(n + 1)
    v = np.zeros(m + 1)
    match = np.zeros(m + 1, dtype=np.int64)  # match[j]: 1-based row on column j (0: free)
    way = np.zeros(m + 1, dtype=np.int64)
    for i in range(1, n + 1):
        match[0] = i
        j0 = 0
        minv = np.full(m + 1, np.inf)
        used = np.zeros(m + 1, dtype=bool)
        while True:
            used[j0] = True
            i0 = match[j0]
            reduced = cost[i0 - 1] - u[i0] - v[1:]
            free = ~used[1:]
            better = free & (reduced < minv[1:])
            minv[1:][better] = reduced[better]
            way[1:][better] = j0
            candidates = np.where(free, minv[1:], np.inf)
            j1 = int(np.argmin(candidates)) + 1
            delta = candidates[j1 - 1]
            cols = np.nonzero(used)[0]
            u[match[cols]] += delta
            v[cols] -= delta
            minv[1:][free] -= delta
            j0 = j1
            if match[j0] == 0:
                break
        while j0:
            j1 = way[j0]
            match[j0] = match[j1]
            j0 = j1
    rows_to_cols = np.empty(n, dtype=np.int64)
    for j in range(1, m + 1):
        if match[j]:
            rows_to_cols[match[j] - 1] = j - 1
    return rows_to_cols, u[1:], v[1:]


def _routes_to(
    goal: int, tight: np.ndarray, col_of: np.ndarray, row_of: np.ndarray, may_be_free: np.ndarray
) -> np.ndarray:
    """For every column, the next column on a chain of moves that ends by filling ``goal``.

    The holder of a column may move to another column along a tight edge; a free column's
    "holder" is the slack, which may take any column whose potential is 0 (leaving it free).
    ``next[c] = c'``: the holder of ``c`` moves to ``c'``, whose holder moves on, and so on
    until someone moves into ``goal``; -1 where no chain exists. Breadth-first from ``goal``
    over the rows left in ``tight`` (the rows that may still move).
    """
    nxt = np.full(row_of.shape[0], -1, dtype=np.int64)
    reached = np.zeros(row_of.shape[0], dtype=bool)
    reached[goal] = True
    queue = [goal]
    slack_used = False  # the slack reaches every free column at once, so only once
    while queue:
        following = []
        for col in queue:
            for row in np.nonzero(tight[:, col])[0]:
                held = int(col_of[row])
                if not reached[held]:
                    reached[held], nxt[held] = True, col
                    following.append(held)
            if may_be_free[col] and not slack_used:
                slack_used = True
                free = (row_of < 0) & ~reached
                reached[free], nxt[free] = True, col
                following.extend(np.nonzero(free)[0].tolist())
        queue = following
    return nxt


def _smallest_optimal(cost: np.ndarray) -> np.ndarray:
    """Among all assignments of minimal total cost, the lexicographically smallest column list.

    One Kuhn-Munkres solve gives an optimum and an optimal dual; every optimal assignment uses
    only edges of zero reduced cost (tight edges) and leaves free only columns whose potential
    is 0, and two optima differ by exchanges along such edges. Row by row, the row takes the
    smallest tight column ``s`` for which a chain of exchanges frees it and refills the row's
    own column without touching the rows already decided; the assignment stays optimal.
    """
    n, m = cost.shape
    col_of, u, v = _min_cost_assignment(cost)
    tol = 1e-9 * max(1.0, float(np.abs(cost).max()))
    tight = np.abs(cost - u[:, None] - v[None, :]) <= tol
    may_be_free = np.abs(v) <= tol
    row_of = np.full(m, -1, dtype=np.int64)
    row_of[col_of] = np.arange(n)
    for t in range(n):
        own = int(col_of[t])
        candidates = tight[t, :own].copy()
        candidates[col_of[:t][col_of[:t] < own]] = False  # columns of the decided rows
        candidates = np.nonzero(candidates)[0]
        if candidates.size == 0:
            continue
        movable = tight.copy()
        movable[: t + 1] = False  # rows up to t keep their columns from here on
        nxt = _routes_to(own, movable, col_of, row_of, may_be_free)
        open_candidates = candidates[nxt[candidates] >= 0]
        if open_candidates.size == 0:
            continue
        col = int(open_candidates[0])
        moves = [(t, col)]
        while col != own:
            moves.append((int(row_of[col]), int(nxt[col])))
            col = int(nxt[col])
        for row, col in moves:
            if row >= 0:
                col_of[row] = col
            row_of[col] = row
    return col_of


def hungarian_mapping(D: Tensor) -> Tensor:
    """An optimal one-to-one map maximising ``sum_t D[m[t], t]``; ties broken by a rule.

    Among all optimal maps it returns the lexicographically smallest one: ``m[0]`` as small
    as any optimum allows, then ``m[1]``, and so on, so the answer never depends on the solver
    or the machine. Built in (numpy); scipy is not needed.
    """
    scores = _check_matrix(D).detach().to("cpu", torch.float64).numpy().T  # (target, source)
    return torch.from_numpy(_smallest_optimal(-scores))


def assign(D: Tensor, assignment: str = "greedy") -> Tensor:
    """Map from a count matrix with the named assignment rule."""
    if assignment == "greedy":
        return greedy_mapping(D)
    if assignment == "hungarian":
        return hungarian_mapping(D)
    raise unknown("label assignment", assignment, ASSIGNMENTS)


def _split_batch(batch: Any) -> tuple[Tensor, Tensor]:
    if isinstance(batch, dict):
        x = next((batch[k] for k in ("x", "input", "inputs", "image") if k in batch), None)
        y = next((batch[k] for k in ("y", "target", "targets", "label") if k in batch), None)
        if x is None or y is None:
            raise DataError(f"cannot find inputs and labels in a batch with keys {sorted(batch)}")
        return x, y
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise DataError("label mapping needs labelled batches: (x, y) tuples or {'x', 'y'} dicts")


def _device_of(obj: Any, default: torch.device) -> torch.device:
    module = obj if isinstance(obj, nn.Module) else getattr(obj, "__self__", None)
    if isinstance(module, nn.Module):
        for t in list(module.parameters()) + list(module.buffers()):
            return t.device
    return default


class LabelMapper(nn.Module):
    """Holds the current target→source map and recomputes it as its mode prescribes.

    The map is the buffer ``mapping`` (saved with the model). Diagnostics: ``history`` (every
    map so far, the initial one first), ``changes`` (classes whose source changed, per update)
    and ``counts`` (the last count matrix). Before the first FLM/ILM update the map is the
    seeded random one.
    """

    def __init__(
        self,
        num_source: int,
        num_target: int,
        mode: str = "ilm",
        assignment: str = "greedy",
        seed: int = 0,
    ):
        super().__init__()
        if mode not in MODES:
            raise unknown("label mapping mode", mode, MODES)
        if assignment not in ASSIGNMENTS:
            raise unknown("label assignment", assignment, ASSIGNMENTS)
        check_class_counts(num_target, num_source)
        self.num_source = num_source
        self.num_target = num_target
        self.mode = mode
        self.assignment = assignment
        self.seed = seed
        self.register_buffer("mapping", random_mapping(num_target, num_source, seed))
        self.history: list[list[int]] = [self.mapping.tolist()]
        self.changes: list[int] = []
        self.counts: Tensor | None = None

    @property
    def fitted(self) -> bool:
        """Whether a data-driven (FLM/ILM) map has been computed."""
        return bool(self.changes)

    def map_logits(self, source_logits: Tensor) -> Tensor:
        """Target logits: column ``t`` is source column ``mapping[t]``."""
        if source_logits.shape[-1] != self.num_source:
            raise ConfigError(
                f"the source model gives {source_logits.shape[-1]} logits but the label mapper "
                f"was built for num_source={self.num_source}"
            )
        return source_logits.index_select(-1, self.mapping)

    forward = map_logits

    def set_mapping(self, mapping: Tensor, counts: Tensor | None = None) -> int:
        """Install a new map; record it and return how many target classes changed source."""
        mapping = torch.as_tensor(mapping, dtype=torch.long).reshape(-1)
        if mapping.numel() != self.num_target or mapping.unique().numel() != self.num_target:
            raise ConfigError(f"a label mapping must be {self.num_target} distinct source ids")
        if mapping.min() < 0 or mapping.max() >= self.num_source:
            raise ConfigError(f"source ids must lie in [0, {self.num_source})")
        changed = int((mapping.to(self.mapping.device) != self.mapping).sum())
        self.mapping.copy_(mapping)
        self.history.append(mapping.tolist())
        self.changes.append(changed)
        if counts is not None:
            self.counts = counts.detach().cpu()
        return changed

    @torch.no_grad()
    def compute_counts(self, model: Callable[[Tensor], Tensor], data: Iterable[Any]) -> Tensor:
        """Count matrix of ``model``'s source predictions against the target labels in ``data``.

        ``model`` returns SOURCE logits; an object with a ``source_logits`` method (such as
        :class:`~underbudget.transfer.heads.VisualPrompt`) is called through that method. It is
        run in eval mode and put back in its previous mode.
        """
        fn = getattr(model, "source_logits", model)
        module = model if isinstance(model, nn.Module) else None
        was_training = module.training if module is not None else False
        device = _device_of(model, self.mapping.device)
        counts = torch.zeros(self.num_source, self.num_target, dtype=torch.long)
        if module is not None:
            module.eval()
        try:
            for batch in data:
                x, y = _split_batch(batch)
                preds = fn(x.to(device)).argmax(dim=-1).cpu()
                counts += count_matrix(preds, y.cpu(), self.num_source, self.num_target)
        finally:
            if module is not None:
                module.train(was_training)
        if counts.sum() == 0:
            raise DataError("label mapping saw no data: pass a non-empty training loader")
        return counts

    def update(
        self, model: Callable[[Tensor], Tensor], data: Iterable[Any], force: bool = False
    ) -> int:
        """Recompute the map as the mode says; return the number of changed classes.

        RLM: never (returns 0). FLM: on the first call only (or when ``force``). ILM: always.
        """
        if self.mode == "rlm" or (self.mode == "flm" and self.fitted and not force):
            return 0
        counts = self.compute_counts(model, data)
        return self.set_mapping(assign(counts, self.assignment), counts)

    def diagnostics(self) -> dict:
        """The final map, its history, changes per update and the last count matrix."""
        return {
            "mode": self.mode,
            "assignment": self.assignment,
            "mapping": self.mapping.tolist(),
            "history": [list(m) for m in self.history],
            "changes": list(self.changes),
            "counts": self.counts.tolist() if self.counts is not None else None,
        }

    def load_diagnostics(self, state: dict) -> None:
        """Restore what :meth:`diagnostics` returned (map included), e.g. on resume."""
        self.mapping.copy_(torch.as_tensor(state["mapping"], dtype=torch.long))
        self.history = [list(m) for m in state["history"]]
        self.changes = list(state["changes"])
        counts = state.get("counts")
        self.counts = torch.as_tensor(counts, dtype=torch.long) if counts is not None else None

    def extra_repr(self) -> str:
        return (
            f"num_source={self.num_source}, num_target={self.num_target}, mode={self.mode!r}, "
            f"assignment={self.assignment!r}"
        )
