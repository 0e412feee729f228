"""Constraints compose: a source of any method, then transfer stages, compiled into a graph.

The graphs of the three combination presets; a tiny transfer after a train source with a
data budget (its numbers equal those of the compress_transfer method's dense transfer, and
its FLOPs an independent count); a second experiment reusing the first one's source; a
fine-tune from a lottery level keeping its masks; transfers from anytime, D2-Sparse and a
compress_transfer variant; config errors naming the key.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from pins import CASES
from test_regression_pins import PINS
from underbudget.config import load_config
from underbudget.errors import ConfigError
from underbudget.experiment.compile import compile_experiment
from underbudget.experiment.launch import run_experiment
from underbudget.methods.d2sparse import D2GridConfig
from underbudget.sparsity import MaskSet
from underbudget.stages import deployed, run_transfer

SYNTH = {"name": "synthetic", "image_size": 8, "channels": 1, "batch_size": 32,
         "options": {"num_classes": 4, "n_train": 320, "n_test": 128}}
TARGET = {"name": "synthetic", "image_size": 8, "channels": 1, "batch_size": 16,
          "options": {"num_classes": 3, "n_train": 90, "n_test": 60}}


def tiny(**extra) -> dict:
    cfg = {"name": "tiny-compose", "seed": 0, "data": {**SYNTH, "kshot": 20},
           "model": {"name": "convnet", "kwargs": {"widths": [8, 16]}},
           "optim": {"name": "sgd", "lr": 0.1},
           "train": {"epochs": 2, "device": "cpu", "progress": False},
           "method": {"name": "train"},
           "transfer": {"target": TARGET, "methods": ["lp"], "budgets": ["3shot"],
                        "seeds": [0], "options": {"lp": {"epochs": 3}}}}
    for key, value in extra.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return cfg


def summary(root: Path, path: str) -> dict:
    return json.loads((root / path / "summary.json").read_text())


def by_kind(graph) -> dict[str, list]:
    out: dict[str, list] = {}
    for task in graph.order():
        out.setdefault(task.kind, []).append(task)
    return out


# --------------------------------------------------------------------------- graphs


def test_rigl_kshot_vp_graph():
    cfg = load_config("rigl-kshot-vp")
    assert cfg.data.kshot == 10 and cfg.sparsity.method == "rigl"
    graph = compile_experiment(cfg)
    kinds = by_kind(graph)
    assert sorted(kinds) == ["report", "run", "transfer"]
    (source,) = kinds["run"]
    assert source.path.startswith("stages/source-") and source.deps == []
    assert source.config["transfer"]["target"] == {}  # the source does not transfer
    assert [t.config["method"] for t in kinds["transfer"]] == ["vp-ilm"] * 3
    assert [t.config["seed"] for t in kinds["transfer"]] == [0, 1, 2]
    assert all(t.deps == [source.id] and t.config["upstream"] == source.path
               and t.config["budget"] == "10shot" for t in kinds["transfer"])
    (report,) = kinds["report"]
    assert report.path == graph.path and set(report.deps) == set(graph.tasks) - {report.id}
    text = graph.describe()
    assert f"[transfer] {kinds['transfer'][0].id}" in text and "[report]" in text


def test_gmp_ptq_lp_graph():
    graph = compile_experiment(load_config("gmp-ptq-lp"))
    kinds = by_kind(graph)
    (source,), (quant,) = kinds["run"], kinds["quantize"]
    assert source.config["precision"]["mode"] == "none"  # PTQ is its own stage
    assert source.config["sparsity"]["method"] == "gradual"
    assert quant.path == f"{source.path}/ptq-w8" and quant.deps == [source.id]
    assert quant.config["precision"]["weight_bits"] == 8
    transfers = kinds["transfer"]
    assert len(transfers) == 2 * 3 * 3  # float and 8-bit models x 3 budgets x 3 seeds
    assert {t.config["budget"] for t in transfers} == {"1shot", "10shot", "100shot"}
    from_quant = [t for t in transfers if t.config["upstream"] == quant.path]
    assert len(from_quant) == 9 and all(t.deps == [quant.id] for t in from_quant)
    assert all(t.path.startswith(f"{quant.path}/transfer/lp-") for t in from_quant)


def test_imp_budget_transfer_graph():
    cfg = load_config("imp-budget-transfer")
    assert cfg.data.fraction == 0.125 and cfg.method.name == "lottery"
    kinds = by_kind(compile_experiment(cfg))
    (source,) = kinds["run"]
    levels = [f"{source.path}/level-{k:02d}" for k in range(cfg.method.levels + 1)]
    transfers = kinds["transfer"]
    assert len(transfers) == len(levels) * 2 * 2  # levels x (lp, vp-ilm) x 2 seeds
    assert sorted({t.config["upstream"] for t in transfers}) == levels
    assert {t.config["method"] for t in transfers} == {"lp", "vp-ilm"}
    assert all(t.deps == [source.id] for t in transfers)  # a level is ready with its source
    assert len(kinds["report"][0].config["upstreams"]) == len(levels)


def test_a_sweep_shares_one_source_between_transfer_settings():
    cfg = load_config(tiny(sweep={"transfer.methods": [["lp"], ["lp", "vp-ilm"]]}))
    kinds = by_kind(compile_experiment(cfg))
    assert len(kinds["run"]) == 1  # one source, one lp transfer, shared by both children
    assert len(kinds["transfer"]) == 2 and len(kinds["report"]) == 3


# --------------------------------------------------------------------------- runs


def test_transfer_after_a_budgeted_train_source(tmp_path):
    path = run_experiment(load_config(tiny()), tmp_path)
    graph = compile_experiment(load_config(tiny()))
    kinds = by_kind(graph)
    source = summary(tmp_path, kinds["run"][0].path)
    assert source["train_examples"] == 4 * 20  # kshot 20 of 4 classes
    t = summary(tmp_path, kinds["transfer"][0].path)
    assert t["stage"] == "transfer" and t["method"] == "lp" and t["budget"] == "3shot"
    assert t["train_examples"] == 3 * 3 and t["backbone_unchanged"] is True
    assert 0.0 <= t["acc"] <= 1.0 and 0.0 <= t["ece"] <= 1.0
    assert t["examples_seen"] == 3 * t["train_examples"]  # 3 epochs
    # independent FLOP count: a frozen backbone pass per training and validation image
    # (cached features), then 3x the head (2 FLOPs per multiply-add, plus its bias) per example
    up = deployed(tmp_path / kinds["run"][0].path)
    head_in, classes = up.state["fc.weight"].shape[1], 3
    head = 2 * head_in * classes + classes
    backbone = source["flops_nonzero"] - (2 * head_in * 4 + 4)
    want = backbone * (t["train_examples"] + t["val_examples"]) + 3 * head * t["examples_seen"]
    assert t["train_flops"] == pytest.approx(want)
    report = (path / "report" / "report.md").read_text()
    assert "| source | train |" in report and "| source | 20shot |" in report
    assert f"| {source['test_acc']:.4f} | 1.0000 | 32 |" in report
    assert "| lp | 3shot | 1 |" in report


def test_the_transfer_stage_is_the_compress_transfer_transfer(tmp_path):
    """Same config, same seeds: the stage reproduces the transfer line's pinned numbers."""
    case = json.loads(json.dumps(CASES["transfer"]))
    m = case.pop("method")
    case["method"] = {"name": "train"}
    case["transfer"] = {"target": m["target"], "methods": ["lp", "vp-ilm"],
                        "budgets": ["3shot"], "seeds": [0],
                        "options": {"lp": m["lp"], "vp": m["vp"]}}
    cfg = load_config(case)
    run_experiment(cfg, tmp_path)
    pins = PINS["transfer"]
    for task in by_kind(compile_experiment(cfg))["transfer"]:
        got = summary(tmp_path, task.path)
        key = f"pin-transfer/transfer/dense/{got['method']}-3shot-seed0"
        assert got["acc"] == pins[f"{key}:acc"]
        assert got["ece"] == pytest.approx(pins[f"{key}:ece"], rel=1e-5)


