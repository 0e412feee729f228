"""The Pareto front: against a brute-force dominance check, and through ``report --pareto``."""

from __future__ import annotations

import json
import random

import pytest
import torch

from underbudget.cli import main
from underbudget.config import load_config
from underbudget.experiment.launch import run_experiment
from underbudget.report.pareto import FRONT_MARK, pareto_front


def brute_force(costs, values, maximize):
    """O(n^2): a point is on the front when no other point dominates it."""
    def better_or_equal(a, b):
        return a >= b if maximize else a <= b

    out = []
    for i in range(len(costs)):
        dominated = any(
            costs[j] <= costs[i] and better_or_equal(values[j], values[i])
            and (costs[j] < costs[i] or values[j] != values[i])
            for j in range(len(costs)))
        out.append(not dominated)
    return out


@pytest.mark.parametrize("maximize", [True, False])
def test_front_matches_brute_force_with_ties_and_duplicates(maximize):
    rng = random.Random(0)
    for trial in range(300):
        n = rng.randint(0, 25)
        # few distinct values: many ties in cost, in value, and exact duplicates
        costs = [float(rng.randint(1, 6)) for _ in range(n)]
        values = [rng.randint(0, 5) / 5 for _ in range(n)]
        if n and trial % 3 == 0:
            costs.append(costs[0])
            values.append(values[0])
        assert pareto_front(costs, values, maximize) == brute_force(costs, values, maximize)


def test_front_small_cases():
    assert pareto_front([], []) == []
    assert pareto_front([1.0, 1.0], [0.5, 0.5]) == [True, True]  # duplicates: both
    assert pareto_front([1.0, 2.0], [0.5, 0.5]) == [True, False]  # same value, costs more
    assert pareto_front([1.0, 2.0, 3.0], [0.3, 0.6, 0.4]) == [True, True, False]
    assert pareto_front([1.0, 2.0], [0.1, 0.05], maximize=False) == [True, True]
    with pytest.raises(ValueError):
        pareto_front([1.0], [])


@pytest.fixture(autouse=True)
def _restore_determinism():
    yield
    torch.use_deterministic_algorithms(False)


def test_cli_report_pareto_writes_table_and_plot(tmp_path, capsys):
    root = tmp_path / "runs"
    dense = run_experiment(load_config("tiny", ["train.epochs=1"]), root, quiet=True)
    sparse = run_experiment(load_config("tiny", ["train.epochs=1", "sparsity.method=static",
                                                 "sparsity.density=0.2"]), root, quiet=True)
    out = tmp_path / "rep"
    assert main(["report", str(root), "--out", str(out), "--pareto", "train_flops"]) == 0
    text = (out / "pareto.md").read_text()
    png = (out / "pareto.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 1000
    rows = [line for line in text.splitlines() if line.startswith("| runs/")]
    assert len(rows) == 2
    costs = {p.name: json.loads((p / "summary.json").read_text()) for p in (dense, sparse)}
    cheap = sparse.name  # fewer training FLOPs: always on the front
    assert costs[cheap]["costs"]["train_flops"] < costs[dense.name]["costs"]["train_flops"]
    (cheap_row,) = [r for r in rows if cheap in r]
    assert cheap_row.rstrip().endswith(f"{FRONT_MARK} |")
    (dense_row,) = [r for r in rows if dense.name in r]
    on_front = costs[dense.name]["test_acc"] > costs[cheap]["test_acc"]
    assert dense_row.rstrip().endswith(f"{FRONT_MARK} |") == on_front
    assert rows.index(cheap_row) == 0  # sorted by cost


def test_cli_pareto_bad_input_writes_nothing(tmp_path, capsys):
    root = tmp_path / "runs"
    run_experiment(load_config("tiny", ["train.epochs=1"]), root, quiet=True)
    out = tmp_path / "rep"
    assert main(["report", str(root), "--out", str(out), "--pareto", "train_flop"]) == 2
    assert "did you mean 'train_flops'" in capsys.readouterr().err
    assert main(["report", str(root), "--out", str(out), "--pareto", "wall_time",
                 "--metric", "acc"]) == 2
    assert main(["report", str(root), "--out", str(out), "--metric", "ece"]) == 2
    assert not out.exists()
    assert main(["report", str(root), "--out", str(out), "--pareto", "deployed_bytes",
                 "--metric", "ece"]) == 0
    assert "ece vs deployed_bytes" in (out / "pareto.md").read_text()
