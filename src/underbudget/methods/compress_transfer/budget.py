"""Target data budgets with a validation split that never touches the test set.

For one (budget, seed) every class of the target training pool is put in one seeded order
(the same order for every budget of that seed). With ``n`` images in a class:

- ``<k>shot``: train on the first ``b = k``; validate on the LAST ``v = min(k, val_cap)``;
- fraction ``f``: ``b = max(1, round(f * n))``, ``v = min(b, val_cap)``;
- ``full``: ``v = min(val_cap, max(1, round(full_val_fraction * n)))`` and ``b = n - v``.

Validation images come from the end of the order and training images from its start, so they
are disjoint, the validation set is never part of the training budget, and training budgets
are nested across k (and fractions) for one seed. When a class is too small for ``b + v``
the validation share shrinks to what is left; with nothing left the budget is refused.
"""

from __future__ import annotations

import torch

from ...data.budget import class_orders
from ...errors import DataError
from ...utils.seeding import derive_seed
from .config import Budget


def budget_split(
    labels: torch.Tensor,
    budget: Budget,
    seed: int,
    val_cap: int,
    full_val_fraction: float,
    classes: list[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted ``(train_idx, val_idx)`` into ``labels`` for ``budget`` and ``seed``."""
    orders = class_orders(labels, derive_seed(seed, "transfer-budget"))
    train, val = [], []
    for c, idx in sorted(orders.items()):
        n = idx.numel()
        name = f"class {classes[c]!r}" if classes and c < len(classes) else f"class {c}"
        if budget.kind == "kshot":
            b = int(budget.value)
            v = min(b, val_cap)
        elif budget.kind == "fraction":
            b = max(1, int(budget.value * n + 0.5))
            v = min(b, val_cap)
        else:
            v = min(val_cap, max(1, int(full_val_fraction * n + 0.5)))
            b = n - v
        v = min(v, n - b)
        if b < 1 or v < 1:
            raise DataError(
                f"budget {budget.label}: {name} has {n} training image(s), too few for "
                f"{max(b, 1)} to train on plus at least 1 for validation; lower the budget "
                "or raise method.target.limit"
            )
        train.append(idx[:b])
        val.append(idx[n - v :])
    return torch.sort(torch.cat(train)).values, torch.sort(torch.cat(val)).values
