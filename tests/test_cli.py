"""The command line end to end on a tiny preset: run, skip, show, report, sweep, list."""

from __future__ import annotations

import json

import pytest

from underbudget.cli import main


def run_dirs(root):
    return sorted(p for p in root.iterdir() if p.is_dir())


def test_run_skip_show_report(tmp_path, capsys):
    assert main(["run", "tiny", "--out", str(tmp_path), "train.epochs=1"]) == 0
    (path,) = run_dirs(tmp_path)
    assert path.name.startswith("tiny-")
    for name in ("config.yaml", "env.json", "metrics.jsonl", "summary.json",
                 "report/report.md", "artifacts/model.safetensors",
                 "artifacts/data_indices.safetensors"):
        assert (path / name).exists(), name
    summary = json.loads((path / "summary.json").read_text())
    assert summary["status"] == "ok" and 0 <= summary["test_acc"] <= 1
    env = json.loads((path / "env.json").read_text())
    assert env["versions"]["torch"] and "commit" in env["git"]
    assert not (path / "checkpoint.safetensors").exists()  # dropped once finished
    capsys.readouterr()
    assert main(["run", "tiny", "--out", str(tmp_path), "train.epochs=1"]) == 0
    assert "already finished" in capsys.readouterr().err
    assert main(["show", str(path)]) == 0
    assert "test_acc" in capsys.readouterr().out
    assert main(["report", str(path)]) == 0
    assert "| setting |" in capsys.readouterr().out


def test_sweep_aggregates_over_seeds(tmp_path, capsys):
    assert main(["sweep", "tiny", "--out", str(tmp_path), "--quiet", "train.epochs=1",
                 "seed=0,1", "optim.lr=0.05,0.1"]) == 0
    (parent,) = run_dirs(tmp_path)
    children = [p for p in run_dirs(parent) if p.name != "report"]
    assert len(children) == 4
    table = (parent / "report" / "report.md").read_text()
    assert table.count("| lr=") == 2 and "| 2 |" in table  # two settings, two seeds each
    csv = (parent / "report" / "summary.csv").read_text().splitlines()
    assert csv[0].startswith("setting,seeds,") and len(csv) == 3


@pytest.mark.parametrize("what, expected", [
    ("presets", "app-demo"), ("models", "resnet20"), ("datasets", "fashion-mnist"),
    ("methods", "anytime"),
])
def test_list(capsys, what, expected):
    assert main(["list", what]) == 0
    assert expected in capsys.readouterr().out


def test_errors_are_one_line(tmp_path, capsys):
    assert main(["run", "tiny", "--out", str(tmp_path), "optim.lrr=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown config key 'optim.lrr' (did you mean 'lr'?)")
    assert "Traceback" not in err
    assert main(["run", "tiny", "--out", str(tmp_path), "data.name=cifar10",
                 "data.root=" + str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err
    assert main(["show", str(tmp_path)]) == 2


def test_dry_run_prints_resolved_config(capsys):
    assert main(["run", "app-demo", "--dry-run", "method.megabatches=4"]) == 0
    out = capsys.readouterr().out
    assert "megabatches: 4" in out and "strategy:" in out


def test_sparse_run_report_has_mask_evolution(tmp_path):
    assert main(["run", "tiny", "--out", str(tmp_path), "--quiet", "sparsity.method=rigl",
                 "sparsity.density=0.3", "sparsity.interval=5", "train.epochs=2"]) == 0
    (path,) = run_dirs(tmp_path)
    for name in ("density_vs_step", "ever_active_vs_step", "iou_initial_vs_step"):
        assert (path / "report" / f"{name}.png").stat().st_size > 1000
    assert "ever_active" in (path / "report" / "report.md").read_text()


def test_divergence_stops_the_run_with_a_clear_status(tmp_path, capsys):
    assert main(["run", "tiny", "--out", str(tmp_path), "--quiet", "optim.lr=1e8",
                 "optim.momentum=0.99", "train.max_loss=50"]) == 1
    (path,) = run_dirs(tmp_path)
    summary = json.loads((path / "summary.json").read_text())
    assert summary["status"] == "diverged" and "lower optim.lr" in summary["message"]
    assert "diverged" in capsys.readouterr().err
    assert "did not finish normally" in (path / "report" / "report.md").read_text()


def test_compiled_training_matches_its_record(tmp_path):
    """train.compile=true trains through torch.compile and evaluates the compiled model."""
    assert main(["run", "tiny", "--out", str(tmp_path), "--quiet", "train.compile=true",
                 "train.epochs=1", "sparsity.method=prune_at_init", "sparsity.density=0.5"]) == 0
    (path,) = run_dirs(tmp_path)
    summary = json.loads((path / "summary.json").read_text())
    assert summary["status"] == "ok" and abs(summary["density"] - 0.5) < 1e-3
