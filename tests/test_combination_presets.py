"""The five combination presets, each shrunk to a few seconds on digits and run end to end.

Every preset keeps its constraints (method, sparsity, stream, precision, transfer methods)
and loses only its size: digits instead of Fashion-MNIST, one or two epochs, a small model,
few shots and seeds. Each test compiles the config (the graph's shape), runs it through
``underbudget.experiment`` and checks that every constraint shows in the results: density at
its target, weight bits, the stream's stages, one transfer row per model x method x budget,
ECE and the cost axes; the composed presets' reports and ``run``'s printed table too.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from underbudget.cli import main
from underbudget.config import load_config
from underbudget.experiment.compile import compile_experiment
from underbudget.experiment.launch import run_experiment
from underbudget.stages.report import measured_ece

DIGITS = ["data.name=digits", "data.limit=null", "data.test_limit=200"]
STREAM = [*DIGITS, "data.batch_size=64", "stream.megabatches=2", "train.epochs=1",
          "sparsity.density=0.8", "sparsity.progressive.tau=1"]
SMALL_CONVNET = ["model.kwargs.widths=[8,16]"]
COSTS = ("train_flops", "inference_flops", "deployed_bytes", "examples_seen", "wall_time")


def kinds(graph) -> dict[str, int]:
    out: dict[str, int] = {}
    for task in graph.order():
        out[task.kind] = out.get(task.kind, 0) + 1
    return out


def compose_json(path: Path) -> dict:
    return json.loads((path / "report" / "compose.json").read_text())


def child(path: Path, name: str) -> dict:
    return json.loads((path / name / "summary.json").read_text())


def assert_costs(costs: dict) -> None:
    assert set(costs) == set(COSTS)
    assert all(costs[a] is not None and costs[a] > 0 for a in COSTS if a != "wall_time")


def test_app_qat4_float_against_4bit_qat_on_one_stream(tmp_path):
    cfg = load_config("app-qat4", STREAM)
    assert kinds(compile_experiment(cfg)) == {"run": 2, "report": 1}
    path = run_experiment(cfg, tmp_path, quiet=True)
    flt, qat = child(path, "mode-none"), child(path, "mode-qat")
    for s in (flt, qat):
        assert s["num_stages"] == 2 and len(s["test_acc_per_stage"]) == 2
        assert s["final_density_measured"] == pytest.approx(0.8, abs=1e-3)  # 0.8 ** tau
        assert_costs(s["costs"])
    assert (flt["weight_bits"], qat["weight_bits"], qat["act_bits"]) == (32, 4, 4)
    assert qat["max_levels_per_channel"] <= 2 ** 4 - 1
    assert qat["costs"]["deployed_bytes"] < flt["costs"]["deployed_bytes"] / 4
    assert flt["train_samples"] == qat["train_samples"]  # the same stream
    report = (path / "report" / "report.md").read_text()
    assert "weight_bits" in report and "bytes_deployed" in report and "stage 2" in report


def test_d2sparse_stream_app_and_d2_on_the_same_stream(tmp_path):
    cfg = load_config("d2sparse-stream", [*STREAM, "sparsity.interval=5"])
    assert kinds(compile_experiment(cfg)) == {"run": 2, "report": 1}
    path = run_experiment(cfg, tmp_path, quiet=True)
    app, d2 = child(path, "method-progressive"), child(path, "method-dual_dynamic")
    for s in (app, d2):
        assert s["num_stages"] == 2 and s["cer_rate"] > 0
        assert s["final_density_measured"] == pytest.approx(0.8, abs=1e-3)
        assert_costs(s["costs"])
    assert app["strategy"] == "app" and d2["strategy"] == "d2sparse"
    report = (path / "report" / "report.md").read_text()
    assert "cer_rate" in report and "total_train_flops" in report


def test_rigl_kshot_vp_shows_the_budget_and_density_beside_vp(tmp_path, capsys):
    overrides = [*DIGITS, *SMALL_CONVNET, "data.image_size=16", "data.kshot=5",
                 "data.batch_size=25", "train.epochs=2", "sparsity.interval=1",
                 "transfer.budgets=[3shot]", "transfer.seeds=[0,1]",
                 "transfer.options.vp={epochs: 2, min_steps: 4, r: 8}"]
    cfg = load_config("rigl-kshot-vp", overrides)
    assert kinds(compile_experiment(cfg)) == {"run": 1, "transfer": 2, "report": 1}
    assert main(["run", "rigl-kshot-vp", "--out", str(tmp_path), "--quiet", *overrides]) == 0
    printed = capsys.readouterr().out
    path = next(p for p in tmp_path.iterdir() if p.name.startswith("rigl-kshot-vp-"))
    data = compose_json(path)
    (model,) = data["models"]
    assert model["density"] == pytest.approx(0.1, abs=0.01)
    assert 0.0 <= model["source test ECE"] <= 1.0  # train records none: measured by the report
    assert model["examples seen (cumulative)"] == 2 * 50  # 5 shots x 10 classes, 2 epochs
    (row,) = data["transfers"]
    assert (row["method"], row["budget"], row["seeds"]) == ("vp-ilm", "3shot", 2)
    assert row["source budget"] == "5shot" and row["density"] == model["density"]
    assert row["ECE"][0] is not None and row["deployed bytes"] > model["deployed bytes"]
    assert "vp-ilm" in printed and "deployed bytes" in printed
    assert f"report:  {path / 'report' / 'report.md'}" in printed
    out = tmp_path / "pareto"  # the source's ECE: the one its experiment's report measured
    assert main(["report", str(tmp_path / "stages"), "--out", str(out), "--pareto",
                 "inference_flops", "--metric", "ece"]) == 0
    table = (out / "pareto.md").read_text()
    assert "3 run(s) placed" in table and "Not placed" not in table
    assert f"| {model['source test ECE']:.4f} |" in table


def test_gmp_ptq_lp_float_and_8bit_then_pareto_places_the_transfers(tmp_path, capsys):
    overrides = [*DIGITS, *SMALL_CONVNET, "train.epochs=1", "transfer.budgets=[1shot,5shot]",
                 "transfer.seeds=[0]", "transfer.options.lp={epochs: 2, min_steps: 4}"]
    cfg = load_config("gmp-ptq-lp", overrides)
    assert kinds(compile_experiment(cfg)) == {"run": 1, "quantize": 1, "transfer": 4,
                                              "report": 1}
    path = run_experiment(cfg, tmp_path, quiet=True)
    data = compose_json(path)
    flt, q8 = data["models"]
    assert (flt["model"], flt["bits"], q8["model"], q8["bits"]) == ("source", 32, "ptq-w8", 8)
    assert flt["density"] == pytest.approx(0.1, abs=0.01) and q8["density"] == flt["density"]
    assert q8["deployed bytes"] < flt["deployed bytes"]
    # the float source's ECE as its quantize stage measured it, and measured again by the report
    assert measured_ece(tmp_path, data["stages"][0], {}) == pytest.approx(flt["source test ECE"])
    rows = {(r["model"], r["budget"]): r for r in data["transfers"]}
    assert set(rows) == {(m, b) for m in ("source", "ptq-w8") for b in ("1shot", "5shot")}
    source = json.loads((tmp_path / data["stages"][0] / "summary.json").read_text())
    for stage in data["stages"][2:]:  # the transfers: upstream bytes by the same rule
        s = json.loads((tmp_path / stage / "summary.json").read_text())
        assert s["costs"]["deployed_bytes"] == s["bytes_deployed"]
        if s["label"] == "source":
            assert s["upstream_bytes_deployed"] == source["costs"]["deployed_bytes"]
    out = tmp_path / "pareto"
    assert main(["report", str(tmp_path / "stages"), "--out", str(out), "--pareto",
                 "deployed_bytes", "--metric", "ece"]) == 0
    table = (out / "pareto.md").read_text()
    assert "6 run(s) placed" in table and "Not placed" not in table
    assert table.count("/transfer/lp-") == 4 and table.count("| lp transfer |") == 4
    capsys.readouterr()
    assert main(["report", str(path), "--pareto", "deployed_bytes"]) == 0  # its stages
    assert (path / "report" / "stages" / "pareto.md").is_file()
    assert "## Transfer" in (path / "report" / "report.md").read_text()  # kept
    capsys.readouterr()
    assert main(["show", str(path)]) == 0  # the experiment's directory: config, graph, table
    shown = capsys.readouterr().out
    assert "method: train" in shown and "composed experiment of 7 task(s)" in shown
    assert "ptq-w8" in shown and "lp" in shown
    assert json.loads((path / "graph.json").read_text())["path"] == path.name


def test_imp_budget_transfer_every_level_by_lp_and_vp(tmp_path):
    overrides = [*DIGITS, *SMALL_CONVNET, "data.image_size=16", "data.fraction=0.5",
                 "train.epochs=1", "sparsity.density=0.25", "sparsity.iterative.rewind=step:2",
                 "transfer.budgets=[3shot]", "transfer.seeds=[0]",
                 "transfer.options.lp={epochs: 2, min_steps: 4}",
                 "transfer.options.vp={epochs: 1, min_steps: 4, r: 8}"]
    cfg = load_config("imp-budget-transfer", overrides)
    assert kinds(compile_experiment(cfg)) == {"run": 1, "transfer": 6, "report": 1}
    path = run_experiment(cfg, tmp_path, quiet=True)
    data = compose_json(path)
    levels = data["models"]
    assert [m["model"] for m in levels] == ["level-00", "level-01", "level-02"]
    assert [m["density"] for m in levels] == pytest.approx([1.0, 0.5, 0.25], abs=0.01)
    flops = [m["train FLOPs (cumulative)"] for m in levels]
    assert flops == sorted(flops) and flops[0] > 0  # a level pays for the ones before it
    assert all(m["deployed bytes"] is not None and m["source test ECE"] is not None
               for m in levels)
    rows = {(r["model"], r["method"]) for r in data["transfers"]}
    assert rows == {(m["model"], t) for m in levels for t in ("lp", "vp-ilm")}
    assert all(r["source budget"] == "fraction 0.5" and r["ECE"][0] is not None
               for r in data["transfers"])
    # dense level 0, 10 digits in and out: LP swaps a float 16x10 head for another one
    (lp,) = [json.loads((tmp_path / p / "summary.json").read_text()) for p in data["stages"]
             if "level-00/transfer/lp-" in p]
    level0 = json.loads((tmp_path / data["stages"][0] / "summary.json").read_text())
    assert lp["upstream_bytes_deployed"] == 4 * level0["params"]  # dense float32
    assert lp["bytes_deployed"] == lp["upstream_bytes_deployed"]


def test_a_sweep_of_a_combination_prints_every_child_and_shares_the_source(tmp_path, capsys):
    overrides = [*DIGITS, "model.kwargs={widths: [8]}", "train.epochs=1",
                 "transfer.budgets=[1shot]", "transfer.seeds=[0]",
                 "transfer.options.lp.epochs=2", "transfer.options.lp.min_steps=4"]
    assert main(["sweep", "gmp-ptq-lp", "precision.weight_bits=8,4", "--out", str(tmp_path),
                 "--quiet", *overrides]) == 0
    printed = capsys.readouterr().out
    assert "weight_bits-4:" in printed and "weight_bits-8:" in printed
    assert "PTQ w4" in printed and "PTQ w8" in printed
    (top,) = [p for p in tmp_path.iterdir() if p.name.startswith("gmp-ptq-lp-")]
    assert len(list((top / "stages").glob("source-*"))) == 1  # one source for both
