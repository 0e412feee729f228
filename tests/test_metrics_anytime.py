"""Anytime metrics (CER) from hand-made sequences of per-stage error counts."""

from __future__ import annotations

import pytest

from underbudget.errors import UnderbudgetError
from underbudget.metrics import (
    MetricInputError,
    anytime_error,
    anytime_summary,
    cer_count,
    cer_rate,
)


def test_cer_hand_sequence():
    errors = [400, 250, 150]  # test set of 1000
    assert cer_count(errors) == 800
    assert cer_rate(errors, 1000) == pytest.approx(0.8)
    assert anytime_error(errors, 1000) == pytest.approx(0.8 / 3)


def test_anytime_error_is_comparable_across_stream_lengths():
    short, long = [120] * 3, [120] * 8  # a constant 12 % error rate
    assert anytime_error(short, 1000) == pytest.approx(0.12)
    assert anytime_error(long, 1000) == pytest.approx(0.12)
    assert cer_rate(long, 1000) == pytest.approx(cer_rate(short, 1000) * 8 / 3)  # grows with T


def test_summary_hand_example():
    stages = [
        {
            "test_errors": 500,
            "test_acc": 0.5,
            "train_acc": 0.7,
            "val_acc": 0.55,
            "density": 0.8,
            "train_flops_cumulative": 100.0,
        },
        {
            "test_errors": 300,
            "test_acc": 0.7,
            "train_acc": 0.95,
            "val_acc": 0.75,
            "density": 0.64,
            "train_flops_cumulative": 180.0,
        },
        {
            "test_errors": 200,
            "train_acc": 1.0,
            "val_acc": 0.85,
            "density": 0.512,
            "train_flops_cumulative": 244.0,
        },
    ]
    s = anytime_summary(stages, test_size=1000)
    assert s["num_stages"] == 3 and s["test_errors"] == [500, 300, 200]
    assert s["cer_count"] == 1000
    assert s["cer_rate"] == pytest.approx(1.0)
    assert s["anytime_error"] == pytest.approx(1 / 3)
    assert s["final_test_acc"] == pytest.approx(0.8)  # derived from e_T when test_acc is absent
    assert s["gap_train_test"] == pytest.approx([0.2, 0.25, 0.2])
    assert s["mean_gap_train_test"] == pytest.approx(0.65 / 3)
    assert s["final_gap_train_test"] == pytest.approx(0.2)
    assert s["gap_train_val"] == pytest.approx([0.15, 0.2, 0.15])
    assert s["mean_gap_train_val"] == pytest.approx(0.5 / 3)
    assert s["final_gap_train_val"] == pytest.approx(0.15)
    assert s["final_density"] == pytest.approx(0.512)
    assert s["total_train_flops"] == pytest.approx(244.0)


def test_summary_from_accuracies_and_missing_optionals():
    s = anytime_summary([{"test_acc": 0.9}, {"test_acc": 0.95, "train_acc": 1.0}], test_size=200)
    assert s["test_errors"] == [20, 10]
    assert s["cer_count"] == 30
    assert s["gap_train_test"][0] is None
    assert s["mean_gap_train_test"] == pytest.approx(0.05)
    assert s["mean_gap_train_val"] is None and s["final_gap_train_val"] is None
    assert s["final_density"] is None and s["total_train_flops"] is None


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda: cer_count([]), "non-empty list"),
        (lambda: cer_count([3, -1]), "errors[1] must be a non-negative integer"),
        (lambda: cer_count([2.5]), "non-negative integer"),
        (lambda: cer_rate([3], 0), "test_size must be a positive integer"),
        (lambda: anytime_error([30, 1001], 1000), "exceeds test_size"),
        (lambda: anytime_summary([], 100), "non-empty list of per-stage dicts"),
        (lambda: anytime_summary([{"test_errors": -2}], 100), "non-negative integer"),
        (lambda: anytime_summary([{"train_acc": 0.9}], 100), "neither test_errors nor test_acc"),
        (lambda: anytime_summary([{"test_acc": 93.0}], 100), "divided by 100"),
        (
            lambda: anytime_summary([{"test_errors": 10, "test_acc": 0.5}], 100),
            "test_errors = 10 but test_acc = 0.5",
        ),
        (
            lambda: anytime_summary(
                [
                    {"test_errors": 1, "train_flops_cumulative": 10},
                    {"test_errors": 1, "train_flops_cumulative": 4},
                ],
                100,
            ),
            "running total",
        ),
    ],
)
def test_clear_errors(call, fragment):
    with pytest.raises(MetricInputError) as info:
        call()
    assert fragment in str(info.value)
    assert isinstance(info.value, UnderbudgetError)
