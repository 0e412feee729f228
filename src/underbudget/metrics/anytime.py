"""Anytime metrics over a stream of T stages (megabatches).

With ``e_b`` the test errors after stage b (b = 1..T) on a fixed test set of size |test|:

- ``cer_count = sum_b e_b``: cumulative error, the area under the error-count curve (the
  number the public APP code reports; it grows with T and |test|);
- ``cer_rate = sum_b e_b / |test|``: the same area in error-rate units (grows with T);
- ``anytime_error = cer_rate / T``: the mean test error over stages, comparable across T.

Generalization gaps, each named for what it measures: ``gap_train_test`` (clean training
accuracy of the stage's data minus test accuracy, the spec's), ``gap_train_val`` (the same
minus validation accuracy) and ``gap_paper``: the gap the public APP code computes
(``gen_gap = acc - tacc`` in ``main_anytime_train.py``), the *running* training accuracy of an
epoch (averaged over its augmented mini-batches while the weights change) minus that epoch's
validation accuracy, taken at the last epoch of each stage as the code's logs are.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

from underbudget.metrics._inputs import MetricInputError


def _test_size(test_size: Any, fn: str) -> int:
    if isinstance(test_size, bool) or not isinstance(test_size, numbers.Integral) or test_size < 1:
        raise MetricInputError(f"{fn}: test_size must be a positive integer, got {test_size!r}")
    return int(test_size)


def _count(value: Any, what: str, test_size: int | None, fn: str) -> int:
    """An integral, non-negative error count not above the test size."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value != int(value) or value < 0:
        raise MetricInputError(f"{fn}: {what} must be a non-negative integer, got {value!r}")
    if test_size is not None and value > test_size:
        raise MetricInputError(
            f"{fn}: {what} = {int(value)} exceeds test_size = {test_size}; pass the size of the "
            "test set the errors were counted on"
        )
    return int(value)


def _errors(errors: Sequence[Any], test_size: int | None, fn: str) -> list[int]:
    if isinstance(errors, (str, bytes)) or not isinstance(errors, Sequence) or not errors:
        raise MetricInputError(f"{fn}: pass a non-empty list of per-stage test error counts")
    return [_count(e, f"errors[{i}]", test_size, fn) for i, e in enumerate(errors)]


def cer_count(errors: Sequence[int]) -> int:
    """Cumulative error count ``sum_b e_b`` over stages."""
    return sum(_errors(errors, None, "cer_count"))


def cer_rate(errors: Sequence[int], test_size: int) -> float:
    """Cumulative error rate ``sum_b e_b / |test|`` (grows with the number of stages)."""
    n = _test_size(test_size, "cer_rate")
    return sum(_errors(errors, n, "cer_rate")) / n


def anytime_error(errors: Sequence[int], test_size: int) -> float:
    """Mean test error over stages, ``cer_rate / T``; comparable across stream lengths."""
    n = _test_size(test_size, "anytime_error")
    e = _errors(errors, n, "anytime_error")
    return sum(e) / n / len(e)


def _fraction(stage: Mapping[str, Any], key: str, b: int, fn: str) -> float | None:
    """An accuracy-like value in [0, 1], or None when the stage does not report it."""
    value = stage.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
        raise MetricInputError(
            f"{fn}: stage {b} {key} must be a fraction in [0, 1], got {value!r} "
            "(percentages must be divided by 100)"
        )
    return float(value)


def _stage_errors(stage: Mapping[str, Any], b: int, test_size: int, fn: str) -> int:
    """A stage's ``test_errors``, or the count implied by ``test_acc`` when only that exists."""
    acc = _fraction(stage, "test_acc", b, fn)
    if stage.get("test_errors") is not None:
        e = _count(stage["test_errors"], f"stage {b} test_errors", test_size, fn)
        if acc is not None and abs((1.0 - acc) * test_size - e) > 0.5 + 1e-9 * test_size:
            raise MetricInputError(
                f"{fn}: stage {b} has test_errors = {e} but test_acc = {acc} on "
                f"test_size = {test_size} ({(1.0 - acc) * test_size:.1f} errors); pass the size "
                "of the test set these were measured on"
            )
        return e
    if acc is None:
        raise MetricInputError(f"{fn}: stage {b} has neither test_errors nor test_acc")
    return round((1.0 - acc) * test_size)


