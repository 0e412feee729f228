"""The D2-Sparse grid: fair budgets, child configs (epochs vs steps), an end-to-end tiny grid."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import has_fashion
from underbudget.cli import main
from underbudget.config import load_config, run_name, to_yaml
from underbudget.errors import ConfigError, UnderbudgetError
from underbudget.experiment.compile import compile_experiment
from underbudget.methods.common import prepare_data
from underbudget.methods.d2sparse.grid import grid_children, imp_schedule, run_grid
from underbudget.runs import Run

BASE = {
    "name": "grid",
    "data": {
        "name": "synthetic",
        "options": {"num_classes": 4, "n_train": 320, "n_test": 128},
        "batch_size": 32,
        "eval_batch_size": 128,
    },
    "model": {"name": "convnet", "kwargs": {"widths": [8, 16]}},
    "optim": {"name": "sgd", "lr": 0.05},
    "train": {"epochs": 2, "progress": False, "device": "cpu"},
    "sparsity": {"interval": 8},
    "method": {
        "name": "d2sparse-grid",
        "budgets": [1.0, 0.5, 0.25, 0.125, 0.0625],
        "densities": [0.2],
        "seeds": [0, 1],
        "arms": ["d2sparse", "rigl", "dense"],
        "d2sparse": {"fast_interval": 8, "slow_interval": 16},
    },
}



def test_budgets_are_class_balanced_nested_and_shared_by_every_arm():
    cfg = load_config(BASE)
    kids = grid_children(cfg)
    subsets: dict = {}
    for slug, child in kids:
        tag = child.report["d2grid"]
        data = prepare_data(child)
        idx = data.indices["train"]
        key = (tag["seed"], tag["budget"])
        if key in subsets:  # every arm trains on exactly the same examples
            assert torch.equal(subsets[key], idx), slug
        subsets[key] = idx
        counts = torch.bincount(data.train.labels, minlength=4)
        assert counts.tolist() == [math.floor(tag["budget"] * 80 + 0.5)] * 4  # 80 per class
    for seed in (0, 1):
        sizes = sorted(BASE["method"]["budgets"])
        for small, large in zip(sizes, sizes[1:]):  # 1/16 in 1/8 in ... in 1
            assert set(subsets[(seed, small)].tolist()) < set(subsets[(seed, large)].tolist())
    assert not torch.equal(subsets[(0, 0.25)], subsets[(1, 0.25)])


def test_children_hold_epochs_or_steps_equal_and_record_it():
    kids = dict(grid_children(load_config(BASE)))
    assert len(kids) == 2 * 5 * 3  # dense once per (budget, seed), not once per density
    child = kids["d2sparse_b1-8_d0.2_s1"]
    assert child.method.name == "d2sparse" and child.method.density == 0.2
    assert child.method.fast_interval == 8 and child.data.fraction == 0.125
    assert child.train.epochs == 2 and child.seed == 1
    assert child.report["d2grid"] == {
        "arm": "d2sparse",
        "budget": 0.125,
        "density": 0.2,
        "seed": 1,
        "equal": "epochs",
    }
    rigl = kids["rigl_b1-2_d0.2_s0"]
    assert (rigl.method.name, rigl.sparsity.method, rigl.sparsity.density) == ("train", "rigl", 0.2)
    steps = dict(grid_children(load_config(BASE, ["method.equal=steps", "method.max_epochs=20"])))
    assert [steps[f"dense_b{b}_s0"].train.epochs for b in ("1", "1-2", "1-4", "1-8", "1-16")] == [
        2,
        4,
        8,
        16,
        20,
    ]  # epochs x 1/budget (capped): about the same number of steps
    assert steps["dense_b1-4_s0"].report["d2grid"]["equal"] == "steps"


def test_imp_arms_end_exactly_at_the_density():
    assert imp_schedule(0.8**3) == (3, pytest.approx(0.2))
    levels, rate = imp_schedule(0.1)
    assert levels == 11 and (1 - rate) ** levels == pytest.approx(0.1)
    assert imp_schedule(0.1, 2)[1] == pytest.approx(1 - math.sqrt(0.1))
    kids = dict(grid_children(load_config(BASE, ['method.arms=["imp", "omp"]'])))
    imp, omp = kids["imp_b1_d0.2_s0"], kids["omp_b1_d0.2_s0"]
    assert imp.method.name == "lottery" and (
        1 - imp.method.rate
    ) ** imp.method.levels == pytest.approx(0.2)
    assert omp.method.levels == 1 and omp.method.rate == pytest.approx(0.8)


@pytest.mark.parametrize(
    "override, message",
    [
        ('method.arms=["d2sparse", "rigel"]', "did you mean 'rigl'"),
        ("data.fraction=0.5", "leave data.fraction"),
        ("method.d2sparse.fast_intervall=3", "did you mean 'fast_interval'"),
        ("method.d2sparse.consistency=kld", "grid child d2sparse_b1_d0.2_s0: .*did you mean 'kl'"),
        ("method.equal=step", "did you mean 'steps'"),
        ("method.densities=[1.0]", r"in \(0, 1\)"),
    ],
)
def test_grid_errors_name_the_fix(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(BASE, [override])


def test_tiny_grid_end_to_end_writes_the_report(tmp_path, capsys):
    cfg = load_config(
        BASE,
        [
            "method.budgets=[1.0, 0.5]",
            "method.seeds=[0]",
            'method.arms=["d2sparse", "rigl", "imp", "dense"]',
            "method.imp_levels=1",
        ],
    )
    path = tmp_path / "grid.yaml"
    path.write_text(to_yaml(cfg))
    assert main(["run", str(path), "--out", str(tmp_path / "runs")]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["runs"] == 8 and summary["failed"] == 0 and summary["equal"] == "epochs"
    assert set(summary["gain_vs_imp"]) == {"b1|d0.2", "b0.5|d0.2"}
    text = (run / "report/report.md").read_text()
    for needle in (
        "## D2-Sparse vs baselines",
        "### Density 0.2",
        "| D2-Sparse (S) |",
        "| IMP + rewinding |",
        "| RigL |",
        "| dense |",
        "Gain of D2-Sparse (S) over IMP",
        "number of **epochs** is held equal",
        "inference MFLOPs",
    ):
        assert needle in text, needle
    assert (run / "report/d2sparse_acc_vs_budget_d0.2.png").stat().st_size > 0
    assert (run / "report/d2sparse_overlap_d0.2.png").stat().st_size > 0
    rows = (run / "report/d2sparse_results.csv").read_text().splitlines()
    assert len(rows) == 1 + 8
    # a second start skips every finished child and the grid itself
    assert main(["run", str(path), "--out", str(tmp_path / "runs")]) == 0
    assert "already finished" in capsys.readouterr().err


def test_presets_resolve_to_the_intended_grids():
    demo = dict(grid_children(load_config("d2sparse-demo")))
    assert sorted(demo) == sorted(
        f"{a}_b{b}_d0.1_s0" for a in ("d2sparse", "rigl", "imp") for b in ("1-8", "1-16")
    )
    imp = demo["imp_b1-8_d0.1_s0"].method
    assert (1 - imp.rate) ** imp.levels == pytest.approx(0.1)
    assert demo["d2sparse_b1-16_d0.1_s0"].data.name == "fashion-mnist"
    cifar = load_config("d2sparse-cifar100")
    assert cifar.model.kwargs == {"stem": "cifar"} and cifar.data.name == "cifar100"
    assert len(cifar.method.arms) == 12 and len(cifar.method.budgets) == 5


@pytest.mark.slow
@has_fashion
def test_demo_preset_runs_on_fashion_mnist(tmp_path):
    assert main(["run", "d2sparse-demo", "--out", str(tmp_path), "--quiet"]) == 0
    (run,) = tmp_path.iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["runs"] == 6 and summary["failed"] == 0
    assert all(acc > 0.5 for acc in summary["acc"].values())  # far above chance (0.1)
    assert "| D2-Sparse (S) |" in (run / "report/report.md").read_text()


def test_the_grid_compiles_to_one_task_per_child_and_a_summary_after_them(tmp_path):
    cfg = load_config(json.loads(json.dumps(BASE)))
    graph = compile_experiment(cfg)
    top = run_name(cfg)
    kids = [f"{top}/{slug}" for slug, _ in grid_children(cfg)]
    assert sorted(graph.tasks) == sorted(kids + [top])
    assert all(graph.tasks[k].kind == "run" and graph.tasks[k].deps == [] for k in kids)
    assert graph.tasks[top].kind == "run" and sorted(graph.tasks[top].deps) == sorted(kids)
    assert [t.id for t in graph.order()][-1] == top
    with pytest.raises(UnderbudgetError, match="have not finished"):
        run_grid(cfg, Run(tmp_path / top))  # the summary never runs its children itself