def test_a_second_experiment_reuses_the_source(tmp_path):
    first = load_config(tiny())
    second = load_config(tiny(name="other", transfer={"methods": ["lp", "vp-ilm"],
                                                      "budgets": ["3shot", 0.5],
                                                      "options": {"vp": {"epochs": 1,
                                                                         "r": 6}}}))
    run_experiment(first, tmp_path)
    src = by_kind(compile_experiment(first))["run"][0].path
    lp = by_kind(compile_experiment(first))["transfer"][0].path
    assert by_kind(compile_experiment(second))["run"][0].path == src
    stamps = {p: (tmp_path / p / "summary.json").stat().st_mtime_ns for p in (src, lp)}
    events = (tmp_path / src / "metrics.jsonl").read_text()
    run_experiment(second, tmp_path)
    assert {p: (tmp_path / p / "summary.json").stat().st_mtime_ns for p in (src, lp)} == stamps
    assert (tmp_path / src / "metrics.jsonl").read_text() == events  # not trained again
    vp = [t for t in by_kind(compile_experiment(second))["transfer"]
          if t.config["method"] == "vp-ilm"]
    assert summary(tmp_path, vp[0].path)["acc"] >= 0.0
    half = [summary(tmp_path, t.path) for t in by_kind(compile_experiment(second))["transfer"]
            if t.config["budget"] == "0.5"]
    assert [s["budget"] for s in half] == ["frac0.5"] * 2
    assert all(s["train_examples"] == 3 * 15 for s in half)  # half of 30 per class