def gap_paper(train_acc_running: float, val_acc: float) -> float:
    """The APP code's generalization gap of one epoch: running training accuracy minus
    validation accuracy (fractions, not percentages)."""
    for what, v in (("train_acc_running", train_acc_running), ("val_acc", val_acc)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0 <= v <= 1:
            raise MetricInputError(
                f"gap_paper: {what} must be a fraction in [0, 1], got {v!r} "
                "(percentages must be divided by 100)")
    return float(train_acc_running) - float(val_acc)


def _running_total(stages: Sequence[Mapping[str, Any]], key: str, fn: str) -> Any:
    """The last stage's value of a cumulative counter, checked to never fall (or None)."""
    seen: list[float] = []
    for b, s in enumerate(stages, start=1):
        f = s.get(key)
        if f is None:
            continue
        if isinstance(f, bool) or not isinstance(f, numbers.Real) or not 0 <= f < math.inf:
            raise MetricInputError(f"{fn}: stage {b} {key} must be >= 0, got {f!r}")
        if seen and f < seen[-1]:
            raise MetricInputError(
                f"{fn}: {key} falls at stage {b} ({seen[-1]} -> {f}); it must be "
                "the running total, not the per-stage count"
            )
        seen.append(f)
    return stages[-1].get(key)


#: summary key -> the cumulative stage counter it totals
TOTALS = {
    "total_train_flops": "train_flops_cumulative",
    "total_prune_flops": "prune_flops_cumulative",
    "total_eval_flops": "eval_flops_cumulative",
    "total_flops_spent": "flops_spent_cumulative",
    "train_samples": "train_samples_cumulative",
    "prune_samples": "prune_samples_cumulative",
    "eval_samples": "eval_samples_cumulative",
    "wall_time_stages": "wall_time_cumulative",
}


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def anytime_summary(stages: Sequence[Mapping[str, Any]], test_size: int) -> dict[str, Any]:
    """The per-run anytime summary from per-stage records, in stage order.

    Each stage dict holds ``test_errors`` (int) and/or ``test_acc`` (fraction), and optionally
    ``train_acc``, ``val_acc``, ``density`` and ``train_flops_cumulative``. Returns:

    - ``num_stages`` (T), ``test_size``, ``test_errors`` (e_b per stage), ``cer_count``,
      ``cer_rate``, ``anytime_error``;
    - ``final_test_acc`` (stage T's ``test_acc``, else ``1 - e_T / |test|``);
    - ``gap_train_test`` (per stage, train_acc - test_acc), ``mean_gap_train_test`` and
      ``final_gap_train_test``; likewise ``gap_train_val`` for train_acc - val_acc and
      ``gap_paper`` for the stages' own ``gap_paper`` (see :func:`gap_paper`). A stage
      missing a value has ``None`` in the list; means are over the stages that have one;
    - ``final_density`` and the totals of the cumulative counters (stage T's value, checked
      never to fall, or ``None``): ``total_train_flops``, ``total_prune_flops``,
      ``total_eval_flops``, ``total_flops_spent``, ``train_samples``, ``prune_samples``,
      ``eval_samples`` and ``wall_time_stages``.
    """
    fn = "anytime_summary"
    n = _test_size(test_size, fn)
    if isinstance(stages, Mapping) or not isinstance(stages, Sequence) or not stages:
        raise MetricInputError(f"{fn}: pass a non-empty list of per-stage dicts, in stage order")
    for b, stage in enumerate(stages, start=1):
        if not isinstance(stage, Mapping):
            raise MetricInputError(f"{fn}: stage {b} must be a dict, got {type(stage).__name__}")

    errors = [_stage_errors(s, b, n, fn) for b, s in enumerate(stages, start=1)]
    test_acc = [_fraction(s, "test_acc", b, fn) for b, s in enumerate(stages, start=1)]
    test_acc = [1.0 - e / n if a is None else a for a, e in zip(test_acc, errors)]

    def gaps(key: str) -> list[float | None]:
        out = []
        for b, (s, ta) in enumerate(zip(stages, test_acc), start=1):
            train = _fraction(s, "train_acc", b, fn)
            other = ta if key == "test_acc" else _fraction(s, key, b, fn)
            out.append(None if train is None or other is None else train - other)
        return out

    gap_test, gap_val = gaps("test_acc"), gaps("val_acc")

    totals = {name: _running_total(stages, key, fn) for name, key in TOTALS.items()}
    paper = []
    for b, st in enumerate(stages, start=1):
        g = st.get("gap_paper")
        if g is not None and (isinstance(g, bool) or not isinstance(g, numbers.Real)
                              or not -1 <= g <= 1):
            raise MetricInputError(f"{fn}: stage {b} gap_paper must be in [-1, 1], got {g!r}")
        paper.append(None if g is None else float(g))

    density = stages[-1].get("density")
    if density is not None and (
        isinstance(density, bool) or not isinstance(density, numbers.Real) or not 0 <= density <= 1
    ):
        raise MetricInputError(f"{fn}: final density must be a fraction in [0, 1], got {density!r}")

    total = sum(errors)
    return {
        "num_stages": len(stages),
        "test_size": n,
        "test_errors": errors,
        "cer_count": total,
        "cer_rate": total / n,
        "anytime_error": total / n / len(stages),
        "final_test_acc": test_acc[-1],
        "gap_train_test": gap_test,
        "mean_gap_train_test": _mean([g for g in gap_test if g is not None]),
        "final_gap_train_test": gap_test[-1],
        "gap_train_val": gap_val,
        "mean_gap_train_val": _mean([g for g in gap_val if g is not None]),
        "final_gap_train_val": gap_val[-1],
        "gap_paper": paper,
        "mean_gap_paper": _mean([g for g in paper if g is not None]),
        "final_gap_paper": paper[-1],
        "final_density": None if density is None else float(density),
        **totals,
    }
