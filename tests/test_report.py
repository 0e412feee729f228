"""Reports pool runs per seed: a seed that finished twice for one setting counts once."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path

import pytest
import yaml

from underbudget.report import collect, group_by_setting, markdown, summarize, to_csv, write_report


def fake_run(path: Path, seed: int, summary: dict, *, lr: float = 0.1, started: str | None = None,
             wall: float = 10.0, method: str = "train", extra: dict | None = None) -> Path:
    """A finished run directory as the run store writes it (config, env, summary)."""
    path.mkdir(parents=True)
    config = {"name": "exp", "seed": seed, "method": {"name": method}, "optim": {"lr": lr},
              "train": {"device": "cpu", "progress": False}, **(extra or {})}
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    if started is not None:
        (path / "env.json").write_text(json.dumps({"time": started}))
    full = {"name": "exp", "method": method, "seed": seed, "wall_time": wall, "status": "ok",
            **summary}
    (path / "summary.json").write_text(json.dumps(full))
    return path


def test_a_repeated_seed_counts_once_and_the_last_finished_run_wins(tmp_path):
    # seed 0 ran twice (the repeat in another folder, an hour later), seed 1 once
    old = fake_run(tmp_path / "a/seed-0", 0, {"test_acc": 0.5}, started="2024-05-01T10:00:00+0000")
    fake_run(tmp_path / "a/seed-1", 1, {"test_acc": 0.9}, started="2024-05-01T10:01:00+0000")
    new = fake_run(tmp_path / "b/seed-0", 0, {"test_acc": 0.7}, started="2024-05-01T11:00:00+0000")
    fake_run(tmp_path / "b/other-lr", 0, {"test_acc": 0.1}, lr=0.2,  # same seed, other setting
             started="2024-05-01T11:05:00+0000")
    os.utime(old / "summary.json", (4e9, 4e9))  # a later mtime does not beat the recorded time
    records = collect([tmp_path / "a", tmp_path / "b"])
    groups = dict(group_by_setting(records))
    assert sorted(groups) == ["lr=0.1", "lr=0.2"]
    (row, other) = summarize(sorted(groups.items()), ["test_acc"])
    assert row["seeds"] == 2
    mean, std = row["test_acc"]
    assert mean == pytest.approx((0.7 + 0.9) / 2)
    assert std == pytest.approx(math.sqrt(((0.7 - 0.8) ** 2 + (0.9 - 0.8) ** 2) / (2 - 1)))
    assert other["seeds"] == 1 and other["test_acc"] == (0.1, 0.0)
    from underbudget.report import pool_seeds

    kept, dups = pool_seeds(records)
    assert len(kept) == 3 and len(dups) == 1
    assert dups[0].seed == 0 and dups[0].kept.path == new
    assert [r.path for r in dups[0].dropped] == [old]


def test_without_a_recorded_start_the_summary_time_decides_and_ties_go_to_the_later_path(tmp_path):
    first = fake_run(tmp_path / "x", 3, {"test_acc": 0.2})
    second = fake_run(tmp_path / "y", 3, {"test_acc": 0.4})
    os.utime(first / "summary.json", (2e9, 2e9))
    os.utime(second / "summary.json", (1e9, 1e9))

    def pooled():
        (row,) = summarize(group_by_setting(collect([tmp_path])), ["test_acc"])
        return row["seeds"], row["test_acc"][0]

    assert pooled() == (1, 0.2)  # x finished last
    os.utime(first / "summary.json", (1e9, 1e9))
    assert pooled() == (1, 0.4)  # a tie: y, the later path


def test_every_cell_says_over_how_many_seeds(tmp_path):
    fake_run(tmp_path / "s0", 0, {"test_acc": 0.6, "val_acc": 0.5})
    fake_run(tmp_path / "s1", 1, {"test_acc": 0.8})  # no validation split in this run
    rows = summarize(group_by_setting(collect([tmp_path])), ["test_acc", "val_acc"])
    table = markdown(rows, ["test_acc", "val_acc"])
    assert "| 2 | 0.7000 ± 0.1414 (n=2) | 0.5000 (n=1) |" in table
    (line,) = csv.DictReader(io.StringIO(to_csv(rows, ["test_acc", "val_acc"])))
    assert line["seeds"] == "2" and line["test_acc_n"] == "2" and line["val_acc_n"] == "1"
    assert float(line["val_acc_mean"]) == 0.5


def test_write_report_lists_the_duplicates_it_did_not_count(tmp_path):
    runs = tmp_path / "runs"
    for i, (folder, seed, acc) in enumerate([("a", 0, 0.5), ("a", 1, 0.9), ("b", 0, 0.7)]):
        fake_run(runs / folder / f"seed-{seed}", seed, {"test_acc": acc},
                 started=f"2024-05-01T1{i}:00:00+0000")
    out = write_report([runs], tmp_path / "report", keys=["test_acc"])
    assert out["runs"] == 3 - 1
    text = (tmp_path / "report/report.md").read_text()
    assert "2 run(s) (1 duplicate(s) of a seed not counted)" in text
    assert "## Duplicate runs (not counted)" in text
    dup_line = next(line for line in text.splitlines() if line.startswith("- seed 0:"))
    assert dup_line.index(str(runs / "b/seed-0")) < dup_line.index(str(runs / "a/seed-0"))
    assert "| 2 | 0.8000 ± 0.1414 (n=2) |" in text
    (line,) = csv.DictReader(io.StringIO((tmp_path / "report/summary.csv").read_text()))
    assert line["seeds"] == "2" and float(line["test_acc_mean"]) == pytest.approx(0.8)


def test_d2sparse_table_pools_per_seed_and_shows_n(tmp_path):
    from underbudget.methods.d2sparse.report import d2sparse_section

    extra = {"method": {"name": "d2sparse", "density": 0.1, "lambda_fast": 0.1,
                        "lambda_slow": 0.3}, "data": {"fraction": 0.5}}
    for folder, seed, acc, hour in (("g1", 0, 0.40, 1), ("g1", 1, 0.60, 1), ("g2", 0, 0.50, 2)):
        fake_run(tmp_path / folder / f"s{seed}", seed, {"test_acc": acc}, method="d2sparse",
                 extra=extra, started=f"2024-05-01T0{hour}:00:00+0000")
    section = d2sparse_section(collect([tmp_path]), tmp_path / "report")
    text = section["markdown"]
    row = next(line for line in text.splitlines() if line.startswith("| D2-Sparse (S) |"))
    assert row == "| D2-Sparse (S) | 55.00 ± 7.07 (n=2) |"  # seeds 0 (second run) and 1
    assert "## Duplicate runs (not counted)" in text and str(tmp_path / "g1/s0") in text
    rows = (tmp_path / "report/d2sparse_results.csv").read_text().splitlines()
    assert len(rows) == 1 + 2