def test_fine_tune_from_a_lottery_level_keeps_its_masks(tmp_path):
    cfg = load_config(tiny(data={"kshot": None}, method={"name": "lottery", "levels": 1,
                                                         "rate": 0.5},
                           transfer={"methods": ["ft"], "options": {"ft": {"epochs": 2}}}))
    run_experiment(cfg, tmp_path)
    kinds = by_kind(compile_experiment(cfg))
    assert [t.config["label"] for t in kinds["transfer"]] == ["level-00", "level-01"]
    level = kinds["transfer"][1]
    got = summary(tmp_path, level.path)
    up = deployed(tmp_path / level.config["upstream"])
    assert up.summary["level"] == 1 and got["upstream_density"] == pytest.approx(up.density)
    assert got["family"] == "pruned" and got["pruned_nonzero"] == 0
    assert got["backbone_mask_density"] < 0.6
    dense = summary(tmp_path, kinds["transfer"][0].path)
    assert dense["family"] == "dense" and "pruned_nonzero" not in dense
    masks = MaskSet.load(up.masks_path)
    assert masks.density() == pytest.approx(0.5, abs=0.01)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("change, words", [
    ({"transfer": {"methods": ["lq"]}}, "transfer method (transfer.methods) 'lq'"),
    ({"transfer": {"budgets": ["10shots", "0"]}}, "transfer.budgets"),
    ({"transfer": {"options": {"lpp": {}}}}, "did you mean 'lp'"),
    ({"transfer": {"options": {"lp": {"epochs": 0}}}}, "transfer.options.lp.epochs"),
    ({"transfer": {"target": {"name": "synthetic", "kshot": 5}}}, "transfer.budgets"),
])
def test_config_errors_name_the_transfer_key(change, words):
    with pytest.raises(ConfigError, match=re.escape(words)):
        compile_experiment(load_config(tiny(**change)))


def test_a_source_of_several_models_is_refused():
    cfg = dataclasses.replace(load_config(tiny()), method=D2GridConfig())
    with pytest.raises(ConfigError, match="use method d2sparse"):
        compile_experiment(cfg)


def test_compress_transfer_keeps_its_own_transfer():
    case = json.loads(json.dumps(CASES["transfer"]))
    assert len(compile_experiment(load_config(case)).tasks) == 1
    case["precision"] = {"mode": "ptq"}
    with pytest.raises(ConfigError, match="compress_transfer"):
        compile_experiment(load_config(case))


def _small(case: str, **method) -> dict:
    cfg = json.loads(json.dumps(CASES[case]))
    cfg.pop("sweep", None)
    cfg["method"].update(method)
    return cfg


@pytest.mark.parametrize("cfg", [
    _small("anytime", save_masks=True),
    {**_small("d2sparse"), "method": {"name": "d2sparse", "density": 0.2, "fast_interval": 2,
                                      "slow_interval": 6}},
], ids=["anytime", "d2sparse"])
def test_transfer_from_the_deployed_model_of_other_methods(tmp_path, cfg):
    cfg["transfer"] = {"target": TARGET, "methods": ["ft"], "budgets": ["3shot"],
                       "options": {"ft": {"epochs": 1}}}
    run_experiment(load_config(cfg), tmp_path)
    kinds = by_kind(compile_experiment(load_config(cfg)))
    source = tmp_path / kinds["run"][0].path
    up = deployed(source)
    assert up.masks is not None and up.density < 0.5  # the sparse model that was deployed
    got = summary(tmp_path, kinds["transfer"][0].path)
    assert got["upstream_density"] == pytest.approx(up.density) and got["pruned_nonzero"] == 0


def test_transfer_stage_from_a_compress_transfer_variant(tmp_path):
    """A quantized variant of the transfer line is an upstream like any other."""
    cfg = _small("transfer", sparsities=[], quant=["ptq-w8a8"], methods=["lp"],
                 budgets=["3shot"])
    parent = run_experiment(load_config(cfg), tmp_path)
    variant = (parent / "variants" / "ptq-w8a8").relative_to(tmp_path).as_posix()
    got = run_transfer({"path": "t/ft", "upstream": variant, "label": "ptq-w8a8",
                        "target": TARGET, "options": {"ft": {"epochs": 1}}, "method": "ft",
                        "budget": "3shot", "seed": 0}, tmp_path)
    assert got["family"] == "ptq" and got["upstream_bits"] == 8
    assert got["quantized_inputs"] > 0  # the variant's activation quantizers are kept
