"""The command line end to end on a tiny preset: run, skip, show, report, sweep, list."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

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
    # --dry-run also locates the data: synthetic keeps this test independent of the machine
    assert main(["run", "app-demo", "--dry-run", "method.megabatches=4", "data.name=synthetic",
                 "data.limit=500"]) == 0
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


def test_run_and_show_print_the_headline_table(tmp_path, capsys):
    assert main(["run", "tiny", "--out", str(tmp_path), "--quiet", "train.epochs=1",
                 "sparsity.method=prune_at_init", "sparsity.density=0.5"]) == 0
    (path,) = run_dirs(tmp_path)
    summary = json.loads((path / "summary.json").read_text())
    out = capsys.readouterr().out
    header, row = out.splitlines()[:2]
    assert header.split() == ["run", "accuracy", "density", "wall", "time"]
    assert row.split()[:5] == [path.name, f"{100 * summary['test_acc']:.2f}", "%",
                               f"{100 * summary['density']:.2f}", "%"]
    assert f"report:  {path / 'report' / 'report.md'}" in out
    assert main(["show", str(path)]) == 0
    assert header in capsys.readouterr().out


def test_platform_flags_are_aliases_of_their_keys(capsys):
    assert main(["run", "tiny", "--dry-run", "--device", "cpu", "--amp", "--no-progress",
                 "--compile"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["train"]["device"] == "cpu" and cfg["train"]["amp"] is True
    assert cfg["train"]["progress"] is False and cfg["train"]["compile"] is True
    assert main(["sweep", "tiny", "--dry-run", "seed=0,1", "--device", "cpu"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["sweep"] == {"seed": [0, 1]} and cfg["train"]["device"] == "cpu"


def test_device_and_progress_keep_the_run_directory(tmp_path, capsys):
    assert main(["run", "tiny", "--out", str(tmp_path), "--quiet", "train.epochs=1",
                 "train.device=cpu"]) == 0
    capsys.readouterr()
    for argv in (["--device", "auto"], ["--progress"], ["--no-progress", "--device", "cpu"]):
        assert main(["run", "tiny", "--out", str(tmp_path), "train.epochs=1", *argv]) == 0
        assert "already finished" in capsys.readouterr().err
    assert len(run_dirs(tmp_path)) == 1


def test_an_interrupted_run_resumes_on_another_device_string(tmp_path, capsys, monkeypatch):
    from underbudget.train.trainer import Trainer

    args = ["run", "tiny", "--quiet", "train.epochs=3", "sparsity.method=rigl",
            "sparsity.density=0.3", "sparsity.interval=3"]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    original = Trainer._checkpoint

    def stop_after_first_epoch(self, stage_done):
        original(self, stage_done)
        if self.epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_checkpoint", stop_after_first_epoch)
    assert main([*args, "--out", str(tmp_path / "cut"), "--device", "cpu", "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert "stopped by Ctrl-C (SIGINT) at stage 0, epoch 1" in err and "resume" in err
    monkeypatch.setattr(Trainer, "_checkpoint", original)
    assert main([*args, "--out", str(tmp_path / "cut"), "--device", "auto", "--progress"]) == 0
    err = capsys.readouterr().err
    assert "resuming from stage 0, epoch 2 (1 done)" in err
    (whole,), (cut,) = run_dirs(tmp_path / "whole"), run_dirs(tmp_path / "cut")
    assert whole.name == cut.name
    for name in ("model.safetensors", "masks.safetensors"):
        assert (whole / "artifacts" / name).read_bytes() == (cut / "artifacts" / name).read_bytes()


def test_identical_runs_write_identical_weight_files(tmp_path):
    args = ["run", "tiny", "--quiet", "train.epochs=1", "sparsity.method=prune_at_init",
            "sparsity.density=0.5"]
    for root in ("a", "b"):
        assert main([*args, "--out", str(tmp_path / root)]) == 0
    (a,), (b,) = run_dirs(tmp_path / "a"), run_dirs(tmp_path / "b")
    for name in ("model.safetensors", "masks.safetensors", "data_indices.safetensors"):
        assert (a / "artifacts" / name).read_bytes() == (b / "artifacts" / name).read_bytes()


def test_the_next_run_cleans_temp_files_a_killed_writer_left(tmp_path):
    import os
    import time

    assert main(["run", "tiny", "--out", str(tmp_path), "--quiet", "train.epochs=1"]) == 0
    (path,) = run_dirs(tmp_path)
    stale = path / "report" / ".summary.csv.k1ll3d_x.tmp"
    stale.write_text("half a table")
    os.utime(stale, (time.time() - 3600,) * 2)
    assert main(["run", "tiny", "--out", str(tmp_path), "--quiet", "train.epochs=1"]) == 0
    assert not stale.exists()
    stale.write_text("half a table")
    os.utime(stale, (time.time() - 3600,) * 2)
    assert main(["report", str(path)]) == 0
    assert not stale.exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_run_started_on_the_cpu_resumes_on_the_gpu(tmp_path, capsys, monkeypatch):
    from underbudget.train.trainer import Trainer

    args = ["run", "tiny", "--quiet", "train.epochs=3", "--out", str(tmp_path)]
    original = Trainer._checkpoint

    def stop_after_first_epoch(self, stage_done):
        original(self, stage_done)
        if self.epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_checkpoint", stop_after_first_epoch)
    assert main([*args, "--device", "cpu"]) == 130
    monkeypatch.setattr(Trainer, "_checkpoint", original)
    capsys.readouterr()
    assert main([*args, "--device", "cuda"]) == 0
    assert "resuming from stage 0, epoch 2 (1 done)" in capsys.readouterr().err
    (path,) = run_dirs(tmp_path)
    assert json.loads((path / "env.json").read_text())["device"].startswith("cuda")


def test_headline_table_shows_cer_and_ece_only_where_runs_have_them():
    from underbudget.runs.headline import headline_table

    plain = headline_table([("a", {"test_acc": 0.5, "density": 1.0, "wall_time": 2.0})])
    assert plain.splitlines()[0].split() == ["run", "accuracy", "density", "wall", "time"]
    rows = headline_table([
        ("stream", {"final_test_acc": 0.8, "final_density_measured": 0.25, "cer_rate": 1.4,
                    "wall_time": 700.0}),
        ("variant", {"source_test_acc": 0.7, "source_test_ece": 0.05, "time": 1.0,
                     "status": "diverged"}),
    ]).splitlines()
    assert rows[0].split() == ["run", "accuracy", "density", "CER", "ECE", "wall", "time",
                               "status"]
    assert rows[1].split() == ["stream", "80.00", "%", "25.00", "%", "1.400", "-", "11.7",
                               "min", "ok"]
    assert rows[2].split() == ["variant", "70.00", "%", "-", "-", "5.00", "%", "1.0", "s",
                               "diverged"]
